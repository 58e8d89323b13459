//! The hidden `bench replicate-receiver`: node B in a child process, and the JSON report it prints.

use super::ModeArg;
use crate::bench::{machine, timing};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::{Db, Options};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Arguments of the hidden `meshkv bench replicate-receiver` (the child
/// process of `bench replicate`).
#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Address of the sender.
    #[arg(long)]
    connect: SocketAddr,
    /// Directory of the receiver's (empty) store.
    #[arg(long)]
    dir: PathBuf,
    /// Mode to dial the sender with.
    #[arg(long, value_enum, default_value_t = ModeArg::Pull)]
    mode: ModeArg,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// `Options::feed_capacity` of the receiver's store.
    #[arg(long)]
    feed_capacity: Option<usize>,
}

/// Runs the hidden `meshkv bench replicate-receiver`: node B.
pub fn run_receiver(args: ReceiverArgs) -> Result<()> {
    let rt = super::runtime()?;
    let opening = Instant::now();
    let mut opts = Options::default();
    if let Some(c) = args.feed_capacity {
        opts.feed_capacity = c;
    }
    let feed_capacity = opts.feed_capacity;
    let db = Db::open(&args.dir, opts).context("cannot open the receiver's store")?;
    let open_seconds = opening.elapsed().as_secs_f64();
    let cpu_start = timing::process_cpu();
    let start = Instant::now();
    let report = rt.block_on(async {
        let cfg = NodeConfig { listen: None, ..NodeConfig::default() };
        let mut node = Node::start(db.clone(), cfg).await.context("cannot start the receiver's node")?;
        let mut events = node.events();
        let rss_before_kib = machine::rss_kib();
        node.add_peer(args.connect, args.mode.mode());
        let mut connected_seconds = None;
        let mut disconnects = 0u32;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::Connected { .. }) => connected_seconds = Some(start.elapsed().as_secs_f64()),
                    Ok(NodeEvent::CaughtUp { peer }) => return Ok(peer),
                    Ok(NodeEvent::Disconnected { reason, .. }) => {
                        disconnects += 1;
                        tracing::warn!(?reason, "receiver link dropped; the node redials and resumes");
                    }
                    Ok(NodeEvent::Error { addr, message }) => bail!("link to {addr} failed: {message}"),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => bail!("the receiver's node stopped"),
                }
            }
        };
        let peer = tokio::time::timeout(Duration::from_secs(args.timeout_secs), wait)
            .await
            .map_err(|_| anyhow!("no catch-up within {} s", args.timeout_secs))??;
        let seconds = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(timing::process_cpu()).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
        let peak_rss_kib = machine::peak_rss_kib();
        let rss_kib = machine::rss_kib();
        let (rss_anon_kib, rss_file_kib) = machine::rss_parts_kib();
        let received: u64 = node.peers().iter().map(|p| p.received).sum();
        let vv = db.version_vector();
        node.shutdown().await;
        anyhow::Ok(json!({
            "seconds": seconds,
            "open_seconds": open_seconds,
            "feed_capacity": feed_capacity,
            "connected_seconds": connected_seconds,
            "disconnects": disconnects,
            "peer": peer.to_string(),
            "node_id": db.node_id().to_string(),
            "version_vector": vv.to_string(),
            "received_items": received,
            "cpu_seconds": cpu,
            "rss_before_catch_up_kib": rss_before_kib,
            "rss_at_caught_up_kib": rss_kib,
            "rss_anon_at_caught_up_kib": rss_anon_kib,
            "rss_file_at_caught_up_kib": rss_file_kib,
            "peak_rss_kib": peak_rss_kib,
        }))
    })?;
    drop(db);
    println!("{report}");
    Ok(())
}
