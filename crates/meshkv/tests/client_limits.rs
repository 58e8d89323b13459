//! Per-client limits answer with `BadRequest` and leave the session and the
//! node serving: a `get_many` whose values would not fit one reply frame,
//! and more watches than allowed.

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
