//! SPEC §8, the @treehub/level scenario over TCP: a hub and two spokes, all
//! with `PreferNodes(vec![hub])`; spokes connect only to the hub. The spokes
//! write the same key while disconnected (in one variant the hub too), then
//! sync one after the other. Everyone ends with the same record, and a
//! concurrent hub write wins over the spokes'.

mod common;
use common::{eventually, start};

use meshkv::node::Node;
use meshkv::protocol::Mode;
use meshkv::{ConflictPolicy, Db, Dot, NodeId, Options};
use std::time::Duration;

const KEY: &str = "s1";

/// Three stores (hub, spoke 1, spoke 2) under `PreferNodes(vec![hub])`.
struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    hub: Db,
    s1: Db,
    s2: Db,
}

impl Cluster {
    fn open() -> Cluster {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        // Learn the hub's id before configuring the policy with it.
        let hub_id: NodeId = Db::open(dirs[0].path(), Options::default()).expect("open").node_id();
        let opts = Options::default().policy(ConflictPolicy::PreferNodes(vec![hub_id]));
        let open = |i: usize| Db::open(dirs[i].path(), opts.clone()).expect("open");
        let (hub, s1, s2) = (open(0), open(1), open(2));
        assert_eq!(hub.node_id(), hub_id);
        Cluster { _dirs: dirs, hub, s1, s2 }
    }
}

fn value(db: &Db) -> Option<Vec<u8>> {
    db.get(KEY).expect("get")
}

fn covers(db: &Db, dots: &[Dot]) -> bool {
    let vv = db.version_vector();
    dots.iter().all(|d| vv.contains(*d))
}

/// Waits until every store holds the same record for `KEY` and covers `dots`.
async fn converged(dbs: &[&Db], dots: &[Dot]) {
    eventually("identical records for s1 everywhere, covering every write", || {
        let first = dbs[0].get_record(KEY).expect("get");
        first.is_some() && dbs.iter().all(|db| db.get_record(KEY).expect("get") == first && covers(db, dots))
    })
    .await;
}

/// Starts a spoke node that dials the hub only.
async fn spoke(db: &Db, hub: &Node) -> Node {
    let mut node = start(db.clone()).await;
    node.add_peer(hub.local_addr().expect("bound"), Mode::Sync);
    node
}

async fn finish(nodes: Vec<Node>) {
    for n in nodes {
        assert!(n.db().verify().expect("verify").is_ok());
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spokes_conflict_and_converge_through_the_hub() {
    let c = Cluster::open();
    let d1 = c.s1.put(KEY, "spoke1").expect("put");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let d2 = c.s2.put(KEY, "spoke2").expect("put");
    let hub = start(c.hub.clone()).await;

    let n1 = spoke(&c.s1, &hub).await;
    converged(&[&c.hub, &c.s1], &[d1]).await;
    assert_eq!(value(&c.hub).as_deref(), Some(&b"spoke1"[..]));
    assert!(value(&c.s2).as_deref() == Some(&b"spoke2"[..]), "spoke 2 is not connected yet");

    let n2 = spoke(&c.s2, &hub).await;
    converged(&[&c.hub, &c.s1, &c.s2], &[d1, d2]).await;
    // Neither spoke is preferred: among equals the later write wins, and both
    // concurrent versions stay as siblings.
    assert_eq!(value(&c.s1).as_deref(), Some(&b"spoke2"[..]));
    assert_eq!(c.hub.get_record(KEY).expect("get").expect("record").versions().len(), 2);
    finish(vec![n1, n2, hub]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hub_write_wins_everywhere() {
    let c = Cluster::open();
    // The hub writes first, so it has the oldest timestamp: it must win by
    // rank, not by clock.
    let dh = c.hub.put(KEY, "hub").expect("put");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let d1 = c.s1.put(KEY, "spoke1").expect("put");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let d2 = c.s2.put(KEY, "spoke2").expect("put");
    let hub = start(c.hub.clone()).await;

    let n1 = spoke(&c.s1, &hub).await;
    converged(&[&c.hub, &c.s1], &[dh, d1]).await;
    assert_eq!(value(&c.s1).as_deref(), Some(&b"hub"[..]), "spoke 1's newer write beat the hub");
    assert_eq!(value(&c.hub).as_deref(), Some(&b"hub"[..]));

    let n2 = spoke(&c.s2, &hub).await;
    converged(&[&c.hub, &c.s1, &c.s2], &[dh, d1, d2]).await;
    for db in [&c.hub, &c.s1, &c.s2] {
        assert_eq!(value(db).as_deref(), Some(&b"hub"[..]));
    }
    assert_eq!(c.hub.get_record(KEY).expect("get").expect("record").versions().len(), 3);
    assert!(c.hub.conflict_count() > 0 && c.s1.conflict_count() > 0 && c.s2.conflict_count() > 0);
    finish(vec![n1, n2, hub]).await;
}

/// docs/ALGORITHM.md I4's example: hub write `h`; spoke 1 sees `h` and
/// overwrites it with `s`; spoke 2 writes `c`, concurrent with both. The hub
/// sees `h, c` (h wins) and later `s`, which supersedes `h` but not `c`: the
/// result must be the same as for a node seeing `s` and `c` only, so `c`
/// must not have been dropped when it lost to `h`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoke_overwrite_of_hub_write_stays_concurrent_with_other_spoke() {
    let c = Cluster::open();
    let dh = c.hub.put(KEY, "h").expect("put");
    let hub = start(c.hub.clone()).await;

    // Spoke 1 learns h, then goes offline and overwrites it.
    let n1 = spoke(&c.s1, &hub).await;
    converged(&[&c.hub, &c.s1], &[dh]).await;
    n1.shutdown().await;
    let ds = c.s1.put(KEY, "s").expect("put");
    assert_eq!(c.s1.get_record(KEY).expect("get").expect("record").versions().len(), 1, "s supersedes h");
    // Spoke 2 writes last (offline): among the unpreferred, c is the newest.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let dc = c.s2.put(KEY, "c").expect("put");

    let n2 = spoke(&c.s2, &hub).await;
    converged(&[&c.hub, &c.s2], &[dh, dc]).await;
    assert_eq!(value(&c.hub).as_deref(), Some(&b"h"[..]), "the hub's write beats the concurrent spoke write");
    assert_eq!(c.hub.get_record(KEY).expect("get").expect("record").versions().len(), 2, "c kept as a sibling");

    let n1 = spoke(&c.s1, &hub).await;
    converged(&[&c.hub, &c.s1, &c.s2], &[dh, ds, dc]).await;
    let rec = c.hub.get_record(KEY).expect("get").expect("record");
    let mut dots: Vec<Dot> = rec.dots().collect();
    dots.sort();
    let mut expect = vec![ds, dc];
    expect.sort();
    assert_eq!(dots, expect, "the frontier is {{s, c}}: h is superseded by s");
    for db in [&c.hub, &c.s1, &c.s2] {
        assert_eq!(value(db).as_deref(), Some(&b"c"[..]));
    }
    finish(vec![n1, n2, hub]).await;
}
