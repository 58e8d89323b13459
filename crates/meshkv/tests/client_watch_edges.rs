//! Watches at their edges: a watcher that reads too slowly learns that it
//! missed changes, a dropped watch frees its slot on the node, and a watch
//! asked for while the node is down fails rather than hangs (at once with
//! retry off, after the request timeout with retry on).

mod common;
use common::start;

use meshkv::client::{Client, ClientOptions, WatchEvent};
use meshkv::protocol::ErrorCode;
use meshkv::{Batch, Db, KeyRange, Options};
use std::time::Duration;

/// A watch whose receiver is not read while more than its buffer of changes
/// happen must report `Lagged` (changes were dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_gets_lagged() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let addr = node.local_addr().expect("bound");
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let mut watch = client.watch(KeyRange::all()).await.expect("watch");
    const N: usize = 3000;
    // One commit of N changes: the node's own feed cannot lag on it.
    let mut batch = Batch::new();
    for i in 0..N {
        batch.put(format!("k{i:05}").into_bytes(), b"v".to_vec());
    }
    node.db().write(batch).expect("write");
    // Read nothing until the buffer is full, then everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut changes, mut lagged) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while changes < N && lagged == 0 {
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Ok(Some(WatchEvent::Change { .. })) => changes += 1,
            Ok(Some(WatchEvent::Lagged)) => lagged += 1,
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        changes == N || lagged > 0,
        "{changes} of {N} changes delivered and no Lagged event: changes were dropped silently"
    );
    node.shutdown().await;
}

/// Dropping a watch's receiver is the only way to stop watching; it must not
/// keep holding one of the node's per-client watch slots forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_free_their_slots_on_the_node() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let addr = node.local_addr().expect("bound");
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    for i in 0..20 {
        let w = client.watch(KeyRange::prefix(format!("w{i}/"))).await;
        assert!(w.is_ok(), "watch #{} after dropping the previous ones: {:?}", i + 1, w.err());
        drop(w);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.shutdown().await;
}

/// With retry off, a call made while the node is unreachable fails with
/// connection-lost; `watch` must too, not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_retry_fails_while_the_node_is_down() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let addr = node.local_addr().expect("bound");
    let opts = ClientOptions { retry: false, ..ClientOptions::default() };
    let client = Client::connect(addr, opts).await.expect("connect");
    client.put("a", "1").await.expect("put");
    node.shutdown().await;
    // The loss is noticed; calls fail with connection-lost.
    let e = client.get("a").await.expect_err("node is down");
    assert_eq!(e.code, ErrorCode::ConnectionLost);
    let e = client.get("a").await.expect_err("node is down");
    assert_eq!(e.code, ErrorCode::ConnectionLost);
    match tokio::time::timeout(Duration::from_secs(5), client.watch(KeyRange::all())).await {
        Ok(Err(e)) => assert_eq!(e.code, ErrorCode::ConnectionLost),
        Ok(Ok(_)) => panic!("watch succeeded on a node that is down"),
        Err(_) => panic!("watch() hung for 5 s with retry off while the node is down"),
    }
}

/// With retry on, a watch asked for while the node is down waits for it
/// only as long as any call does (the request timeout), then fails with
/// connection-lost; it used to wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_retry_fails_after_the_request_timeout_while_the_node_is_down() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let addr = node.local_addr().expect("bound");
    let opts = ClientOptions { request_timeout: Duration::from_secs(1), ..ClientOptions::default() };
    let client = Client::connect(addr, opts).await.expect("connect");
    node.shutdown().await;
    let e = client.get("a").await.expect_err("node is down");
    assert_eq!(e.code, ErrorCode::ConnectionLost, "a call fails after the request timeout: {e}");
    match tokio::time::timeout(Duration::from_secs(10), client.watch(KeyRange::all())).await {
        Ok(Err(e)) => assert_eq!(e.code, ErrorCode::ConnectionLost, "{e}"),
        Ok(Ok(_)) => panic!("watch succeeded on a node that is down"),
        Err(_) => panic!("watch() hung for 10 s with a 1 s request timeout while the node is down"),
    }
}
