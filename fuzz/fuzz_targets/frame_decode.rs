//! The frame decoder on arbitrary bytes: never panics, never reads past a
//! frame, agrees with itself when the bytes arrive in two pieces, and every
//! frame it accepts re-encodes to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::protocol::codec;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let max_frame = 1 << 20;
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let whole = codec::decode(rest, max_frame);
        // A prefix decodes to "need more" or to the same frame.
        let cut = (split as usize).min(rest.len());
        match (&whole, codec::decode(&rest[..cut], max_frame)) {
            (_, Ok(None)) => {}
            (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, &b, "a prefix decoded differently"),
            (Err(_), Err(_)) => {}
            (w, p) => panic!("whole {w:?} vs prefix {p:?}"),
        }
        match whole {
            Ok(Some((msg, used))) => {
                assert!(used <= rest.len() && used >= codec::HEADER_LEN);
                let mut again = Vec::new();
                codec::encode(&msg, &mut again);
                let (back, n) = codec::decode(&again, usize::MAX).expect("re-encoded frame").expect("complete");
                assert_eq!((back, n), (msg, again.len()));
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
