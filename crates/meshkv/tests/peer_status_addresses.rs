//! Two nodes that each name the other as a peer dial each other; one link
//! survives, and both show the other where it accepts connections — the
//! address they dial — never at the ephemeral port of the inbound
//! connection the link may be, and never twice.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig, PeerState};
use meshkv::protocol::Mode;
use meshkv::{Db, Options};
use std::net::SocketAddr;

async fn start(dir: &tempfile::TempDir) -> Node {
    let db = Db::open(dir.path(), Options::default()).expect("open");
    Node::start(db, NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start")
}

/// `node`'s only peer is `other`, live, at `addr`.
fn shows(node: &Node, other: &Node, addr: SocketAddr) -> bool {
    let peers = node.peers();
    peers.len() == 1
        && peers[0].node_id == Some(other.db().node_id())
        && peers[0].state == PeerState::Live
        && peers[0].addr == addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_dial_each_other_show_each_other_at_their_listen_address() {
    let (da, db) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let mut a = start(&da).await;
    let mut b = start(&db).await;
    let (a_addr, b_addr) = (a.local_addr().expect("bound"), b.local_addr().expect("bound"));
    a.add_peer(b_addr, Mode::Sync);
    b.add_peer(a_addr, Mode::Sync);
    eventually("one live link, each side showing the other's listen address", || {
        shows(&a, &b, b_addr) && shows(&b, &a, a_addr)
    })
    .await;
    a.db().put("k", "v").expect("put");
    eventually("the link carries writes", || b.db().get("k").expect("get").is_some()).await;
    assert!(shows(&a, &b, b_addr) && shows(&b, &a, a_addr), "A: {:?}\nB: {:?}", a.peers(), b.peers());
    a.shutdown().await;
    b.shutdown().await;
}
