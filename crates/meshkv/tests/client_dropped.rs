//! Dropping every clone of a `Client` ends its connection task, also while
//! the node is unreachable and the client (retry on) is redialing it: the
//! task must not redial for ever, nor take and keep a connection slot once
//! the node is back.

mod common;
use common::{eventually, start, Proxy};

use meshkv::client::{Client, ClientOptions};
use meshkv::{Db, KeyRange, Options};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_while_its_node_is_down_stops_redialing() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let proxy = Proxy::start(node.local_addr().expect("bound")).await;
    let opts = ClientOptions { reconnect_min: Duration::from_millis(10), ..ClientOptions::default() };
    let client = Client::connect(proxy.addr(), opts).await.expect("connect");
    // The watch's channel is the client's: it ends when the connection task does.
    let mut watch = client.watch(KeyRange::all()).await.expect("watch");
    node.shutdown().await;
    // The proxy accepts and, unable to reach the node, closes: each redial shows.
    let before = proxy.accepted();
    eventually("the client to redial the node that is down", || proxy.accepted() >= before + 2).await;
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        // `None`: the connection task is gone (a `Lagged` may come first).
        while watch.recv().await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "15 s after the last Client was dropped its connection task still runs: {} dials so far",
        proxy.accepted()
    );
}
