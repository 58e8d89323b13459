//! A client that sends requests and never reads the replies leaves its
//! session blocked writing to it. Shutting the node down must not wait for
//! that client: before, `Node::shutdown` waited out its 5 s bound for the
//! session, then aborted it.

mod common;

use meshkv::protocol::{codec, Message, Request};
use meshkv::{Db, Options};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_client_that_does_not_read() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    db.put("big", vec![7u8; 1 << 20]).expect("put");
    let node = common::start(db.clone()).await;
    let addr = node.local_addr().expect("bound");

    // 64 requests for 1 MiB each: far more than the sockets buffer.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut out = b"MKV1\x00".to_vec();
    codec::encode(&common::client_hello(), &mut out);
    for id in 1..=64 {
        codec::encode(&Message::Request { id, request: Request::Get { key: b"big".to_vec() } }, &mut out);
    }
    raw.write_all(&out).await.expect("send");
    // Replies flow; then the session is stuck once the sockets are full.
    let mut first = [0u8; 4096];
    raw.read_exact(&mut first).await.expect("the node answers");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    node.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    drop(db);
    // Nothing of the node holds the store any more.
    Db::open(dir.path(), Options::default()).expect("reopen after shutdown");
    drop(raw);
}
