//! The local API: get/put/delete, atomic batches, range iteration and
//! snapshots, over arbitrary byte keys.

mod common;

use meshkv::{Batch, Db, KeyRange, Options, ScanOptions};

fn keys(db: &Db, opts: ScanOptions) -> Vec<Vec<u8>> {
    db.scan(opts).map(|e| e.expect("scan").key).collect()
}

#[test]
fn put_get_delete_roundtrip_with_byte_keys() {
    let (_dir, db) = common::temp_store();
    for key in [&b""[..], b"\x00", b"\xff", b"\x00\x00", b"\xff\xff", b"a"] {
        db.put(key, [key, b"!"].concat()).expect("put");
    }
    assert_eq!(db.get(b"").expect("get"), Some(b"!".to_vec()));
    assert_eq!(db.get(b"\xff\xff").expect("get"), Some(b"\xff\xff!".to_vec()));
    assert_eq!(db.get(b"missing").expect("get"), None);
    let d1 = db.delete(b"\x00").expect("delete");
    assert_eq!(db.get(b"\x00").expect("get"), None);
    let rec = db.get_record(b"\x00").expect("record").expect("tombstone kept");
    assert!(rec.winner().is_tombstone());
    let d2 = db.put(b"\x00", "again").expect("put");
    assert!(d2.seq > d1.seq, "sequence numbers grow");
    assert_eq!(db.get(b"\x00").expect("get"), Some(b"again".to_vec()));
    assert!(db.verify().expect("verify").is_ok());
}

#[test]
fn batch_is_atomic_and_last_op_per_key_wins() {
    let (_dir, db) = common::temp_store();
    db.put("gone", "x").expect("put");
    let mut b = Batch::new();
    b.put("a", "1").put("b", "2").delete("gone").put("a", "3");
    let last = db.write(b).expect("write").expect("non-empty");
    assert_eq!(db.get("a").expect("get"), Some(b"3".to_vec()));
    assert_eq!(db.get("b").expect("get"), Some(b"2".to_vec()));
    assert_eq!(db.get("gone").expect("get"), None);
    // Surviving operations in batch order (b, gone, a): consecutive seqs ending at `last`.
    assert_eq!(db.get_record("b").expect("rec").expect("b").winner().dot.seq, last.seq - 2);
    assert_eq!(db.write(Batch::new()).expect("empty batch"), None);
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.log_entries, 3, "one log entry per current record");
}

#[test]
fn scan_bounds_prefix_limit_reverse() {
    let (_dir, db) = common::temp_store();
    let all: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\x00".to_vec(),
        b"a".to_vec(),
        b"ab".to_vec(),
        b"abc".to_vec(),
        b"b".to_vec(),
        b"\xff".to_vec(),
        b"\xff\xff".to_vec(),
    ];
    for k in &all {
        db.put(k.clone(), b"v".to_vec()).expect("put");
    }
    db.put("dead", "v").expect("put");
    db.delete("dead").expect("delete");

    assert_eq!(keys(&db, ScanOptions::default()), all, "tombstones are skipped");
    let range = |r: KeyRange| ScanOptions::range(r);
    let prefix = range(KeyRange::prefix("ab"));
    assert_eq!(keys(&db, prefix.clone()), vec![b"ab".to_vec(), b"abc".to_vec()]);
    assert_eq!(keys(&db, range(KeyRange::prefix(b"\xff".to_vec()))), vec![b"\xff".to_vec(), b"\xff\xff".to_vec()]);
    let r = KeyRange { gt: Some(b"a".to_vec()), lte: Some(b"b".to_vec()), ..KeyRange::default() };
    assert_eq!(keys(&db, range(r.clone())), vec![b"ab".to_vec(), b"abc".to_vec(), b"b".to_vec()]);
    let r2 = KeyRange { gte: Some(b"a".to_vec()), lt: Some(b"b".to_vec()), ..KeyRange::default() };
    assert_eq!(keys(&db, range(r2)), vec![b"a".to_vec(), b"ab".to_vec(), b"abc".to_vec()]);
    let rev = ScanOptions { reverse: true, limit: Some(2), ..range(r) };
    assert_eq!(keys(&db, rev), vec![b"b".to_vec(), b"abc".to_vec()]);
    let inverted = KeyRange { gt: Some(b"z".to_vec()), lt: Some(b"a".to_vec()), ..KeyRange::default() };
    assert!(keys(&db, range(inverted)).is_empty());

    let keys_only = ScanOptions { values: false, ..prefix.clone() };
    let e: Vec<_> = db.scan(keys_only).map(|e| e.expect("scan")).collect();
    assert!(e.iter().all(|e| e.value.is_empty() && !e.key.is_empty()));
    let values_only = ScanOptions { keys: false, ..prefix };
    let e: Vec<_> = db.scan(values_only).map(|e| e.expect("scan")).collect();
    assert_eq!(e.len(), 2);
    assert!(e.iter().all(|e| e.key.is_empty() && e.value == b"v"));
}

#[test]
fn snapshot_reads_stay_consistent_while_writes_continue() {
    let (_dir, db) = common::temp_store();
    db.put("k1", "old").expect("put");
    let snap = db.snapshot();
    db.put("k1", "new").expect("put");
    db.put("k2", "new").expect("put");
    assert_eq!(snap.get("k1").expect("get"), Some(b"old".to_vec()));
    assert_eq!(snap.get("k2").expect("get"), None);
    assert_eq!(snap.scan(ScanOptions::default()).count(), 1);
    assert_eq!(db.scan(ScanOptions::default()).count(), 2);
    assert_eq!(snap.version_vector().expect("vv").get(db.node_id()), 1);
    assert_eq!(db.version_vector().get(db.node_id()), 3);
}

#[test]
fn node_id_and_sequence_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, seq) = {
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let d = db.put("k", "v").expect("put");
        (db.node_id(), d.seq)
    };
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    assert_eq!(db.node_id(), id);
    assert_eq!(db.get("k").expect("get"), Some(b"v".to_vec()));
    assert!(db.put("k", "w").expect("put").seq > seq);
}

/// Large batches read the old records in parallel; overwrites must still
/// supersede exactly the right log entries and carry the right context.
#[test]
fn large_batch_overwrites_supersede_their_log_entries() {
    let (_dir, db) = common::temp_store();
    let mut first = Batch::new();
    for i in 0..1000u32 {
        first.put(i.to_be_bytes(), "v1");
    }
    let d1 = db.write(first).expect("write").expect("dot");
    let mut second = Batch::new();
    for i in (0..2000u32).step_by(2) {
        second.put(i.to_be_bytes(), "v2");
    }
    db.write(second).expect("write");
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.records, report.log_entries), (1500, 1500));
    let rec = db.get_record(998u32.to_be_bytes()).expect("get").expect("present");
    assert_eq!(rec.value(), Some(&b"v2"[..]));
    assert_eq!(rec.winner().deps.get(db.node_id()), d1.seq - 1, "the overwrite saw the first write");
}
