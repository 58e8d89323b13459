//! Peer exchange (SPEC §4): with it on, nodes configured as a chain learn
//! where the far end listens and link to it directly; addresses a peer
//! shares are filtered (never this node, never a non-address) and a list
//! over the limit closes the link. With it off, the default, a chain stays
//! a chain (`tests/replication_chain.rs`).

mod common;
use common::{eventually, loopback, RawPeer};

use meshkv::node::{Node, NodeConfig};
use meshkv::protocol::{codec, CloseReason, Message, Mode, MAX_SHARED_PEERS};
use meshkv::{Db, NodeId, Options};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

async fn start(dir: &tempfile::TempDir, peer_exchange: bool) -> Node {
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let cfg = NodeConfig { listen: loopback(), peer_exchange, ..NodeConfig::default() };
    Node::start(db, cfg).await.expect("start")
}

/// Node ids of the peers `n` has a live link to.
fn linked(n: &Node) -> BTreeSet<NodeId> {
    n.peers().into_iter().filter(|p| p.state != meshkv::node::PeerState::Connecting).filter_map(|p| p.node_id).collect()
}

fn id(n: &Node) -> NodeId {
    n.db().node_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_with_peer_exchange_becomes_a_mesh() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(start(d, true).await);
    }
    let b_addr = nodes[1].local_addr().expect("bound");
    nodes[0].add_peer(b_addr, Mode::Sync);
    nodes[2].add_peer(b_addr, Mode::Sync);
    let mut nodes = nodes.into_iter();
    let (a, b, c) = (nodes.next().expect("a"), nodes.next().expect("b"), nodes.next().expect("c"));

    eventually("A and C linked directly, both still linked to B", || {
        linked(&a) == BTreeSet::from([id(&b), id(&c)]) && linked(&c) == BTreeSet::from([id(&a), id(&b)])
    })
    .await;

    // Without B, writes still flow between A and C: over their own link.
    b.shutdown().await;
    a.db().put("from-a", "1").expect("put");
    c.db().put("from-c", "2").expect("put");
    eventually("writes exchanged without B", || {
        c.db().get("from-a").expect("get").is_some() && a.db().get("from-c").expect("get").is_some()
    })
    .await;
    assert!(!a.peers().iter().any(|p| Some(p.addr) == a.local_addr()), "A never dials itself");
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_addresses_are_filtered_and_bounded() {
    let (dn, dd) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let n = start(&dn, true).await;
    let d = start(&dd, false).await;
    let (n_addr, d_addr) = (n.local_addr().expect("bound"), d.local_addr().expect("bound"));

    let mut peer = RawPeer::connect(n_addr).await;
    peer.digest().await;
    let bogus: Vec<SocketAddr> =
        ["0.0.0.0:7420", "127.0.0.1:0", "224.0.0.1:7420"].iter().map(|a| a.parse().expect("address")).collect();
    let mut known = vec![n_addr, d_addr];
    known.extend(&bogus);
    let mut frames = Vec::new();
    codec::encode(&Message::Peers { listen_port: None, known }, &mut frames);
    peer.send(&frames).await;

    eventually("N links to D, which it learned from the raw peer", || linked(&d).contains(&id(&n))).await;
    // N now shares D with the raw peer (and never the raw peer itself).
    let shared = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match peer.recv().await.expect("the node closed the link") {
                Message::Peers { listen_port, known } if known.contains(&d_addr) => return (listen_port, known),
                _ => {}
            }
        }
    })
    .await
    .expect("N shares its peers");
    assert_eq!(shared, (Some(n_addr.port()), vec![d_addr]));
    let dialed: BTreeSet<SocketAddr> = n.peers().into_iter().map(|p| p.addr).collect();
    assert!(!dialed.contains(&n_addr), "N never dials itself");
    assert!(bogus.iter().all(|a| !dialed.contains(a)), "bogus addresses are not dialed: {dialed:?}");

    // A list over the limit is a protocol error; N goes on serving D.
    let too_many = (0..=MAX_SHARED_PEERS as u16).map(|p| SocketAddr::from(([127, 0, 0, 1], 20_000 + p))).collect();
    let mut frames = Vec::new();
    codec::encode(&Message::Peers { listen_port: None, known: too_many }, &mut frames);
    peer.send(&frames).await;
    assert_eq!(peer.close_reason().await, Some(CloseReason::ProtocolError));
    n.db().put("after", "x").expect("put");
    eventually("N still replicates to D", || d.db().get("after").expect("get").is_some()).await;
    n.shutdown().await;
    d.shutdown().await;
}
