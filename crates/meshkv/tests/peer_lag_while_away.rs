//! A peer this node dials keeps showing the writes it misses while it is
//! down, in `peers()` and in the metrics; a lag of 0 would tell operators
//! it is caught up.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig, PeerState};
use meshkv::protocol::Mode;
use meshkv::{Db, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_lags_by_the_writes_it_misses() {
    let (da, db_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let b = common::start(Db::open(db_dir.path(), Options::default()).expect("open")).await;
    let (b_id, b_addr) = (b.db().node_id(), b.local_addr().expect("bound"));
    let peers = vec![(b_addr, Mode::Sync)];
    let a_db = Db::open(da.path(), Options::default()).expect("open");
    let a = Node::start(a_db, NodeConfig { listen: loopback(), peers, ..NodeConfig::default() }).await.expect("start");
    a.db().put("k0", "v").expect("put");
    let b_status = || a.peers().into_iter().find(|p| p.node_id == Some(b_id));
    eventually("A live with B", || b_status().is_some_and(|p| p.state == PeerState::Live && p.lag == 0)).await;

    b.shutdown().await;
    eventually("A sees B down", || b_status().is_some_and(|p| p.state == PeerState::Connecting)).await;
    for i in 1..=10 {
        a.db().put(format!("k{i}"), "v").expect("put");
    }
    let away = b_status().expect("B is still a dial target");
    assert_eq!((away.state, away.lag), (PeerState::Connecting, 10), "{away:?}");
    assert!(away.behind_since.is_some(), "{away:?}");

    let text = a.metrics_text();
    let series = |name: &str| {
        let prefix = format!("meshkv_{name}{{peer=\"{b_id}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse::<f64>().expect("a number"))
    };
    assert_eq!(series("peer_lag_entries"), Some(10.0), "{text}");
    assert!(series("peer_lag_seconds").is_some(), "{text}");

    // Back up on the same address and data, B catches up and the lag is gone.
    let b = Node::start(
        Db::open(db_dir.path(), Options::default()).expect("reopen"),
        NodeConfig { listen: Some(b_addr), ..NodeConfig::default() },
    )
    .await
    .expect("restart on the same port");
    eventually("B caught up again", || b_status().is_some_and(|p| p.state == PeerState::Live && p.lag == 0)).await;
    assert_eq!(b_status().and_then(|p| p.behind_since), None);
    a.shutdown().await;
    b.shutdown().await;
}
