//! A retrying client whose node comes back refusing it for good (here:
//! the address now serves another cluster) fails its requests at once with
//! the refusal, instead of redialing until each request times out. A write
//! already sent to the node before may have been applied: it fails as lost.

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig};
use meshkv::protocol::{ErrorCode, LinkConfig};
use meshkv::{Db, Options};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_now_refuses_the_client_fails_its_requests_at_once() {
    let (d1, d2) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let cfg = NodeConfig { listen: common::loopback(), ..NodeConfig::default() };
    let cfg = NodeConfig { link: LinkConfig { cluster: "first".into(), ..cfg.link.clone() }, ..cfg };
    let node = Node::start(Db::open(d1.path(), Options::default()).expect("open"), cfg.clone()).await.expect("start");
    let addr = node.local_addr().expect("bound");
    let options = ClientOptions {
        cluster: "first".into(),
        // Long enough that a request failing by its timeout fails the test's bound below.
        request_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    let client = Client::connect(addr, options).await.expect("connect");
    client.put("k", "v").await.expect("put");
    node.shutdown().await;

    // The address now serves another cluster.
    let link = LinkConfig { cluster: "second".into(), ..cfg.link.clone() };
    let other = NodeConfig { listen: Some(addr), link, ..cfg };
    let _node = Node::start(Db::open(d2.path(), Options::default()).expect("open"), other).await.expect("restart");
    let put =
        tokio::time::timeout(Duration::from_secs(30), client.put("k", "w")).await.expect("fails before its timeout");
    let e = put.expect_err("refused");
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
    assert!(e.message.contains("another cluster"), "{e}");
    let get = tokio::time::timeout(Duration::from_secs(30), client.get("k")).await.expect("fails before its timeout");
    assert_eq!(get.expect_err("refused").code, ErrorCode::Unauthorized);
}
