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
    start_with(dir, NodeConfig { listen: loopback(), peer_exchange, ..NodeConfig::default() }).await
}

async fn start_with(dir: &tempfile::TempDir, cfg: NodeConfig) -> Node {
    let db = Db::open(dir.path(), Options::default()).expect("open");
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
    // A and C dialed B: B shows where they listen, not their connections' ports.
    let listeners = BTreeSet::from([a.local_addr().expect("bound"), c.local_addr().expect("bound")]);
    eventually("B shows its peers' listen addresses", || {
        b.peers().into_iter().map(|p| p.addr).collect::<BTreeSet<_>>() == listeners
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
    codec::encode(&Message::Peers { listen: None, known }, &mut frames);
    peer.send(&frames).await;

    eventually("N links to D, which it learned from the raw peer", || linked(&d).contains(&id(&n))).await;
    // N now shares D with the raw peer (and never the raw peer itself).
    let shared = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match peer.recv().await.expect("the node closed the link") {
                Message::Peers { listen, known } if known.contains(&d_addr) => return (listen, known),
                _ => {}
            }
        }
    })
    .await
    .expect("N shares its peers");
    assert_eq!(shared, (Some(n_addr), vec![d_addr]));
    let dialed: BTreeSet<SocketAddr> = n.peers().into_iter().map(|p| p.addr).collect();
    assert!(!dialed.contains(&n_addr), "N never dials itself");
    assert!(bogus.iter().all(|a| !dialed.contains(a)), "bogus addresses are not dialed: {dialed:?}");

    // A list over the limit is a protocol error; N goes on serving D.
    let too_many = (0..=MAX_SHARED_PEERS as u16).map(|p| SocketAddr::from(([127, 0, 0, 1], 20_000 + p))).collect();
    let mut frames = Vec::new();
    codec::encode(&Message::Peers { listen: None, known: too_many }, &mut frames);
    peer.send(&frames).await;
    assert_eq!(peer.close_reason().await, Some(CloseReason::ProtocolError));
    n.db().put("after", "x").expect("put");
    eventually("N still replicates to D", || d.db().get("after").expect("get").is_some()).await;
    n.shutdown().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_peer_is_learned_again_when_it_comes_back() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let quick = NodeConfig {
        listen: loopback(),
        peer_exchange: true,
        forget_learned_after: Duration::from_millis(500),
        ..NodeConfig::default()
    };
    // C neither shares nor learns: only A's dial, from what B shares, links them.
    let c_cfg = |listen| NodeConfig { listen, ..NodeConfig::default() };
    let c = start_with(&dirs[2], c_cfg(loopback())).await;
    let c_addr = c.local_addr().expect("bound");
    let b = start_with(&dirs[1], NodeConfig { peers: vec![(c_addr, Mode::Sync)], ..quick.clone() }).await;
    let mut a = start_with(&dirs[0], quick.clone()).await;
    a.add_peer(b.local_addr().expect("bound"), Mode::Sync);
    let c_id = id(&c);
    eventually("A learned C from B and linked to it", || {
        linked(&a).contains(&c_id) && a.peers().iter().any(|p| p.addr == c_addr)
    })
    .await;

    // C goes away for longer than A keeps a learned peer.
    c.shutdown().await;
    eventually("A forgot C's address", || !a.peers().iter().any(|p| p.addr == c_addr)).await;

    // Back at the same address, B's dial reaches C again; B tells A, which dials C.
    let c = start_with(&dirs[2], c_cfg(Some(c_addr))).await;
    eventually("A and C linked again", || linked(&a).contains(&c_id) && linked(&c).contains(&id(&a))).await;
    a.db().put("k", "v").expect("put");
    eventually("A's write on C", || c.db().get("k").expect("get").is_some()).await;
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_lists_are_sent_again_while_nothing_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = NodeConfig {
        listen: loopback(),
        peer_exchange: true,
        forget_learned_after: Duration::from_millis(400),
        ..NodeConfig::default()
    };
    let n = start_with(&dir, cfg).await;
    let mut peer = RawPeer::connect(n.local_addr().expect("bound")).await;
    peer.digest().await;
    // Once when the link is up, then again although no link changed: a peer
    // that forgot an address learns it again.
    let lists = tokio::time::timeout(Duration::from_secs(10), async {
        let mut lists = 0;
        while lists < 2 {
            if let Message::Peers { .. } = peer.recv().await.expect("the node closed the link") {
                lists += 1;
            }
        }
    })
    .await;
    assert!(lists.is_ok(), "no second peer list");
    n.shutdown().await;
}
