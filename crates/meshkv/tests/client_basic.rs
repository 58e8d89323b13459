//! The remote client against a real node over TCP: every operation, and the
//! errors a caller can match on.

mod common;
use common::start;

use meshkv::client::{Client, ClientOptions, WatchEvent};
use meshkv::protocol::{BatchOp, ErrorCode};
use meshkv::{Db, KeyRange, Options, ScanOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_round_trips() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let addr = node.local_addr().expect("bound");
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");

    assert_eq!(client.get("missing").await.expect("get"), None);
    client.put("a", "1").await.expect("put");
    client.put(Vec::new(), "empty key").await.expect("put empty key");
    assert_eq!(client.get("a").await.expect("get"), Some(b"1".to_vec()));
    assert_eq!(node.db().get("a").expect("local"), Some(b"1".to_vec()), "written on the node");
    client
        .batch(vec![
            BatchOp::Put { key: b"b".to_vec(), value: b"2".to_vec() },
            BatchOp::Put { key: b"c".to_vec(), value: b"3".to_vec() },
            BatchOp::Delete { key: b"a".to_vec() },
        ])
        .await
        .expect("batch");
    let many = client.get_many(vec![b"a".to_vec(), b"b".to_vec(), Vec::new()]).await.expect("get many");
    assert_eq!(many, vec![None, Some(b"2".to_vec()), Some(b"empty key".to_vec())]);
    client.delete("c").await.expect("delete");

    let keys: Vec<Vec<u8>> =
        client.scan(ScanOptions::default(), 1).collect().await.expect("scan").into_iter().map(|e| e.key).collect();
    assert_eq!(keys, vec![Vec::new(), b"b".to_vec()]);
    let rev = ScanOptions { reverse: true, values: false, ..ScanOptions::default() };
    let entries = client.scan(rev, 10).collect().await.expect("scan");
    assert_eq!(entries[0].key, b"b");
    assert!(entries.iter().all(|e| e.value.is_empty()));

    let mut watch = client.watch(KeyRange::prefix("w/")).await.expect("watch");
    node.db().put("w/1", "x").expect("local write");
    node.db().put("other", "y").expect("local write");
    client.delete("w/1").await.expect("delete");
    let ev = watch.recv().await.expect("event");
    assert_eq!(ev, WatchEvent::Change { key: b"w/1".to_vec(), value: Some(b"x".to_vec()) });
    let ev = watch.recv().await.expect("event");
    assert_eq!(ev, WatchEvent::Change { key: b"w/1".to_vec(), value: None });

    let status = client.status().await.expect("status");
    assert_eq!(status.node_id, node.db().node_id());
    assert_eq!(status.keys, 3, "the empty key, b and other");
    assert_eq!(status.listen, Some(addr.to_string()));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_are_bad_requests_and_a_down_node_is_connection_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options { max_value_len: 10, ..Options::default() }).expect("open");
    let node = start(db).await;
    let addr = node.local_addr().expect("bound");
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let err = client.put("k", vec![0u8; 11]).await.expect_err("too large");
    assert_eq!(err.code, ErrorCode::BadRequest);
    client.put("k", "fine").await.expect("the connection keeps working");
    node.shutdown().await;
    let err = Client::connect(addr, ClientOptions::default()).await.err().expect("node is down");
    assert_eq!(err.code, ErrorCode::ConnectionLost);
}
