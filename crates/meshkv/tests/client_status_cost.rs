//! `status` counts the store's keys, a scan of the whole store: the count
//! is exact after every kind of change, yet a stream of `status` requests
//! does not repeat the scan for an unchanged store nor stall the other
//! connections (it took a runtime worker for the whole scan each time).

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::{Batch, Db, Options};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_count_follows_every_change() {
    let (da, db_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let node = common::start(Db::open(da.path(), Options::default()).expect("open")).await;
    let client = Client::connect(node.local_addr().expect("addr"), ClientOptions::default()).await.expect("connect");
    assert_eq!(client.status().await.expect("status").keys, 0);
    client.put("a", "1").await.expect("put");
    client.put("b", "2").await.expect("put");
    assert_eq!(client.status().await.expect("status").keys, 2);
    client.delete("a").await.expect("delete");
    assert_eq!(client.status().await.expect("status").keys, 1);
    node.db().put("c", "3").expect("local put");
    assert_eq!(client.status().await.expect("status").keys, 2);

    // Records from a peer count too.
    let other = Db::open(db_dir.path(), Options::default()).expect("open");
    let mut batch = Batch::new();
    batch.put("d", "4").put("e", "5");
    other.write(batch).expect("write");
    let changes = other.changes_since(&meshkv::VersionVector::new()).expect("changes");
    let vv = changes.version_vector().clone();
    let records: Vec<_> = changes.map(|r| r.expect("record")).collect();
    node.db().apply(records, Some(&vv)).expect("apply");
    assert_eq!(client.status().await.expect("status").keys, 4);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_status_requests_does_not_stall_other_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    for chunk in 0..100u32 {
        let mut batch = Batch::new();
        for i in 0..1000u32 {
            batch.put((chunk * 1000 + i).to_be_bytes(), "v");
        }
        db.write(batch).expect("write");
    }
    let node = common::start(db).await;
    let addr = node.local_addr().expect("addr");
    let noisy = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let other = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    assert_eq!(noisy.status().await.expect("status").keys, 100_000);

    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..256 {
        let c = noisy.clone();
        flood.spawn(async move { c.status().await.map(|s| s.keys) });
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    other.put("k", "v").await.expect("put");
    let took = started.elapsed();
    while let Some(keys) = flood.join_next().await {
        assert_eq!(keys.expect("task").expect("status"), 100_000);
    }
    // 256 scans of 100 000 keys took 15 s and more; one scan well under 1 s.
    assert!(took < Duration::from_secs(5), "another client's put waited {took:?}");
    node.shutdown().await;
}
