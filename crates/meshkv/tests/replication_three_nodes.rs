//! SPEC §8: three nodes, each writes 3 keys in a batch; all 9 keys reach all
//! three nodes over TCP. Then one node deletes a key another node wrote;
//! it is gone everywhere.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig};
use meshkv::protocol::Mode;
use meshkv::{Batch, Db, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_on_batches_and_a_delete() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        let db = Db::open(d.path(), Options::default()).expect("open");
        let cfg = NodeConfig { listen: loopback(), ..NodeConfig::default() };
        nodes.push(Node::start(db, cfg).await.expect("start"));
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.local_addr().expect("bound")).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            if i != j {
                node.add_peer(*addr, Mode::Sync);
            }
        }
        // Also its own address: must be recognised and never used.
        node.add_peer(addrs[i], Mode::Sync);
    }
    for (i, node) in nodes.iter().enumerate() {
        let mut b = Batch::new();
        for k in 0..3 {
            b.put(format!("n{i}-k{k}"), format!("v{i}{k}"));
        }
        node.db().write(b).expect("write");
    }
    eventually("all 9 keys on all nodes", || {
        nodes.iter().all(|n| (0..3).all(|i| (0..3).all(|k| n.db().get(format!("n{i}-k{k}")).expect("get").is_some())))
    })
    .await;
    nodes[2].db().delete("n0-k1").expect("delete");
    eventually("the delete everywhere", || nodes.iter().all(|n| n.db().get("n0-k1").expect("get").is_none())).await;
    eventually("identical version vectors", || {
        let vv = nodes[0].db().version_vector();
        nodes.iter().all(|n| n.db().version_vector() == vv)
    })
    .await;
    eventually("exactly one link per pair of nodes", || {
        nodes.iter().all(|n| {
            let ids: Vec<_> = n.peers().into_iter().filter_map(|p| p.node_id).collect();
            let distinct: std::collections::HashSet<_> = ids.iter().collect();
            ids.len() == 2 && distinct.len() == 2
        })
    })
    .await;
    for n in &nodes {
        assert!(n.db().verify().expect("verify").is_ok());
        let linked: Vec<_> = n.peers().into_iter().filter_map(|p| p.node_id).collect();
        assert!(!linked.contains(&n.db().node_id()), "a node linked to itself");
    }
    for n in nodes {
        n.shutdown().await;
    }
}
