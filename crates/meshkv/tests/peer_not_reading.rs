//! A peer that keeps talking but never reads what the node sends (here:
//! the catch-up it asked for) is closed once the node's writes have made
//! no progress for `idle_timeout_ms`; the node does not queue for it
//! without end, and goes on serving.

mod common;

use common::{eventually, RawPeer};
use meshkv::node::{Node, NodeConfig};
use meshkv::protocol::{codec, LinkConfig, Message, Mode};
use meshkv::{Batch, Db, Options, VersionVector};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    // More than loopback's socket buffers hold, so the node's writes stall.
    for chunk in 0..24u32 {
        let mut batch = Batch::new();
        for i in 0..500u32 {
            batch.put(format!("k{chunk:02}-{i:03}"), vec![9u8; 2048]);
        }
        db.write(batch).expect("write");
    }
    let link = LinkConfig { idle_timeout_ms: 1_000, ..LinkConfig::default() };
    let cfg = NodeConfig { listen: common::loopback(), link, ..NodeConfig::default() };
    let node = Node::start(db, cfg).await.expect("start");
    let addr = node.local_addr().expect("addr");

    let mut peer = RawPeer::connect_as(addr, Mode::Pull).await;
    let mut out = Vec::new();
    codec::encode(&Message::Digest { vv: VersionVector::new(), resume: None, held: Vec::new() }, &mut out);
    peer.send(&out).await;
    // Pings keep it heard; it never reads.
    let pinging = tokio::spawn(async move {
        let mut ping = Vec::new();
        codec::encode(&Message::Ping, &mut ping);
        for _ in 0..300 {
            peer.send(&ping).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peer
    });
    let id = {
        let mut id = None;
        eventually("the peer is linked", || {
            id = node.peers().iter().find_map(|p| p.node_id);
            id.is_some()
        })
        .await;
        id.expect("linked")
    };
    eventually("the stalled peer is closed", || node.peers().iter().all(|p| p.node_id != Some(id))).await;
    pinging.abort();
    node.shutdown().await;
}
