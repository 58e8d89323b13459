//! Message decoding (every message kind, requests and replies included) on
//! arbitrary payloads behind a valid length prefix: never panics, and what
//! decodes round-trips through the encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::protocol::codec;

fuzz_target!(|payload: &[u8]| {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    if let Ok(Some((msg, used))) = codec::decode(&frame, codec::DEFAULT_MAX_FRAME) {
        assert_eq!(used, frame.len());
        let _ = msg.kind();
        let mut again = Vec::new();
        codec::encode(&msg, &mut again);
        let (back, _) = codec::decode(&again, usize::MAX).expect("re-encoded").expect("complete");
        assert_eq!(back, msg);
    }
});
