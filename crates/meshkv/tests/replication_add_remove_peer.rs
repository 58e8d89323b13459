//! Peers added and removed at run time: removing a peer closes its link and
//! stops the flow; adding it back resumes it and catches up what was missed.

mod common;
use common::eventually;

use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::Mode;
use meshkv::{Db, Options};
use std::net::SocketAddr;
use std::time::Duration;

async fn start(dir: &tempfile::TempDir) -> Node {
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let cfg = NodeConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))), ..NodeConfig::default() };
    Node::start(db, cfg).await.expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_then_add_a_peer() {
    let (da, dbb) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let mut a = start(&da).await;
    let b = start(&dbb).await;
    let b_addr = b.local_addr().expect("bound");
    let mut a_events = a.events();
    a.add_peer(b_addr, Mode::Sync);
    a.db().put("one", "1").expect("put");
    eventually("first write replicated", || b.db().get("one").expect("get").is_some()).await;

    a.remove_peer(b_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, a_events.recv()).await.expect("disconnect event").expect("event");
        if matches!(ev, NodeEvent::Disconnected { peer, .. } if peer == b.db().node_id()) {
            break;
        }
    }
    eventually("no links left", || a.peers().iter().all(|p| p.node_id.is_none())).await;
    a.db().put("two", "2").expect("put");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.db().get("two").expect("get"), None, "a removed peer receives nothing");

    a.add_peer(b_addr, Mode::Sync);
    eventually("catch-up after re-adding", || b.db().get("two").expect("get").is_some()).await;
    a.shutdown().await;
    b.shutdown().await;
}
