//! The fuzzers' committed message seeds still decode: a protocol change
//! that leaves them stale (and the fuzzers starting from garbage) fails
//! here until `fuzz/examples/make_seeds.rs` is rerun.

use meshkv::protocol::codec;
use std::path::Path;

#[test]
fn every_committed_message_seed_decodes_with_todays_codec() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/message_decode");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus is committed") {
        let path = entry.expect("entry").path();
        let payload = std::fs::read(&path).expect("read seed");
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let decoded = codec::decode(&frame, codec::DEFAULT_MAX_FRAME);
        assert!(
            matches!(decoded, Ok(Some((_, n))) if n == frame.len()),
            "{} no longer decodes ({decoded:?}): rerun `cargo run --example make_seeds` in fuzz/",
            path.display()
        );
        seeds += 1;
    }
    assert!(seeds >= 20, "only {seeds} seeds in {}", dir.display());
}
