//! `meshkv serve`: runs one node — a store in a data directory, replicating
//! with its peers and serving remote clients — until Ctrl-C or SIGTERM.
//!
//! Settings come from the flags, then the `--config` TOML file, then the
//! defaults: data in `./meshkv-data`, listening on `127.0.0.1:7420`, no
//! peers, cluster `meshkv`. Startup failures (address in use, a data
//! directory that is locked, corrupt or not a store, a bad config) print
//! one error line and exit with code 2.

use crate::remote::{fail, Target, DEFAULT_CLUSTER, DEFAULT_NODE};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use meshkv::node::{Node, NodeConfig, NodeEvent, ServerOptions};
use meshkv::protocol::{CloseReason, LinkConfig, Mode};
use meshkv::{Db, Options};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::sync::broadcast::{self, error::RecvError};

/// Log filter of `serve` unless `RUST_LOG` is set: meshkv at info, the
/// storage engine's own chatter only from warnings up.
pub const LOG_DEFAULT: &str = "info,fjall=warn,lsm_tree=warn";
/// Default data directory.
const DEFAULT_DATA: &str = "meshkv-data";

/// Arguments of `meshkv serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory, created if missing [default: ./meshkv-data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address to listen on for peers and clients [default: 127.0.0.1:7420].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// A peer to replicate with (repeatable; replaces the config file's peers).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// TOML file with `data`, `listen`, `peers`, `cluster`, `read_only`;
    /// flags override it. Relative paths in it are relative to the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Refuse writes from remote clients (replication still flows).
    #[arg(long)]
    read_only: bool,
    /// Allow a listen address that is not loopback. There is no
    /// authentication or encryption yet: only on trusted networks.
    #[arg(long)]
    insecure: bool,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<String>,
    peers: Option<Vec<String>>,
    cluster: Option<String>,
    read_only: Option<bool>,
}

/// The settings in force after flags, file and defaults.
#[derive(Debug, PartialEq)]
struct Settings {
    data: PathBuf,
    listen: String,
    peers: Vec<String>,
    cluster: String,
    read_only: bool,
}

fn settings(args: &ServeArgs, target: &Target) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
            let mut file: FileConfig =
                toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new(""));
            file.data = file.data.map(|d| base.join(d));
            file
        }
        None => FileConfig::default(),
    };
    Ok(Settings {
        data: args.data.clone().or(file.data).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA)),
        listen: args.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_NODE.into()),
        peers: if args.peers.is_empty() { file.peers.unwrap_or_default() } else { args.peers.clone() },
        cluster: target.cluster.clone().or(file.cluster).unwrap_or_else(|| DEFAULT_CLUSTER.into()),
        read_only: args.read_only || file.read_only.unwrap_or(false),
    })
}

fn resolve(what: &str, addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {what} address {addr:?} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow!("{what} address {addr:?} resolves to nothing"))
}

