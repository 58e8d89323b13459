//! Keys and values at the size limits are ordinary data: a key of exactly
//! the largest length a store accepts, an empty key, an empty value and a
//! value of exactly `max_value_len` are written, overwritten, deleted,
//! replicated and read back after a reopen, and the store stays intact.
//!
//! A user who sizes data up to the configured limit relies on the limit
//! being inclusive everywhere (the change log, catch-up, recovery), and on
//! one byte more being refused rather than stored.

use meshkv::storage::KEY_LEN_CEILING;
use meshkv::{Batch, Db, Options, Record, ScanOptions, VersionVector};
use std::collections::BTreeMap;
use std::path::Path;

const MAX_VALUE: usize = 4096;

fn open(dir: &Path) -> Db {
    let opts = Options { max_key_len: KEY_LEN_CEILING, max_value_len: MAX_VALUE, ..Options::default() };
    Db::open(dir, opts).expect("open")
}

/// A complete catch-up of `to` from `from`.
fn pull(to: &Db, from: &Db) {
    let cs = from.changes_since(&to.version_vector()).expect("changes");
    let vv: VersionVector = cs.version_vector().clone();
    let recs: Vec<(Vec<u8>, Record)> = cs.map(|r| r.expect("record")).collect();
    to.apply(recs, Some(&vv)).expect("apply");
}

fn assert_verified(db: &Db) {
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "verify: {:?}", report.problems);
}

fn contents(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.scan(ScanOptions::default()).map(|e| e.expect("entry")).map(|e| (e.key, e.value)).collect()
}

/// 40 keys of `KEY_LEN_CEILING` bytes with values of `max_value_len` bytes
/// and an empty key with an empty value, in one batch (several full
/// change-log blocks); then an overwrite and a delete of maximal keys. A
/// peer catches up, the writer reopens: both hold exactly these contents,
/// verify clean, and the writer continues above its last seq. An empty
/// batch takes no seq; one byte over either limit is refused.
#[test]
fn boundary_sizes_replicate_and_survive_reopen() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = open(dir_a.path());
    assert!(a.write(Batch::new()).expect("empty batch").is_none());
    let mut batch = Batch::new();
    let mut expected = BTreeMap::new();
    for i in 0..40u8 {
        batch.put(vec![i; KEY_LEN_CEILING], vec![i; MAX_VALUE]);
        expected.insert(vec![i; KEY_LEN_CEILING], vec![i; MAX_VALUE]);
    }
    batch.put(Vec::new(), Vec::new());
    expected.insert(Vec::new(), Vec::new());
    let last = a.write(batch).expect("batch").expect("dot");
    assert_eq!(last.seq, 41, "the empty batch took a seq");
    assert!(a.put(vec![1u8; KEY_LEN_CEILING + 1], "x").is_err(), "a key one byte too long was accepted");
    assert!(a.put("x", vec![1u8; MAX_VALUE + 1]).is_err(), "a value one byte too long was accepted");
    assert_verified(&a);

    a.put(vec![3u8; KEY_LEN_CEILING], "new").expect("overwrite");
    expected.insert(vec![3u8; KEY_LEN_CEILING], b"new".to_vec());
    a.delete(vec![4u8; KEY_LEN_CEILING]).expect("delete");
    expected.remove(&vec![4u8; KEY_LEN_CEILING]);
    assert_verified(&a);

    let b = open(dir_b.path());
    pull(&b, &a);
    assert_verified(&b);
    let id = a.node_id();
    drop(a);
    let a = open(dir_a.path());
    assert_eq!(a.node_id(), id);
    assert_verified(&a);
    for db in [&a, &b] {
        let got = contents(db);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "contents differ from what was written");
    }
    let next = a.put("after", "x").expect("put");
    assert!(next.seq > 43, "seq {} reused after the reopen", next.seq);
}
