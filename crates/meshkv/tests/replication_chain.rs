//! Transitive delivery over TCP (SPEC invariant I5): a chain A – B – C where
//! A and C never connect (A dials B, C dials B). Writes and deletes made on
//! A reach C and those made on C reach A, both through the catch-up (written
//! before connecting) and the live stream (written after); the version
//! vectors end identical.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig};
use meshkv::protocol::Mode;
use meshkv::{Batch, Db, NodeId, Options};

fn value(n: &Node, key: &str) -> Option<Vec<u8>> {
    n.db().get(key).expect("get")
}

fn linked_ids(n: &Node) -> Vec<NodeId> {
    let mut ids: Vec<_> = n.peers().into_iter().filter_map(|p| p.node_id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_deletes_travel_the_whole_chain() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        let db = Db::open(d.path(), Options::default()).expect("open");
        nodes.push(Node::start(db, NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start"));
    }
    // Written before any link exists: delivered by catch-ups, A -> B -> C.
    let mut batch = Batch::new();
    batch.put("a/old", "from A").put("a/doomed", "x");
    nodes[0].db().write(batch).expect("write");
    let mut batch = Batch::new();
    batch.put("c/old", "from C").put("c/doomed", "y");
    nodes[2].db().write(batch).expect("write");

    let b_addr = nodes[1].local_addr().expect("bound");
    nodes[0].add_peer(b_addr, Mode::Sync);
    nodes[2].add_peer(b_addr, Mode::Sync);
    let [a, b, c] = &nodes[..] else { unreachable!() };

    eventually("A's writes on C and C's writes on A", || {
        value(c, "a/old").as_deref() == Some(&b"from A"[..])
            && value(a, "c/old").as_deref() == Some(&b"from C"[..])
            && value(c, "a/doomed").is_some()
            && value(a, "c/doomed").is_some()
    })
    .await;

    // Live writes after the catch-ups.
    a.db().put("a/live", "1").expect("put");
    c.db().put("c/live", "2").expect("put");
    b.db().put("b/live", "3").expect("put");
    eventually("live writes across the chain", || {
        value(c, "a/live").is_some()
            && value(a, "c/live").is_some()
            && [a, c].iter().all(|n| value(n, "b/live").is_some())
    })
    .await;

    // Deletes: each end deletes a key the other end wrote, and one of its own.
    a.db().delete("c/doomed").expect("delete");
    c.db().delete("a/doomed").expect("delete");
    c.db().delete("c/live").expect("delete");
    eventually("deletes everywhere", || {
        nodes.iter().all(|n| ["a/doomed", "c/doomed", "c/live"].iter().all(|k| value(n, k).is_none()))
    })
    .await;
    // An overwrite from the far end supersedes the original everywhere.
    c.db().put("a/old", "overwritten by C").expect("put");
    eventually("the overwrite everywhere", || {
        nodes.iter().all(|n| value(n, "a/old").as_deref() == Some(&b"overwritten by C"[..]))
    })
    .await;

    eventually("identical version vectors and records", || {
        let vv = a.db().version_vector();
        nodes.iter().all(|n| n.db().version_vector() == vv)
            && ["a/old", "a/doomed", "a/live", "b/live", "c/old", "c/doomed", "c/live"].iter().all(|k| {
                let r = a.db().get_record(k).expect("get");
                r.is_some() && nodes.iter().all(|n| n.db().get_record(k).expect("get") == r)
            })
    })
    .await;
    assert_eq!(a.db().version_vector().len(), 3, "every origin is covered");
    for n in &nodes {
        assert_eq!(value(n, "a/live").as_deref(), Some(&b"1"[..]));
        assert_eq!(value(n, "c/old").as_deref(), Some(&b"from C"[..]));
    }

    // A and C only ever linked to B.
    let (a_id, b_id, c_id) = (a.db().node_id(), b.db().node_id(), c.db().node_id());
    assert_eq!(linked_ids(a), vec![b_id]);
    assert_eq!(linked_ids(c), vec![b_id]);
    let mut ends = vec![a_id, c_id];
    ends.sort();
    assert_eq!(linked_ids(b), ends);

    for n in nodes {
        assert!(n.db().verify().expect("verify").is_ok());
        n.shutdown().await;
    }
}
