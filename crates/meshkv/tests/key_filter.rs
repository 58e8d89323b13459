//! The in-memory key filter lets writes of new keys skip reading their old
//! record. These tests hold it to what users rely on: an overwrite always
//! finds the record it replaces — right after a reopen while the filter is
//! still being built, once it is built, and when it is over its memory budget
//! — so the change log keeps one entry per key and the new version is
//! causally after the old one.

use meshkv::{Batch, Db, Options, Record};
use std::collections::HashMap;

const KEYS: u64 = 20_000;

fn key(i: u64) -> Vec<u8> {
    format!("key/{i:08}").into_bytes()
}

fn write_all(db: &Db, round: u32) {
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let mut batch = Batch::new();
        for &i in chunk {
            batch.put(key(i), format!("round {round} value {i}"));
        }
        db.write(batch).expect("write");
    }
}

fn records(db: &Db) -> HashMap<u64, Record> {
    (0..KEYS).map(|i| (i, db.get_record(key(i)).expect("read").expect("stored"))).collect()
}

/// Every key's record of `after` is causally after its record in `before`.
fn assert_overwrites(before: &HashMap<u64, Record>, after: &HashMap<u64, Record>) {
    for (i, old) in before {
        let new = after[i].winner();
        assert!(new.supersedes(old.winner()), "key {i}: the overwrite does not follow the record it replaced");
    }
}

fn assert_one_log_entry_per_key(db: &Db) {
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", &report.problems[..report.problems.len().min(5)]);
    assert_eq!(report.records, KEYS);
    assert_eq!(report.log_entries, KEYS, "superseded change-log entries were left behind");
}

#[test]
fn overwrites_right_after_reopen_find_the_records_they_replace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    assert!(db.key_filter_stats().complete, "a new store has nothing to scan");
    write_all(&db, 1);
    let before = records(&db);
    drop(db);

    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    // Written while the open-time scan may still be running.
    write_all(&db, 2);
    db.wait_for_key_filter();
    let stats = db.key_filter_stats();
    assert!(stats.complete && !stats.given_up, "{stats:?}");
    assert!(stats.keys >= KEYS * 95 / 100, "the scan added the stored keys: {stats:?}");
    let after = records(&db);
    assert_overwrites(&before, &after);
    assert_one_log_entry_per_key(&db);

    // Once the filter is complete, overwrites still find their records.
    write_all(&db, 3);
    assert_overwrites(&after, &records(&db));
    assert_one_log_entry_per_key(&db);
}

#[test]
fn a_filter_over_its_budget_reads_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = || Options { key_filter_bytes: 1024, ..Options::default() };
    let db = Db::open(dir.path(), opts()).expect("open");
    assert!(db.key_filter_stats().given_up);
    write_all(&db, 1);
    let before = records(&db);
    write_all(&db, 2);
    assert_overwrites(&before, &records(&db));
    assert_one_log_entry_per_key(&db);
}

#[test]
fn deleted_keys_stay_in_the_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    db.put("k", "v1").expect("put");
    let tombstone = db.delete("k").expect("delete");
    drop(db);
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    db.wait_for_key_filter();
    let dot = db.put("k", "v2").expect("put");
    let record = db.get_record("k").expect("read").expect("stored");
    assert_eq!(record.versions().len(), 1);
    assert!(record.winner().deps.contains(tombstone), "the put must follow the tombstone it replaces");
    assert_eq!(record.winner().dot, dot);
    let report = db.verify().expect("verify");
    assert!(report.is_ok() && report.log_entries == 1, "{report:?}");
}
