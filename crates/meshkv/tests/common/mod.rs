//! Helpers shared by the multi-node integration tests.
#![allow(dead_code)]

use meshkv::node::{Node, NodeConfig};
use meshkv::Db;
use std::net::SocketAddr;
use std::time::Duration;

/// 127.0.0.1 with an ephemeral port: tests never use any other address.
pub fn loopback() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Polls `check` every 20 ms until it holds; fails after 20 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a node for `db` listening on loopback, with default settings.
pub async fn start(db: Db) -> Node {
    Node::start(db, NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start")
}
