//! `meshkv bench ...`: benchmarks.

mod client;
mod latency;
mod local;
mod machine;
mod pingpong;
mod replicate;
mod timing;
mod workload;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// Arguments of `meshkv bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Put throughput of a local store (`Db::write`) against plain fjall with
    /// the same keys, values, batch sizes and durability.
    Local(local::LocalArgs),
    /// Catch-up throughput of an empty node from a loaded one over loopback
    /// TCP, against plain fjall ingesting the same records; peak RSS of the
    /// receiver.
    Replicate(replicate::ReplicateArgs),
    /// The receiving node of `bench replicate`, run as a child process.
    #[command(hide = true)]
    ReplicateReceiver(replicate::ReceiverArgs),
    /// Remote put and get through the client library: sequential and with
    /// many requests in flight, against a plain TCP ping-pong on the same
    /// runtimes.
    Client(client::ClientArgs),
    /// Put-on-A to visible-on-B latency of two connected nodes under a
    /// paced write load.
    Latency(latency::LatencyArgs),
}

/// Runs `meshkv bench ...`.
pub fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Local(a) => local::run(a),
        BenchCommand::Replicate(a) => replicate::run(a),
        BenchCommand::ReplicateReceiver(a) => replicate::run_receiver(a),
        BenchCommand::Latency(a) => latency::run(a),
        BenchCommand::Client(a) => client::run(a),
    }
}

/// `--dir` (created if missing), or the system temporary directory.
fn base_dir(dir: Option<&Path>) -> Result<PathBuf> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            Ok(d.to_path_buf())
        }
        None => Ok(std::env::temp_dir()),
    }
}

/// A fresh temporary directory under `base`, removed when dropped.
fn temp_dir(base: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))
}

/// The tokio runtime the nodes run on: multi-threaded, one worker per core.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the tokio runtime")
}
