//! The two catch-up orders and the receiver's batch paths.
//!
//! * `Snapshot::changes_in_key_order` returns exactly the records
//!   `changes_since` returns, in key order, and its skip rule leaves out only
//!   what it names.
//! * `Snapshot::catch_up` picks key order for a peer that lacks much of the
//!   store and log order for a small difference.
//! * `Db::apply` of a batch with ascending keys (found with one range scan,
//!   including the fallback to point reads for a batch that is sparse in a
//!   large store) gives the same store as applying the records one by one.

use meshkv::storage::KeySkip;
use meshkv::{Batch, ConflictPolicy, Db, Options, Record, VersionVector};
use std::collections::BTreeMap;

fn open(opts: Options) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts).expect("open");
    (dir, db)
}

fn key(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

fn load(db: &Db, keys: impl IntoIterator<Item = u32>, tag: &str) {
    let mut b = Batch::new();
    for i in keys {
        b.put(key(i), format!("{tag}-{i}"));
    }
    db.write(b).expect("write");
}

type Records = Vec<(Vec<u8>, Record)>;

fn collect(it: impl Iterator<Item = meshkv::Result<(Vec<u8>, Record)>>) -> Records {
    it.map(|r| r.expect("item")).collect()
}

fn sorted(mut r: Records) -> Records {
    r.sort_by(|a, b| a.0.cmp(&b.0));
    r
}

/// Every record of `db` by key, tombstones included.
fn all_records(db: &Db) -> BTreeMap<Vec<u8>, Record> {
    collect(db.changes_since(&VersionVector::new()).expect("changes")).into_iter().collect()
}

#[test]
fn key_order_returns_what_log_order_returns_sorted_by_key() {
    let (_d, db) = open(Options::default());
    load(&db, 0..500, "v1");
    let mid = db.version_vector();
    load(&db, (0..500).step_by(7), "v2");
    db.delete(key(3)).expect("delete");
    load(&db, 500..600, "v1");
    for since in [VersionVector::new(), mid.clone(), db.version_vector()] {
        let log = collect(db.snapshot().changes_since(&since).expect("log"));
        let keys = collect(db.snapshot().changes_in_key_order(&since, None).expect("keys"));
        assert!(keys.windows(2).all(|w| w[0].0 < w[1].0), "key order");
        assert_eq!(sorted(log), keys, "since {since}");
    }
    // The skip rule: up to key 100, versions covered by `mid` are left out.
    let skip = KeySkip { key: key(100).to_vec(), covered: mid.clone() };
    let got = collect(db.snapshot().changes_in_key_order(&VersionVector::new(), Some(skip)).expect("skip"));
    let all = collect(db.snapshot().changes_in_key_order(&VersionVector::new(), None).expect("all"));
    let expected: Records = all
        .into_iter()
        .filter(|(k, r)| k.as_slice() > key(100).as_slice() || r.dots().any(|d| !mid.contains(d)))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        got.iter().filter(|(k, _)| k.as_slice() <= key(100).as_slice()).count(),
        15 + 1,
        "overwrites and delete"
    );
}

#[test]
fn catch_up_picks_key_order_for_a_large_difference_only() {
    let (_d, db) = open(Options::default());
    load(&db, 0..1000, "v1");
    assert!(db.snapshot().catch_up(&VersionVector::new(), None).expect("empty").is_key_order());
    let synced = db.version_vector();
    load(&db, 0..10, "v2");
    assert!(!db.snapshot().catch_up(&synced, None).expect("small").is_key_order());
    assert!(!db.snapshot().catch_up(&db.version_vector(), None).expect("none").is_key_order());
    let skip = KeySkip { key: key(5).to_vec(), covered: synced.clone() };
    assert!(
        db.snapshot().catch_up(&synced, Some(skip)).expect("resumed").is_key_order(),
        "a key-order resume stays in key order"
    );
}

/// Applies `records` to a copy of `base`'s records (one store), as one
/// ascending batch, and one record at a time (another store); both must end
/// identical and intact.
fn check_batch_equals_one_by_one(base: &Db, records: &Records, policy: &ConflictPolicy) {
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0), "the batch is ascending");
    let start = collect(base.changes_since(&VersionVector::new()).expect("base"));
    let (_d1, batched) = open(Options::default().policy(policy.clone()));
    let (_d2, single) = open(Options::default().policy(policy.clone()));
    for db in [&batched, &single] {
        db.apply(start.clone(), Some(&base.version_vector())).expect("copy base");
    }
    batched.apply(records.clone(), None).expect("batch");
    for r in records {
        single.apply([r.clone()], None).expect("one");
    }
    assert_eq!(all_records(&batched), all_records(&single));
    for db in [&batched, &single] {
        let report = db.verify().expect("verify");
        assert!(report.is_ok(), "{:?}", report.problems);
    }
}

#[test]
fn an_ascending_batch_merges_like_single_records() {
    for policy in [ConflictPolicy::LastWriterWins, ConflictPolicy::PreferNodes(Vec::new())] {
        // `a` holds keys 0..1000 (even keys) ; `c` writes concurrently to a
        // dense range (existing and new keys) and to a few keys spread
        // over the whole store.
        let (_da, a) = open(Options::default().policy(policy.clone()));
        let (_dc, c) = open(Options::default().policy(policy.clone()));
        load(&a, (0..2000).step_by(2), "a");
        load(&c, 400..700, "c");
        load(&c, [1, 998, 1999, 5000], "c");
        let mut dense = collect(c.snapshot().changes_in_key_order(&VersionVector::new(), None).expect("c"));
        dense.retain(|(k, _)| k.as_slice() >= key(400).as_slice() && k.as_slice() < key(700).as_slice());
        check_batch_equals_one_by_one(&a, &dense, &policy);
        // Sparse: 4 keys spanning 1000 stored ones (the range scan gives up).
        let sparse: Records = collect(c.snapshot().changes_in_key_order(&VersionVector::new(), None).expect("c"))
            .into_iter()
            .filter(|(k, _)| [key(1), key(998), key(1999), key(5000)].iter().any(|s| s.as_slice() == k.as_slice()))
            .collect();
        assert_eq!(sparse.len(), 4);
        check_batch_equals_one_by_one(&a, &sparse, &policy);
    }
}
