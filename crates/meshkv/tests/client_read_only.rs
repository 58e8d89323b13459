//! A read-only listener: reads are served, every write is refused with
//! `ErrorCode::ReadOnly`, and nothing reaches the store.

mod common;
use common::start_serving;

use meshkv::client::{Client, ClientOptions};
use meshkv::node::ServerOptions;
use meshkv::protocol::{BatchOp, ErrorCode};
use meshkv::{Db, KeyRange, Options, ScanOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_listener_serves_reads_and_refuses_every_write() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    db.put("a", "1").expect("local write");
    db.put("b", "2").expect("local write");
    let node = start_serving(db, ServerOptions { read_only: true, ..ServerOptions::default() }).await;
    let addr = node.local_addr().expect("bound");
    let vv_before = node.db().version_vector();
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");

    // Reads work.
    assert_eq!(client.get("a").await.expect("get"), Some(b"1".to_vec()));
    assert_eq!(client.get("missing").await.expect("get"), None);
    let many = client.get_many(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]).await.expect("get many");
    assert_eq!(many, vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None]);
    let keys: Vec<Vec<u8>> =
        client.scan(ScanOptions::default(), 1).collect().await.expect("scan").into_iter().map(|e| e.key).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(client.status().await.expect("status").keys, 2);
    let _watch = client.watch(KeyRange::all()).await.expect("watching is a read");

    // Every kind of write is refused with ReadOnly.
    let err = client.put("c", "3").await.expect_err("put on a read-only listener");
    assert_eq!(err.code, ErrorCode::ReadOnly, "put: {err}");
    let err = client.put("a", "overwritten").await.expect_err("overwrite on a read-only listener");
    assert_eq!(err.code, ErrorCode::ReadOnly, "overwrite: {err}");
    let err = client.delete("a").await.expect_err("delete on a read-only listener");
    assert_eq!(err.code, ErrorCode::ReadOnly, "delete: {err}");
    let err = client
        .batch(vec![BatchOp::Put { key: b"d".to_vec(), value: b"4".to_vec() }, BatchOp::Delete { key: b"b".to_vec() }])
        .await
        .expect_err("batch on a read-only listener");
    assert_eq!(err.code, ErrorCode::ReadOnly, "batch: {err}");
    let err = client.batch(Vec::new()).await.expect_err("even an empty batch is a write");
    assert_eq!(err.code, ErrorCode::ReadOnly, "empty batch: {err}");

    // Nothing was written: same data, same version vector.
    let db = node.db();
    assert_eq!(db.get("a").expect("local"), Some(b"1".to_vec()));
    assert_eq!(db.get("b").expect("local"), Some(b"2".to_vec()));
    assert_eq!(db.get("c").expect("local"), None);
    assert_eq!(db.get("d").expect("local"), None);
    assert_eq!(db.version_vector(), vv_before, "no write was applied");

    // The connection keeps serving reads after the refusals.
    assert_eq!(client.get("b").await.expect("get after refusals"), Some(b"2".to_vec()));
    let all = client.scan(ScanOptions::default(), 10).collect().await.expect("scan after refusals");
    assert_eq!(all.len(), 2);
    // Local writes on the node itself are not affected by the listener's mode,
    // and remote readers see them.
    db.put("local", "yes").expect("local write");
    assert_eq!(client.get("local").await.expect("get"), Some(b"yes".to_vec()));

    drop(client);
    node.shutdown().await;
}
