//! LAN discovery (SPEC §4): a node dials the nodes of its cluster whose
//! announcements it receives, and ignores every announcement that is not
//! sealed with the cluster secret, is stale, names another cluster or
//! itself. Announcements go to unicast loopback addresses here: tests send
//! nothing beyond 127.0.0.1, so the multicast group itself is not exercised.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Discovery, Node, NodeConfig, NodeError};
use meshkv::protocol::announce::Announcement;
use meshkv::secure::{Secret, Security};
use meshkv::{Db, NodeId, Options};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Listens for announcements on an ephemeral loopback port; announces to `to`.
fn discovery(to: Vec<SocketAddr>) -> Option<Discovery> {
    let bind = SocketAddr::from(([127, 0, 0, 1], 0));
    Some(Discovery { bind, announce_to: to, interval: Duration::from_millis(100) })
}

async fn start(dir: &tempfile::TempDir, secret: &Secret, discovery: Option<Discovery>) -> Node {
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let security = Security::with_secret(secret.clone());
    Node::start(db, NodeConfig { listen: loopback(), security, discovery, ..NodeConfig::default() })
        .await
        .expect("start")
}

fn linked(a: &Node, b: &Node) -> bool {
    a.peers().iter().any(|p| p.node_id == Some(b.db().node_id()) && p.state != meshkv::node::PeerState::Connecting)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_links_to_the_nodes_it_hears_announce() {
    let secret = Secret::generate();
    let (da, db) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = start(&da, &secret, discovery(vec![])).await;
    let b = start(&db, &secret, discovery(vec![a.discovery_addr().expect("discovery bound")])).await;
    eventually("A dialed B after hearing it", || linked(&a, &b) && linked(&b, &a)).await;
    b.db().put("k", "from B").expect("put");
    eventually("B's write on A", || a.db().get("k").expect("get").is_some()).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_foreign_and_own_announcements_are_ignored() {
    let secret = Secret::generate();
    let (da, dd) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = start(&da, &secret, discovery(vec![])).await;
    // D never announces itself: only the datagrams below can lead A to it.
    let d = start(&dd, &secret, None).await;
    let (to, port) = (a.discovery_addr().expect("bound"), d.local_addr().expect("bound").port());
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    // An unspecified IP: A dials the address the datagram comes from.
    let listen = SocketAddr::from(([0, 0, 0, 0], port));
    let fresh = |cluster: &str, node: NodeId, sent_ms: u64| Announcement::new(cluster, node, listen, sent_ms);
    let ignored = [
        fresh("meshkv", NodeId::random(), now_ms()).seal(&Secret::generate()).expect("fits"),
        fresh("meshkv", NodeId::random(), now_ms() - 120_000).seal(&secret).expect("fits"),
        fresh("other", NodeId::random(), now_ms()).seal(&secret).expect("fits"),
        fresh("meshkv", a.db().node_id(), now_ms()).seal(&secret).expect("fits"),
        b"MKVA not an announcement at all".to_vec(),
        vec![0xa5; 2000],
    ];
    for datagram in &ignored {
        udp.send_to(datagram, to).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!linked(&a, &d) && !linked(&d, &a), "A dialed D from an announcement it should have ignored");
    assert!(a.peers().is_empty(), "nothing learned: {:?}", a.peers());

    // Authentic and fresh, naming D's address itself.
    let good = Announcement::new("meshkv", NodeId::random(), d.local_addr().expect("bound"), now_ms());
    udp.send_to(&good.seal(&secret).expect("fits"), to).await.expect("send");
    eventually("A dialed D after an authentic announcement", || linked(&a, &d)).await;
    a.shutdown().await;
    d.shutdown().await;
}

#[tokio::test]
async fn discovery_of_a_loopback_listener_to_the_network_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let security = Security::with_secret(Secret::generate());
    // Nothing is sent: the node refuses to start.
    let cfg =
        NodeConfig { listen: loopback(), security, discovery: Some(Discovery::default()), ..NodeConfig::default() };
    match Node::start(db, cfg).await {
        Err(NodeError::Config(msg)) => assert!(msg.contains("loopback"), "{msg}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a loopback listener was announced to the network"),
    }
}

#[tokio::test]
async fn discovery_without_a_secret_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let cfg = NodeConfig { listen: loopback(), discovery: discovery(vec![]), ..NodeConfig::default() };
    match Node::start(db, cfg).await {
        Err(NodeError::Config(msg)) => assert!(msg.contains("secret"), "{msg}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a node announced itself without a secret"),
    }
}
