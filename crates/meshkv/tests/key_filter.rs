//! The in-memory key filter lets writes of new keys skip reading their old
//! record. These tests hold it to what users rely on: an overwrite always
//! finds the record it replaces — right after a reopen while the filter is
//! still being built, once it is built, after a replicated write, and when it
//! is over its memory budget — so the change log keeps one entry per key and
//! the new version is causally after the old one. `Db::verify` also checks
//! that a complete filter holds every stored key.

use meshkv::{Batch, Db, Options, Record};
use std::collections::HashMap;

const KEYS: u64 = 20_000;

fn key(i: u64) -> Vec<u8> {
    format!("key/{i:08}").into_bytes()
}

fn write_all(db: &Db, round: u32) {
    write_n(db, KEYS, round);
}

fn write_n(db: &Db, n: u64, round: u32) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
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

/// Overwrites every key and checks that each write found the record it
/// replaced; returns the new records.
fn overwrite_all(db: &Db, round: u32, before: &HashMap<u64, Record>) -> HashMap<u64, Record> {
    write_all(db, round);
    let after = records(db);
    assert_overwrites(before, &after);
    assert_one_log_entry_per_key(db);
    after
}

fn assert_one_log_entry_per_key(db: &Db) {
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", &report.problems[..report.problems.len().min(5)]);
    assert_eq!(report.records, KEYS);
    assert_eq!(report.log_entries, KEYS, "superseded change-log entries were left behind");
}

#[test]
fn the_open_scan_adds_every_stored_key() {
    // Around the scan's chunk of 4096 keys: a partial last chunk, and an
    // exact multiple that ends on an empty one.
    for n in [1, 3 * 4096 + 1, 2 * 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        write_n(&Db::open(dir.path(), Options::default()).expect("open"), n, 1);
        let db = Db::open(dir.path(), Options::default()).expect("reopen");
        db.wait_for_key_filter();
        let stats = db.key_filter_stats();
        assert!(stats.complete && stats.keys >= n * 95 / 100, "{n} keys: {stats:?}");
        let report = db.verify().expect("verify");
        assert!(report.is_ok() && report.records == n, "{n} keys: {:?}", report.problems.first());
        // Every one of them is then overwritten in place.
        write_n(&db, n, 2);
        let report = db.verify().expect("verify");
        assert!(report.is_ok() && report.log_entries == n, "{n} keys: {report:?}");
    }
}

#[test]
fn a_put_after_a_replicated_write_of_a_new_key_follows_it() {
    let (da, db_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = Db::open(da.path(), Options::default()).expect("open a");
    let b = Db::open(db_dir.path(), Options::default()).expect("open b");
    write_n(&a, 2_000, 1);
    let from_a: Vec<(Vec<u8>, Record)> =
        (0..2_000).map(|i| (key(i), a.get_record(key(i)).expect("read").expect("stored"))).collect();
    // Out of key order, so the apply reads key by key through the filter.
    b.apply(from_a.iter().rev().cloned(), Some(&a.version_vector())).expect("apply");
    write_n(&b, 2_000, 2);
    for (k, old) in &from_a {
        let new = b.get_record(k).expect("read").expect("stored");
        assert!(new.winner().supersedes(old.winner()), "{k:?}: the put does not follow the replicated write");
    }
    let report = b.verify().expect("verify");
    assert!(report.is_ok() && report.log_entries == 2_000, "{report:?}");
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
    overwrite_all(&db, 3, &after);
}

#[test]
fn a_filter_over_its_budget_reads_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options { key_filter_bytes: 1024, ..Options::default() }).expect("open");
    assert!(db.key_filter_stats().given_up);
    write_all(&db, 1);
    overwrite_all(&db, 2, &records(&db));
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
