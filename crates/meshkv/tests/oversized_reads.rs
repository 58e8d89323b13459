//! Reads name keys of any length: one longer than any storable key holds
//! nothing (locally, in a snapshot and remotely), and a scan bound that
//! long still bounds the scan exactly, instead of the engine panicking on
//! a key past 64 KiB. A huge feed capacity is clamped, not a panic.

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::storage::KEY_LEN_CEILING;
use meshkv::{Db, KeyRange, Options, ScanOptions};

fn keys(db: &Db, range: KeyRange) -> Vec<Vec<u8>> {
    db.scan(ScanOptions::range(range)).map(|e| e.expect("entry").key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_longer_than_any_storable_one_read_as_absent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options { max_key_len: KEY_LEN_CEILING, ..Options::default() }).expect("open");
    let longest = vec![b'a'; KEY_LEN_CEILING];
    for k in [&b"a"[..], &longest, b"b"] {
        db.put(k, "v").expect("put");
    }
    let long = vec![b'a'; 70_000];
    assert_eq!(db.get(&long).expect("get"), None);
    assert_eq!(db.snapshot().get(&long).expect("snapshot get"), None);

    // Bounds past the ceiling compare with stored keys as in full: both
    // stored keys of a's are prefixes of `long`, so below it.
    let below = vec![b"a".to_vec(), longest.clone()];
    assert_eq!(keys(&db, KeyRange { lt: Some(long.clone()), ..KeyRange::default() }), below);
    assert_eq!(keys(&db, KeyRange { lte: Some(long.clone()), ..KeyRange::default() }), below);
    assert_eq!(keys(&db, KeyRange { gte: Some(long.clone()), ..KeyRange::default() }), vec![b"b".to_vec()]);
    assert_eq!(keys(&db, KeyRange { gt: Some(long.clone()), ..KeyRange::default() }), vec![b"b".to_vec()]);
    assert!(keys(&db, KeyRange::prefix(long.clone())).is_empty());
    assert_eq!(keys(&db, KeyRange::prefix(longest.clone())), vec![longest.clone()]);
    // Two long bounds that differ only past the cut.
    let (mut lo, mut hi) = (long.clone(), long.clone());
    lo.push(0);
    hi.push(1);
    let range = KeyRange { gte: Some(lo), lt: Some(hi), ..KeyRange::default() };
    assert!(keys(&db, range.clone()).is_empty());
    assert!(db.snapshot().scan(ScanOptions::range(range)).next().is_none());

    let node = common::start(db.clone()).await;
    let client = Client::connect(node.local_addr().expect("bound"), ClientOptions::default()).await.expect("connect");
    assert_eq!(client.get(long.clone()).await.expect("answered, not dropped"), None);
    node.shutdown().await;
}

#[test]
fn a_huge_feed_capacity_is_clamped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options { feed_capacity: usize::MAX, ..Options::default() }).expect("opens");
    db.put("k", "v").expect("put");
}
