//! Per-client limits answer with `BadRequest` and leave the session and the
//! node serving: a `get_many` whose values would not fit one reply frame,
//! more watches than allowed, a request larger than the node's frame
//! limit (refused by the client, which learned the limit at the handshake),
//! a value larger than the client's own frame limit, and more keys or
//! operations in one request than `MAX_REQUEST_ITEMS` (each costs the node
//! far more memory decoded than its bytes on the wire).

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig, ServerOptions};
use meshkv::protocol::ErrorCode;
use meshkv::{Db, KeyRange, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_replies_and_extra_watches_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    db.put("big", vec![7u8; 1 << 20]).expect("put");
    let server = ServerOptions { max_watches: 2, ..ServerOptions::default() };
    let cfg = NodeConfig { listen: common::loopback(), max_frame: 4 << 20, server, ..NodeConfig::default() };
    let node = Node::start(db, cfg).await.expect("start");
    let options = ClientOptions { max_frame: 4 << 20, retry: false, ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("addr"), options).await.expect("connect");

    // Three copies fit in 4 MiB; a thousand would be a 1 GiB reply.
    assert_eq!(client.get_many(vec![b"big".to_vec(); 3]).await.expect("fits").len(), 3);
    let e = client.get_many(vec![b"big".to_vec(); 1000]).await.expect_err("a 1 GiB reply was built");
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");

    let _w1 = client.watch(KeyRange::all()).await.expect("watch 1");
    let _w2 = client.watch(KeyRange::all()).await.expect("watch 2");
    let e = client.watch(KeyRange::all()).await.expect_err("a third watch");
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");

    // The session still serves.
    client.put("k", "v").await.expect("put after refusals");
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_nodes_frame_limit_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let cfg = NodeConfig { listen: common::loopback(), max_frame: 64 << 10, ..NodeConfig::default() };
    let node = Node::start(db, cfg).await.expect("start");
    // The client's own limit is the default, far above the node's.
    let client = Client::connect(node.local_addr().expect("addr"), ClientOptions::default()).await.expect("connect");
    assert_eq!(client.max_request_bytes(), 64 << 10);
    let started = std::time::Instant::now();
    let e = client.put("big", vec![1u8; 100 << 10]).await.expect_err("over the node's frame limit");
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    // Re-sending into dropped connections took the 30 s request timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused at once, not after re-sends");
    // The connection was never dropped: the next request just works.
    client.put("small", vec![1u8; 1 << 10]).await.expect("a request within the limit");
    assert_eq!(node.db().get("small").expect("get").map(|v| v.len()), Some(1 << 10));
    assert_eq!(node.db().get("big").expect("get"), None);
    node.shutdown().await;
}

/// A node allowing larger frames than its client holds a value the client
/// cannot read: `get` and `scan` answer `BadRequest` (the node used to send
/// the frame, the client dropped the connection and re-sent the request
/// until it timed out), a watch reports the change as missed, and the
/// session goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_beyond_the_clients_frame_limit_are_refused_not_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let cfg = NodeConfig { listen: common::loopback(), max_frame: 8 << 20, ..NodeConfig::default() };
    let node = Node::start(db.clone(), cfg).await.expect("start");
    let options = ClientOptions { max_frame: 1 << 20, ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("addr"), options).await.expect("connect");
    let mut watch = client.watch(KeyRange::prefix("big")).await.expect("watch");

    db.put("big", vec![7u8; 2 << 20]).expect("put");
    let started = std::time::Instant::now();
    let e = client.get("big").await.expect_err("a 2 MiB value to a client reading 1 MiB frames");
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused only after {:?}", started.elapsed());
    let mut scan = client.scan(meshkv::ScanOptions::default(), 100);
    let e = scan.next().await.expect("an answer").expect_err("a scan over the value");
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), watch.recv()).await.expect("an event");
    assert_eq!(event, Some(meshkv::client::WatchEvent::Lagged));

    db.put("big-small", "v").expect("put");
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), watch.recv()).await.expect("an event");
    assert_eq!(
        event,
        Some(meshkv::client::WatchEvent::Change { key: b"big-small".to_vec(), value: Some(b"v".to_vec()) })
    );
    assert_eq!(client.get("big-small").await.expect("get").as_deref(), Some(&b"v"[..]));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_items_than_a_request_may_carry_are_refused() {
    use meshkv::protocol::{codec, BatchOp, Message, Request, MAX_REQUEST_ITEMS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let node = common::start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let addr = node.local_addr().expect("addr");
    let client =
        Client::connect(addr, ClientOptions { retry: false, ..ClientOptions::default() }).await.expect("connect");

    let e = client.get_many(vec![Vec::new(); MAX_REQUEST_ITEMS + 1]).await.expect_err("too many keys");
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    let ops = vec![BatchOp::Delete { key: b"k".to_vec() }; MAX_REQUEST_ITEMS + 1];
    let e = client.batch(ops).await.expect_err("too many operations");
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert_eq!(
        client.get_many(vec![Vec::new(); MAX_REQUEST_ITEMS]).await.expect("at the limit").len(),
        MAX_REQUEST_ITEMS
    );

    // A client that sends such a request anyway (a few bytes per empty
    // key, far more once decoded) is closed before it is decoded whole.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let keys = vec![serde_bytes::ByteBuf::new(); 1 << 20];
    let mut out = b"MKV1\x00".to_vec();
    codec::encode(&common::client_hello(), &mut out);
    codec::encode(&Message::Request { id: 1, request: Request::GetMany { keys } }, &mut out);
    raw.write_all(&out).await.expect("send");
    let mut sink = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), raw.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the node kept the connection open");
    client.put("k", "v").await.expect("the node still serves");
    node.shutdown().await;
}

/// A client reading frames smaller than the node's scan chunks (1 MiB) gets
/// chunks that fit them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_chunks_fit_a_clients_smaller_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    for i in 0..100u32 {
        db.put(i.to_be_bytes(), vec![b'v'; 20 << 10]).expect("put");
    }
    let node = common::start(db).await;
    let options = ClientOptions { max_frame: 256 << 10, retry: false, ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("addr"), options).await.expect("connect");
    assert_eq!(scan_all(&client, 1000).await, 100);
    node.shutdown().await;
}

/// A client reading frames far smaller than the default still reads: the
/// room kept for a reply's encoding shrinks with the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_small_frames_still_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    for i in 0..500u32 {
        db.put(i.to_be_bytes(), vec![b'v'; 100]).expect("put");
    }
    let node = common::start(db).await;
    let options = ClientOptions { max_frame: 32 << 10, retry: false, ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("addr"), options).await.expect("connect");
    assert_eq!(client.get(0u32.to_be_bytes()).await.expect("get"), Some(vec![b'v'; 100]));
    assert_eq!(scan_all(&client, 10_000).await, 500);
    node.shutdown().await;
}

/// Scans the whole store in chunks of `chunk`; the entries seen.
async fn scan_all(client: &Client, chunk: u32) -> usize {
    let mut scan = client.scan(meshkv::ScanOptions::default(), chunk);
    let mut seen = 0;
    while let Some(entry) = scan.next().await {
        entry.expect("an entry");
        seen += 1;
    }
    seen
}
