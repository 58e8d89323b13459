//! SPEC §8, link modes over TCP: two nodes each write one entry, then connect.
//! - sync: both hold both entries;
//! - pull (dialer pulls): the puller gets both, the other keeps only its own;
//! - push (dialer pushes): the mirror image;
//! - the accepting side's `NodeConfig::accept_mode` is honoured the same way.
//!
//! The mode holds for the whole link, live writes after the catch-up included.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::Mode;
use meshkv::{Db, NodeId, Options};
use std::time::Duration;
use tokio::sync::broadcast;

/// Waits (20 s at most) for an event matching `pred`.
async fn wait_event(rx: &mut broadcast::Receiver<NodeEvent>, what: &str, pred: impl Fn(&NodeEvent) -> bool) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed waiting for: {what}"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "timed out waiting for event: {what}");
}

/// Every event received so far, without waiting.
fn drain(rx: &mut broadcast::Receiver<NodeEvent>) -> Vec<NodeEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(ev) => out.push(ev),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return out,
        }
    }
}

fn has(db: &Db, key: &str) -> bool {
    db.get(key).expect("get").is_some()
}

struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    dialer: Node,
    acceptor: Node,
    dialer_events: broadcast::Receiver<NodeEvent>,
    acceptor_events: broadcast::Receiver<NodeEvent>,
}

impl Pair {
    /// Two unconnected nodes; the dialer writes `d`, the acceptor writes `a`.
    async fn new(accept_mode: Mode) -> Pair {
        let dirs = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let db_d = Db::open(dirs.0.path(), Options::default()).expect("open");
        let db_a = Db::open(dirs.1.path(), Options::default()).expect("open");
        db_d.put("d", "from dialer").expect("put");
        db_a.put("a", "from acceptor").expect("put");
        let dialer =
            Node::start(db_d, NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start");
        let acceptor = Node::start(db_a, NodeConfig { listen: loopback(), accept_mode, ..NodeConfig::default() })
            .await
            .expect("start");
        let dialer_events = dialer.events();
        let acceptor_events = acceptor.events();
        Pair { _dirs: dirs, dialer, acceptor, dialer_events, acceptor_events }
    }

    fn connect(&mut self, mode: Mode) {
        let addr = self.acceptor.local_addr().expect("bound");
        self.dialer.add_peer(addr, mode);
    }

    fn ids(&self) -> (NodeId, NodeId) {
        (self.dialer.db().node_id(), self.acceptor.db().node_id())
    }

    async fn shutdown(self) {
        for n in [self.dialer, self.acceptor] {
            assert!(n.db().verify().expect("verify").is_ok());
            n.shutdown().await;
        }
    }
}

/// Checks a one-way link: `to` receives everything `from` writes (before
/// and after connecting) and `from` never receives anything of `to`'s.
async fn assert_one_way(from: &Node, to: &Node, from_key: &str, to_key: &str) {
    eventually("the receiving side gets the sender's entry", || has(to.db(), from_key)).await;
    // Live writes after the catch-up follow the same direction.
    from.db().put(format!("{from_key}-live"), "x").expect("put");
    to.db().put(format!("{to_key}-live"), "y").expect("put");
    eventually("the receiving side gets the sender's live write", || has(to.db(), &format!("{from_key}-live"))).await;
    assert!(has(to.db(), to_key), "the receiving side lost its own entry");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!has(from.db(), to_key), "data flowed against the link's mode (catch-up)");
    assert!(!has(from.db(), &format!("{to_key}-live")), "data flowed against the link's mode (live)");
    assert!(has(from.db(), from_key));
    let (from_id, to_id) = (from.db().node_id(), to.db().node_id());
    assert_eq!(from.db().version_vector().get(to_id), 0, "the sending side covers the receiver's writes");
    assert_eq!(to.db().version_vector().get(from_id), from.db().version_vector().get(from_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_exchanges_both_ways() {
    let mut p = Pair::new(Mode::Sync).await;
    p.connect(Mode::Sync);
    let (d_id, a_id) = p.ids();
    // Both sides receive, so both report a completed catch-up from the other.
    wait_event(&mut p.dialer_events, "dialer caught up", |e| *e == NodeEvent::CaughtUp { peer: a_id }).await;
    wait_event(&mut p.acceptor_events, "acceptor caught up", |e| *e == NodeEvent::CaughtUp { peer: d_id }).await;
    eventually("both entries on both nodes", || {
        [&p.dialer, &p.acceptor].iter().all(|n| has(n.db(), "a") && has(n.db(), "d"))
    })
    .await;
    p.dialer.db().put("d-live", "1").expect("put");
    p.acceptor.db().put("a-live", "2").expect("put");
    eventually("live writes both ways and identical version vectors", || {
        [&p.dialer, &p.acceptor].iter().all(|n| has(n.db(), "a-live") && has(n.db(), "d-live"))
            && p.dialer.db().version_vector() == p.acceptor.db().version_vector()
    })
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_only_receives() {
    let mut p = Pair::new(Mode::Sync).await;
    p.connect(Mode::Pull);
    let (_, a_id) = p.ids();
    wait_event(&mut p.dialer_events, "puller caught up", |e| *e == NodeEvent::CaughtUp { peer: a_id }).await;
    assert_one_way(&p.acceptor, &p.dialer, "a", "d").await;
    // The acceptor receives nothing on this link, so it never catches up.
    let acceptor_events = drain(&mut p.acceptor_events);
    assert!(acceptor_events.iter().any(|e| matches!(e, NodeEvent::Connected { .. })), "{acceptor_events:?}");
    assert!(!acceptor_events.iter().any(|e| matches!(e, NodeEvent::CaughtUp { .. })), "{acceptor_events:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_only_sends() {
    let mut p = Pair::new(Mode::Sync).await;
    p.connect(Mode::Push);
    let (d_id, _) = p.ids();
    wait_event(&mut p.acceptor_events, "pushed-to side caught up", |e| *e == NodeEvent::CaughtUp { peer: d_id }).await;
    assert_one_way(&p.dialer, &p.acceptor, "d", "a").await;
    let dialer_events = drain(&mut p.dialer_events);
    assert!(dialer_events.iter().any(|e| matches!(e, NodeEvent::Connected { .. })), "{dialer_events:?}");
    assert!(!dialer_events.iter().any(|e| matches!(e, NodeEvent::CaughtUp { .. })), "{dialer_events:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_mode_applies_to_inbound_links() {
    // The acceptor only pulls: data flows dialer -> acceptor even though the
    // dialer asked for sync.
    let mut p = Pair::new(Mode::Pull).await;
    p.connect(Mode::Sync);
    let (d_id, _) = p.ids();
    wait_event(&mut p.acceptor_events, "acceptor caught up", |e| *e == NodeEvent::CaughtUp { peer: d_id }).await;
    assert_one_way(&p.dialer, &p.acceptor, "d", "a").await;
    p.shutdown().await;
}
