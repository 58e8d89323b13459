//! Three replicating nodes on loopback: writes on every node, a partition
//! with conflicting writes, healing, and convergence.
//!
//! Run with `cargo run -p meshkv --example cluster`.

use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::Mode;
use meshkv::{Db, Options};
use std::net::SocketAddr;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let db = Db::open(root.path().join(name), Options::default())?;
        let cfg = NodeConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))), ..NodeConfig::default() };
        let node = Node::start(db, cfg).await?;
        println!("node {name}: id {} on {}", node.db().node_id(), node.local_addr().ok_or("not bound")?);
        nodes.push(node);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().filter_map(Node::local_addr).collect();
    // a dials b and c; b dials c: a full mesh with one link per pair.
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        nodes[i].add_peer(addrs[j], Mode::Sync);
    }
    let mut events = nodes[0].events();

    for (i, node) in nodes.iter().enumerate() {
        node.db().put(format!("greeting/{i}"), format!("hello from node {i}"))?;
    }
    settle(&nodes).await;
    println!("after writes on every node: {} keys on each", count(&nodes[2]));

    // Cut c off, write the same key on both sides, heal.
    nodes[0].remove_peer(addrs[2]);
    nodes[1].remove_peer(addrs[2]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    nodes[0].db().put("color", "blue")?;
    tokio::time::sleep(Duration::from_millis(5)).await; // so "last writer" is unambiguous
    nodes[2].db().put("color", "green")?;
    println!("partitioned: a says {:?}, c says {:?}", text(&nodes[0], "color"), text(&nodes[2], "color"));
    nodes[0].add_peer(addrs[2], Mode::Sync);
    nodes[1].add_peer(addrs[2], Mode::Sync);
    settle(&nodes).await;
    for (i, node) in nodes.iter().enumerate() {
        println!("healed: node {i} color = {:?}, conflicts seen = {}", text(node, "color"), node.db().conflict_count());
    }
    while let Ok(ev) = events.try_recv() {
        if let NodeEvent::Conflict { key, conflict } = ev {
            println!("event on a: conflict on {:?}, winner {}", String::from_utf8_lossy(&key), conflict.winner);
        }
    }
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

/// Waits until all version vectors agree (bounded).
async fn settle(nodes: &[Node]) {
    for _ in 0..500 {
        let vv = nodes[0].db().version_vector();
        if nodes.iter().all(|n| n.db().version_vector() == vv) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(node: &Node) -> usize {
    node.db().scan(Default::default()).count()
}

fn text(node: &Node, key: &str) -> Option<String> {
    node.db().get(key).ok().flatten().map(|v| String::from_utf8_lossy(&v).into_owned())
}
