//! The two catch-up orders and the receiver's batch paths.
//!
//! * `Snapshot::changes_in_key_order` returns exactly the records
//!   `changes_since` returns, in key order, and its skip rule leaves out only
//!   what it names; this holds for every `since`, including one that ends
//!   inside a change-log block or covers only part of one origin's writes,
//!   and for records holding several concurrent versions.
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

/// A complete catch-up of `to` from `from`.
fn pull(to: &Db, from: &Db) {
    let cs = from.changes_since(&to.version_vector()).expect("changes");
    let vv = cs.version_vector().clone();
    let records = collect(cs);
    to.apply(records, Some(&vv)).expect("apply");
}

/// A store holding sibling records (concurrent writes of two origins, kept
/// as siblings by `PreferNodes`), a 40-key batch and a local write. From nothing, from everything, and from a quarter, half
/// and three quarters of each origin's writes (the others' fully covered),
/// both orders return the same records, each once: exactly those with a
/// version `since` lacks.
#[test]
fn both_orders_agree_with_siblings_and_partial_since() {
    let policy = ConflictPolicy::PreferNodes(Vec::new());
    let (_da, a) = open(Options::default().policy(policy.clone()));
    let (_db, b) = open(Options::default().policy(policy.clone()));
    let (_dx, x) = open(Options::default().policy(policy));
    for i in 0..40 {
        a.put(format!("k{i:02}"), format!("a{i}")).expect("put");
        if i % 2 == 0 {
            b.put(format!("k{i:02}"), format!("b{i}")).expect("put");
        }
        if i % 3 == 0 {
            b.delete(format!("k{i:02}")).expect("delete");
        }
    }
    let mut batch = Batch::new();
    for i in 0..40 {
        batch.put(format!("z{i:02}"), "batch");
    }
    a.write(batch).expect("batch");
    pull(&x, &a);
    pull(&x, &b);
    assert!(x.get_record("k00").expect("get").expect("record").versions().len() > 1, "siblings");
    x.put("k05", "x").expect("put");

    let full = x.version_vector();
    let mut sinces = vec![VersionVector::new(), full.clone()];
    for (origin, top) in full.iter() {
        for quarters in 1..=3 {
            sinces.push(full.iter().map(|(o, s)| (o, if o == origin { top * quarters / 4 } else { s })).collect());
        }
    }
    let everything = all_records(&x);
    for since in sinces {
        let log = collect(x.snapshot().changes_since(&since).expect("log"));
        let log_map: BTreeMap<Vec<u8>, Record> = log.iter().cloned().collect();
        assert_eq!(log.len(), log_map.len(), "log order sent a record twice for since {since}");
        let keys: BTreeMap<Vec<u8>, Record> =
            collect(x.snapshot().changes_in_key_order(&since, None).expect("keys")).into_iter().collect();
        assert_eq!(log_map, keys, "orders disagree for since {since}");
        for (k, r) in &everything {
            let wanted = r.dots().any(|d| !since.contains(d));
            assert_eq!(wanted, log_map.contains_key(k), "key {k:?} since {since}");
        }
    }
}

/// Log order from every own seq of a store whose writes sit in change-log
/// blocks (a 70-key batch, some of its keys overwritten or deleted since):
/// `since` falls before, inside and at the edges of blocks, and log order
/// returns each record once, the same as key order.
#[test]
fn log_order_from_inside_a_block_matches_key_order() {
    let (_d, db) = open(Options::default());
    for i in 0..5 {
        db.put(format!("s{i}"), "v").expect("put");
    }
    let mut batch = Batch::new();
    for i in 0..70 {
        batch.put(format!("b{i:02}"), "batch");
    }
    db.write(batch).expect("batch");
    for i in [3, 17, 18, 40, 41, 55] {
        db.put(format!("b{i:02}"), "over").expect("put");
    }
    db.delete("b30").expect("delete");
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    let me = db.node_id();
    for seq in 0..=db.version_vector().get(me) {
        let since: VersionVector = [(me, seq)].into_iter().collect();
        let log = collect(db.snapshot().changes_since(&since).expect("log"));
        let log_map: BTreeMap<Vec<u8>, Record> = log.iter().cloned().collect();
        assert_eq!(log.len(), log_map.len(), "log order sent a record twice from seq {seq}");
        let keys: BTreeMap<Vec<u8>, Record> =
            collect(db.snapshot().changes_in_key_order(&since, None).expect("keys")).into_iter().collect();
        assert_eq!(log_map, keys, "orders disagree from seq {seq}");
    }
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
