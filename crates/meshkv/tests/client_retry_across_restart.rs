//! A write whose reply was lost must not be applied a second time when the
//! retrying client reconnects to the node restarted on the same directory
//! (which remembers no reply): the node's `Hello` names its incarnation,
//! and the client fails the write with connection-lost instead of
//! re-sending it. A read in flight is re-sent, and a write the client had
//! not sent yet is sent, as after any reconnect.

mod common;
use common::Proxy;

use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig, ServerOptions};
use meshkv::protocol::{BatchOp, ErrorCode};
use meshkv::{Db, Options};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_re_sent_to_a_restarted_node_is_not_applied_twice() {
    let dir = tempfile::tempdir().expect("dir");
    // The hook holds the first write until the test has begun the shutdown.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((entered_tx, release_rx))));
    let hook = {
        let gate = Arc::clone(&gate);
        Arc::new(move |_: &[BatchOp]| {
            if let Some((entered, release)) = gate.lock().expect("gate").take() {
                let _ = entered.send(());
                let _ = release.recv_timeout(Duration::from_secs(20));
            }
            Ok(())
        })
    };
    let server = ServerOptions { hook: Some(hook), ..ServerOptions::default() };
    let cfg = NodeConfig { listen: common::loopback(), server, ..NodeConfig::default() };
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let node = Node::start(db.clone(), cfg.clone()).await.expect("start");
    let addr = node.local_addr().expect("bound");
    let proxy = Proxy::start(addr).await;
    let client = Client::connect(proxy.addr(), ClientOptions::default()).await.expect("connect");

    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put("k", "v").await }
    });
    tokio::time::timeout(Duration::from_secs(20), entered_rx).await.expect("the write reaches the hook").expect("hook");
    // A read sent behind the held write: answered after it, so lost with it.
    let get = tokio::spawn({
        let client = client.clone();
        async move { client.get("k").await }
    });
    // The node applies the write once released; its reply is lost, and by
    // then the node stops listening: the client redials in vain.
    proxy.cut_on_next_reply();
    let stopping = tokio::spawn(node.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    release_tx.send(()).expect("release the hook");
    tokio::time::timeout(Duration::from_secs(20), stopping).await.expect("shutdown ends").expect("shutdown");
    // The node may be gone before the proxy has read (and dropped) the reply.
    common::eventually("the reply is lost", || proxy.dropped() == 1).await;
    let own = db.version_vector().get(db.node_id());
    assert_eq!(own, 1, "the write was applied before the restart");
    drop(db);
    // A write asked for while the node is down is not sent before it is back.
    let later = tokio::spawn({
        let client = client.clone();
        async move { client.put("later", "w").await }
    });

    // The node comes back on the same directory and address.
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    let node = Node::start(db.clone(), NodeConfig { listen: Some(addr), ..cfg }).await.expect("restart");
    let outcome = within(put).await;
    let own = db.version_vector().get(db.node_id());
    match outcome {
        Ok(dot) => {
            panic!("the put succeeded (dot {dot:?}) though its reply was lost: applied again (own seq now {own})")
        }
        Err(e) => assert_eq!(e.code, ErrorCode::ConnectionLost, "{e}"),
    }
    assert_eq!(within(get).await.expect("the read is re-sent"), Some(b"v".to_vec()));
    let dot = within(later).await.expect("the write not sent before is sent").expect("a dot");
    assert_eq!(dot.seq, 2, "{dot:?}");
    assert_eq!(db.local_write_count(), 1, "since the restart, only the later put was applied");
    let own = db.version_vector().get(db.node_id());
    assert_eq!(own, 2, "the first put applied once, the later one once");
    node.shutdown().await;
}

async fn within<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), task).await.expect("the call ends").expect("task")
}
