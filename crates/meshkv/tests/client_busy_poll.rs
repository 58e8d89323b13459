//! Busy-polling (`ServerOptions::busy_poll`, `ClientOptions::busy_poll`)
//! changes how the two sides wait, never what they exchange: sequential
//! and pipelined requests are answered exactly, watches keep streaming, and
//! a connection that ends while a side is polling ends at once.

mod common;
use common::{start_serving, Proxy};

use meshkv::client::{Client, ClientOptions, WatchEvent};
use meshkv::node::ServerOptions;
use meshkv::protocol::ErrorCode;
use meshkv::{Db, KeyRange, Options};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_micros(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sides_answer_sequential_and_pipelined_requests_exactly() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let node = start_serving(db, ServerOptions { busy_poll: POLL, ..ServerOptions::default() }).await;
    let addr = node.local_addr().expect("bound");
    // A plain client watches everything the polling one writes.
    let watcher = Client::connect(addr, ClientOptions::default()).await.expect("watcher");
    let mut events = watcher.watch(KeyRange::all()).await.expect("watch");
    let client =
        Client::connect(addr, ClientOptions { busy_poll: POLL, ..ClientOptions::default() }).await.expect("connect");

    for i in 0..300u32 {
        client.put(format!("seq/{i:04}"), format!("v{i}")).await.expect("put");
        assert_eq!(client.get(format!("seq/{i:04}")).await.expect("get"), Some(format!("v{i}").into_bytes()));
    }
    assert_eq!(client.get("seq/none").await.expect("get"), None);

    let tasks: Vec<_> = (0..64u32)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.put(format!("par/{i:02}"), format!("p{i}")).await.expect("pipelined put");
                c.get(format!("seq/{i:04}")).await.expect("pipelined get")
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.expect("task"), Some(format!("v{i}").into_bytes()), "pipelined get {i}");
    }
    for i in 0..64u32 {
        assert_eq!(node.db().get(format!("par/{i:02}")).expect("local"), Some(format!("p{i}").into_bytes()));
    }

    // The watch saw every write, in order for the sequential ones.
    let mut seen = Vec::new();
    while seen.len() < 300 + 64 {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(WatchEvent::Change { key, .. })) => seen.push(key),
            other => panic!("watch stopped after {} events: {other:?}", seen.len()),
        }
    }
    let sequential: Vec<Vec<u8>> = (0..300u32).map(|i| format!("seq/{i:04}").into_bytes()).collect();
    assert_eq!(&seen[..300], &sequential[..]);
}

// The client runs on a runtime of its own, as in a client process: its
// 30-second polling must not hold up the node or the proxy.
#[test]
fn a_connection_cut_while_the_client_polls_fails_at_once() {
    let node_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let (node, proxy) = node_rt.block_on(async {
        let node = start_serving(db, ServerOptions::default()).await;
        let proxy = Proxy::start(node.local_addr().expect("bound")).await;
        (node, proxy)
    });
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    // A budget far longer than the test: only seeing the end of the stream
    // can stop the client's polling in time.
    let options = ClientOptions { busy_poll: Duration::from_secs(30), retry: false, ..ClientOptions::default() };
    let client = client_rt.block_on(Client::connect(proxy.addr(), options)).expect("connect");
    // The node applies the put; its reply is dropped with the connection.
    proxy.cut_on_next_reply();
    let started = Instant::now();
    let err = client_rt.block_on(client.put("k", "v")).expect_err("the connection was cut");
    assert_eq!(err.code, ErrorCode::ConnectionLost, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(proxy.dropped(), 1);
    assert_eq!(node.db().get("k").expect("local"), Some(b"v".to_vec()));
    node_rt.block_on(node.shutdown());
}

// One thread for the node and a client whose budget (2 s) dwarfs a round
// trip: the node can only answer while the client yields, which it does
// every 0.5 ms however long its budget.
#[tokio::test(flavor = "current_thread")]
async fn a_long_budget_still_yields_to_a_node_on_the_same_thread() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let node = start_serving(db, ServerOptions { busy_poll: POLL, ..ServerOptions::default() }).await;
    let options = ClientOptions { busy_poll: Duration::from_secs(2), ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("bound"), options).await.expect("connect");
    let run = async {
        for i in 0..20u32 {
            client.put(format!("k{i}"), "v").await.expect("put");
            assert_eq!(client.get(format!("k{i}")).await.expect("get"), Some(b"v".to_vec()));
        }
    };
    // Without yielding, each request would wait out the 2 s budget.
    tokio::time::timeout(Duration::from_secs(15), run).await.expect("the polling client starved the node");
}
