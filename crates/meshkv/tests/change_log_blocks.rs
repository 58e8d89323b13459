//! A local batch stores its own dots in blocks of 16 change-log entries
//! (docs/ALGORITHM.md §4): overwrites, deletes and remote writes that
//! supersede dots inside a block shrink it, and the log still holds exactly
//! one dot per current version, readable by dot and in log order.

use meshkv::storage::Position;
use meshkv::{Batch, Db, Options, VersionVector};
use std::collections::BTreeMap;

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

/// Checks the integrity report, that a full log-order catch-up returns
/// exactly `expected`, each key once, and that catch-ups from cut points
/// inside blocks return what lies above the cut, in ascending dot order.
fn assert_consistent(db: &Db, expected: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.log_entries, expected.len() as u64, "one log dot per record");
    let mut seen = BTreeMap::new();
    for item in db.changes_since(&VersionVector::new()).expect("changes_since") {
        let (k, record) = item.expect("item");
        assert!(seen.insert(k, record.value().map(<[u8]>::to_vec)).is_none(), "a key came twice");
    }
    assert_eq!(&seen, expected);
    let own = db.node_id();
    for cut in (0..db.version_vector().get(own)).step_by(23) {
        let mut since = VersionVector::new();
        for (origin, seq) in db.version_vector().iter().filter(|(o, _)| *o != own) {
            since.raise(origin, seq);
        }
        since.raise(own, cut);
        let mut stream = db.changes_since(&since).expect("changes_since");
        let mut dots = Vec::new();
        while let Some(item) = stream.next() {
            item.expect("item");
            if let Some(Position::Log(dot)) = stream.stream_position() {
                dots.push(dot);
            }
        }
        // Origin by origin, each in ascending seq order.
        assert!(dots.windows(2).all(|w| w[0] < w[1]), "cut {cut}: not in ascending order: {dots:?}");
        let own_dots = dots.iter().filter(|d| d.origin == own).count();
        let above = (0..=db.version_vector().get(own))
            .filter(|&s| s > cut && db.entry(own, s).expect("entry").is_some())
            .count();
        assert_eq!(own_dots, above, "cut {cut}: every current own dot above the cut, once");
    }
}

#[test]
fn overwrites_and_deletes_shrink_blocks_until_they_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let mut expected = BTreeMap::new();
    // One put first, so the batch starts in the middle of a block.
    db.put(key(0), "single").expect("put");
    expected.insert(key(0), Some(b"single".to_vec()));
    let mut batch = Batch::new();
    for i in 1..1000 {
        batch.put(key(i), format!("v{i}"));
        expected.insert(key(i), Some(format!("v{i}").into_bytes()));
    }
    let last = db.write(batch).expect("write").expect("a dot");
    let report = db.verify().expect("verify");
    assert!(report.log_blocks >= 60, "1000 puts in one batch fill at least 60 blocks: {report:?}");
    assert!(report.log_entries == 1000 && report.is_ok(), "{report:?}");
    assert_consistent(&db, &expected);

    // Overwrite every third key one by one, delete every seventh in a batch.
    let first_dot = last.seq - 998;
    for i in (1..1000).step_by(3) {
        db.put(key(i), "again").expect("put");
        expected.insert(key(i), Some(b"again".to_vec()));
    }
    assert!(db.entry(db.node_id(), first_dot).expect("entry").is_none(), "overwritten dot left the log");
    assert_consistent(&db, &expected);
    let mut deletes = Batch::new();
    for i in (0..1000).step_by(7) {
        deletes.delete(key(i));
        expected.insert(key(i), None);
    }
    db.write(deletes).expect("deletes");
    assert_consistent(&db, &expected);
    let (k, record) = db.entry(db.node_id(), first_dot + 1).expect("entry").expect("current dot in a block");
    assert_eq!((k, record.value()), (key(2), Some(&b"v2"[..])));

    // Overwrite everything the batch wrote: its blocks disappear.
    let mut again = Batch::new();
    for i in 1..1000 {
        again.put(key(i), "third");
        expected.insert(key(i), Some(b"third".to_vec()));
    }
    db.write(again).expect("write");
    assert_consistent(&db, &expected);
    let blocks = db.verify().expect("verify").log_blocks;
    assert!((60..=63).contains(&blocks), "only the newest batch's blocks remain: {blocks}");
    assert!(db.entry(db.node_id(), first_dot + 1).expect("entry").is_none(), "its old blocks went");

    // A batch ending on a block boundary: the newest own seq is in a block,
    // and reopening recovers the node's own version-vector entry from it.
    let next = db.version_vector().get(db.node_id()) + 1;
    let mut last_batch = Batch::new();
    for i in 0..(16 - next % 16) + 32 {
        last_batch.put(format!("tail{i}"), "t");
        expected.insert(format!("tail{i}").into_bytes(), Some(b"t".to_vec()));
    }
    let newest = db.write(last_batch).expect("write").expect("a dot").seq;
    assert_eq!(newest % 16, 15, "the batch ends a block");
    let newest = db.version_vector().get(db.node_id()).max(newest);
    drop(db);
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    assert_eq!(db.version_vector().get(db.node_id()), newest);
    assert_eq!(db.put("after", "x").expect("put").seq, newest + 1);
    expected.insert(b"after".to_vec(), Some(b"x".to_vec()));
    assert_consistent(&db, &expected);
}

#[test]
fn remote_writes_supersede_dots_inside_blocks() {
    let (da, db_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = Db::open(da.path(), Options::default()).expect("open a");
    let b = Db::open(db_dir.path(), Options::default()).expect("open b");
    let mut batch = Batch::new();
    for i in 0..64 {
        batch.put(key(i), "from a");
    }
    a.write(batch).expect("write");
    // b learns a's writes, overwrites half of them, and a learns those.
    b.apply(a.changes_since(&b.version_vector()).expect("changes").map(|r| r.expect("item")), None).expect("apply");
    for i in (0..64).step_by(2) {
        b.put(key(i), "from b").expect("put");
    }
    let missing = b.changes_since(&a.version_vector()).expect("changes").map(|r| r.expect("item"));
    a.apply(missing, Some(&b.version_vector())).expect("apply");
    let expected: BTreeMap<_, _> =
        (0..64).map(|i| (key(i), Some(if i % 2 == 0 { b"from b".to_vec() } else { b"from a".to_vec() }))).collect();
    assert_consistent(&a, &expected);
    assert_consistent(&b, &expected);
    // Seqs 1..=64: the blocks from 16, 32 and 48 are full, 1..=15 and 64 are not.
    assert_eq!(a.verify().expect("verify").log_blocks, 3, "a's blocks shrank, none went");
    assert_eq!(b.verify().expect("verify").log_blocks, 0, "b stores a's dots one by one");
}

#[test]
fn a_store_of_format_1_opens_and_is_marked_format_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("MESHKV");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    for i in 0..40 {
        db.put(key(i), "one by one").expect("put");
    }
    drop(db);
    // Single puts wrote one log entry per dot: the whole of format 1.
    std::fs::write(&marker, "meshkv store\nformat 1\n").expect("older marker");
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "meshkv store\nformat 2\n");
    let mut batch = Batch::new();
    for i in 0..40 {
        batch.put(key(i), "in a batch");
    }
    db.write(batch).expect("write");
    let expected = (0..40).map(|i| (key(i), Some(b"in a batch".to_vec()))).collect();
    assert_consistent(&db, &expected);
}
