//! Silent connections are closed by the node's timeouts: one that never
//! finishes its handshake, and an authenticated client that goes quiet.
//! A real client stays connected through long pauses by its keepalive.

mod common;

use common::{loopback, Proxy};
use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig};
use meshkv::protocol::{codec, LinkConfig, Message, Request};
use meshkv::secure::{Secret, Security};
use meshkv::{Db, KeyRange, Options};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT_MS: u64 = 400;

async fn node(security: &Security) -> (tempfile::TempDir, Node) {
    node_with(security, TIMEOUT_MS).await
}

async fn node_with(security: &Security, timeout_ms: u64) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let link = LinkConfig { handshake_timeout_ms: timeout_ms, idle_timeout_ms: timeout_ms, ..LinkConfig::default() };
    let cfg = NodeConfig { listen: loopback(), link, security: security.clone(), ..NodeConfig::default() };
    (dir, Node::start(db, cfg).await.expect("start"))
}

/// Reads until the node closes the connection; fails if it stays open
/// far longer than the timeout.
async fn closed_by_node(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(TIMEOUT_MS * 10), wait)
        .await
        .expect("the node kept a silent connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_handshakes_is_closed() {
    let (_d, node) = node(&Security::with_secret(Secret::generate())).await;
    let silent = TcpStream::connect(node.local_addr().expect("addr")).await.expect("connect");
    closed_by_node(silent).await;
    let mut partial = TcpStream::connect(node.local_addr().expect("addr")).await.expect("connect");
    partial.write_all(b"MKV1").await.expect("write");
    closed_by_node(partial).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_client_that_goes_quiet_is_closed() {
    let security = Security::with_secret(Secret::generate());
    let (_d, node) = node(&security).await;
    let (mut s, mut sealer) = common::raw_handshake(node.local_addr().expect("addr"), &security).await;
    // Hello, then a watch on everything, then silence while the node is busy:
    // the node's own watch events must not count as the client's activity.
    let (mut frame, mut wire) = (Vec::new(), Vec::new());
    codec::encode(&common::client_hello(), &mut frame);
    let watch = Request::Watch { range: KeyRange::all() };
    codec::encode(&Message::Request { id: 1, request: watch }, &mut frame);
    sealer.seal(&frame, &mut wire).expect("seal");
    s.write_all(&wire).await.expect("hello");
    let db = node.db().clone();
    let writer = tokio::spawn(async move {
        for i in 0..400u32 {
            db.put(format!("busy/{i}"), "x").expect("put");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    closed_by_node(s).await;
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_its_connection_through_pauses() {
    let secret = Secret::generate();
    // A wide margin between the pings and the idle timeout: a stalled
    // test process must not look like a silent client.
    let timeout_ms = 2_000;
    let (_d, node) = node_with(&Security::with_secret(secret.clone()), timeout_ms).await;
    let proxy = Proxy::start(node.local_addr().expect("addr")).await;
    let options = ClientOptions {
        secret: Some(secret),
        keepalive: Duration::from_millis(100),
        retry: false,
        ..ClientOptions::default()
    };
    let client = Client::connect(proxy.addr(), options).await.expect("connect");
    for round in 0..2 {
        client.put(format!("k{round}"), "v").await.expect("put after a pause");
        // Longer than the idle timeout: only the pings keep it open.
        tokio::time::sleep(Duration::from_millis(timeout_ms + 500)).await;
    }
    assert_eq!(proxy.accepted(), 1, "the client had to reconnect");
}
