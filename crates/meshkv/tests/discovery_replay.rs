//! A recorded announcement of a node that listens on every interface,
//! replayed from another source before the genuine copy arrives, must not
//! make the receiver drop the genuine copy: the node is still found.

mod common;
use common::loopback;

use meshkv::node::{Discovery, Node, NodeConfig, PeerState};
use meshkv::protocol::announce::Announcement;
use meshkv::secure::{Secret, Security};
use meshkv::{Db, Options};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_another_source_does_not_shadow_the_genuine_announcement() {
    let secret = Secret::generate();
    let (da, dd) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    // Announcements go nowhere; the test sends them by hand.
    let discovery = Discovery {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        announce_to: vec![],
        interval: Duration::from_secs(3600),
    };
    let start = |dir: &tempfile::TempDir, discovery: Option<Discovery>| {
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let security = Security::with_secret(secret.clone());
        Node::start(db, NodeConfig { listen: loopback(), security, discovery, ..NodeConfig::default() })
    };
    let a = start(&da, Some(discovery)).await.expect("start");
    let d = start(&dd, None).await.expect("start");
    let to = a.discovery_addr().expect("bound");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    // D listens on 127.0.0.1 and announces "every interface": dialed at the source.
    let port = d.local_addr().expect("bound").port();
    let datagram = Announcement::new("meshkv", d.db().node_id(), SocketAddr::from(([0, 0, 0, 0], port)), now_ms)
        .seal(&secret)
        .expect("fits");

    let replayer = tokio::net::UdpSocket::bind("127.0.0.2:0").await.expect("udp on 127.0.0.2");
    replayer.send_to(&datagram, to).await.expect("send");
    let d_id = d.db().node_id();
    let replay_seen = || a.peers().iter().any(|p| p.addr.ip() == replayer.local_addr().expect("bound").ip());
    common::eventually("A dials where the replay came from", replay_seen).await;
    let genuine = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    genuine.send_to(&datagram, to).await.expect("send");
    common::eventually("A links with D", || {
        a.peers().iter().any(|p| p.node_id == Some(d_id) && p.state != PeerState::Connecting)
    })
    .await;
    a.shutdown().await;
    d.shutdown().await;
}