/// Runs `meshkv serve`; returns when the node has shut down.
pub fn run(args: ServeArgs, target: Target) -> ExitCode {
    match serve(args, target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn serve(args: ServeArgs, target: Target) -> Result<()> {
    let s = settings(&args, &target)?;
    let listen = resolve("listen", &s.listen)?;
    if !listen.ip().is_loopback() && !args.insecure {
        bail!(
            "refusing to listen on {listen}: it is not a loopback address and meshkv has no authentication \
             or encryption yet; pass --insecure to listen there anyway (trusted networks only)"
        );
    }
    let peers = s.peers.iter().map(|p| resolve("peer", p).map(|a| (a, Mode::Sync))).collect::<Result<Vec<_>>>()?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        // The library's errors already name their cause: no `{:#}` chain.
        let db = Db::open(&s.data, Options::default())
            .map_err(|e| anyhow!("cannot open the data directory {}: {e}", s.data.display()))?;
        let cfg = NodeConfig {
            listen: Some(listen),
            peers: peers.clone(),
            link: LinkConfig { cluster: s.cluster.clone(), ..LinkConfig::default() },
            server: ServerOptions { read_only: s.read_only, ..ServerOptions::default() },
            ..NodeConfig::default()
        };
        let node = Node::start(db.clone(), cfg).await.map_err(|e| anyhow!("{e}"))?;
        let addr = node.local_addr().unwrap_or(listen);
        tracing::info!(
            %addr,
            node_id = %db.node_id(),
            data = %s.data.display(),
            cluster = %s.cluster,
            peers = ?s.peers,
            read_only = s.read_only,
            "meshkv node serving"
        );
        if addr.ip().is_loopback() {
            tracing::info!("this node has no authentication yet; it listens on loopback only");
        } else {
            tracing::warn!(%addr, "this node has no authentication or encryption yet: anyone who can reach it can read and write");
        }
        let reason = run_until_signal(&node).await?;
        tracing::info!(reason, "shutting down");
        node.shutdown().await;
        db.sync().map_err(|e| anyhow!("cannot flush the store on shutdown: {e}"))?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Logs link events until Ctrl-C or SIGTERM; returns which one. (The node
/// itself logs peers connecting, initial sync progress and "caught up".)
async fn run_until_signal(node: &Node) -> Result<&'static str> {
    let signal = shutdown_signal()?;
    tokio::pin!(signal);
    let mut events = Some(node.events());
    loop {
        tokio::select! {
            reason = &mut signal => return Ok(reason),
            event = next_event(&mut events) => match event {
                // Of two crossing dials one is closed as a duplicate: routine.
                Ok(NodeEvent::Disconnected { peer, addr, reason: Some(CloseReason::Duplicate) }) => {
                    tracing::debug!(%addr, %peer, "duplicate link closed");
                }
                Ok(NodeEvent::Disconnected { peer, addr, reason }) => {
                    tracing::info!(%addr, %peer, ?reason, "peer disconnected");
                }
                Ok(NodeEvent::Conflict { key, conflict }) => {
                    tracing::debug!(key = %crate::encoding::escape(&key), winner = %conflict.winner, "conflict settled");
                }
                // Connected and CaughtUp are logged by the node, Error as a warning.
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "node events lagged");
                }
                Err(RecvError::Closed) => events = None,
            },
        }
    }
}

/// The next node event; never resolves once the events are closed.
async fn next_event(events: &mut Option<broadcast::Receiver<NodeEvent>>) -> Result<NodeEvent, RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "interrupt",
                _ = term.recv() => "terminate",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> (ServeArgs, Target) {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).unwrap();
        (cli.serve, cli.target)
    }

    #[test]
    fn defaults() {
        let (args, target) = parse(&[]);
        let s = settings(&args, &Target { cluster: None, ..target }).unwrap();
        assert_eq!(
            s,
            Settings {
                data: PathBuf::from("meshkv-data"),
                listen: "127.0.0.1:7420".into(),
                peers: vec![],
                cluster: "meshkv".into(),
                read_only: false,
            }
        );
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data = \"d\"\nlisten = \"127.0.0.1:1\"\npeers = [\"127.0.0.1:2\"]\ncluster = \"c\"\nread_only = true\n",
        )
        .unwrap();
        let config = path.to_str().unwrap();
        let (args, target) = parse(&["--config", config]);
        let s = settings(&args, &Target { cluster: None, ..target }).unwrap();
        assert_eq!(s.data, dir.path().join("d"));
        assert_eq!(
            (s.listen.as_str(), s.peers.clone(), s.cluster.as_str(), s.read_only),
            ("127.0.0.1:1", vec!["127.0.0.1:2".to_string()], "c", true)
        );

        let (args, target) = parse(&[
            "--config",
            config,
            "--data",
            "x",
            "--listen",
            "127.0.0.1:3",
            "--peer",
            "127.0.0.1:4",
            "--cluster",
            "z",
        ]);
        let s = settings(&args, &target).unwrap();
        assert_eq!(s.data, PathBuf::from("x"));
        assert_eq!(
            (s.listen.as_str(), s.peers, s.cluster.as_str()),
            ("127.0.0.1:3", vec!["127.0.0.1:4".to_string()], "z")
        );
    }

    #[test]
    fn unknown_config_fields_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "lissen = \"127.0.0.1:1\"\n").unwrap();
        let (args, target) = parse(&["--config", path.to_str().unwrap()]);
        let e = settings(&args, &target).unwrap_err();
        assert!(format!("{e:#}").contains("lissen"), "{e:#}");
    }
}
