//! `meshkv serve`: runs one node — a store in a data directory, replicating
//! with its peers and serving remote clients — until Ctrl-C or SIGTERM.
//!
//! Settings come from the flags, then the `--config` TOML file, then the
//! defaults: data in `./meshkv-data`, listening on `127.0.0.1:7420`, no
//! peers, cluster `meshkv`. Startup failures (address in use, a data
//! directory that is locked, corrupt or not a store, a bad config) print
//! one error line and exit with code 2; the sockets are bound before the
//! store is opened, so a node that cannot listen leaves no store behind.

use crate::remote::{fail, load_secret, Target, DEFAULT_CLUSTER, DEFAULT_NODE};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use meshkv::node::{Discovery, Node, NodeConfig, NodeEvent, ServerOptions};
use meshkv::protocol::{CloseReason, LinkConfig, Mode};
use meshkv::secure::Security;
use meshkv::{Db, Options};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

/// Log filter of `serve` unless `RUST_LOG` is set: meshkv at info, the
/// storage engine's own chatter only from warnings up.
pub const LOG_DEFAULT: &str = "info,fjall=warn,lsm_tree=warn";
/// Default data directory.
const DEFAULT_DATA: &str = "meshkv-data";
/// Longest busy-poll budget accepted: polling is for round trips of tens of
/// microseconds, and each answered client may hold a worker this long.
const MAX_BUSY_POLL_US: u64 = 10_000;

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
    /// TOML file with `data`, `listen`, `peers`, `cluster`, `read_only`,
    /// `metrics`, `peer_exchange`, `discovery`, `discovery_group`; flags
    /// override it. Relative paths in it are relative to the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Refuse writes from remote clients (replication still flows).
    #[arg(long)]
    read_only: bool,
    /// Keep the node id when the data directory looks copied (its files are
    /// not the ones the store recorded). Only for file systems whose inode
    /// numbers change across mounts: a copy that keeps the id can lose
    /// writes.
    #[arg(long)]
    keep_id_for_copies: bool,
    /// Learn the peers of peers and connect to them too (peer exchange);
    /// leave off where the topology is deliberate (hub and spokes).
    #[arg(long)]
    peer_exchange: bool,
    /// Announce this node on the LAN and connect to the nodes of the
    /// cluster heard there (UDP multicast, 239.255.77.75:7429 unless the
    /// config sets `discovery_group`); needs --secret-file.
    #[arg(long)]
    discovery: bool,
    /// Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics
    /// (counters and peer addresses, no data; no credentials asked).
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// File with a secret that gives clients reads and writes but no peer
    /// link, so they cannot replicate past --read-only or a write hook.
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<PathBuf>,
    /// File with a secret that gives clients read-only access.
    #[arg(long, value_name = "FILE")]
    read_only_secret_file: Option<PathBuf>,
    /// Allow a non-loopback listen address, and non-loopback peers,
    /// without a cluster secret: unauthenticated, unencrypted; trusted
    /// networks only.
    #[arg(long)]
    insecure: bool,
    /// After answering a client, busy-poll its connection this many
    /// microseconds for the next request before sleeping [default: 0, off].
    /// Raises sequential round trips on VMs; costs CPU.
    #[arg(long, value_name = "MICROS", value_parser = clap::value_parser!(u64).range(0..=MAX_BUSY_POLL_US))]
    busy_poll_us: Option<u64>,
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
    keep_id_for_copies: Option<bool>,
    peer_exchange: Option<bool>,
    discovery: Option<bool>,
    discovery_group: Option<String>,
    metrics: Option<String>,
    secret_file: Option<PathBuf>,
    client_secret_file: Option<PathBuf>,
    read_only_secret_file: Option<PathBuf>,
    busy_poll_us: Option<u64>,
    #[serde(default)]
    limits: Limits,
}

/// The `[limits]` table of the config file; every field is optional and
/// defaults to the library's value.
#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone)]
#[serde(deny_unknown_fields)]
struct Limits {
    /// Established connections (peers and clients).
    max_connections: Option<usize>,
    /// Connections still in their handshake (the oldest is evicted).
    max_handshaking: Option<usize>,
    /// Largest frame accepted, in bytes.
    max_frame_bytes: Option<usize>,
    /// Largest key, in bytes.
    max_key_bytes: Option<usize>,
    /// Largest value, in bytes.
    max_value_bytes: Option<usize>,
    /// Requests per client answered before replies are written.
    max_in_flight: Option<usize>,
    /// Open scans per client.
    max_cursors: Option<usize>,
    /// Live watches per client.
    max_watches: Option<usize>,
    /// Time to finish the handshake, in milliseconds.
    handshake_timeout_ms: Option<u64>,
    /// Silence after which a connection is closed, in milliseconds.
    idle_timeout_ms: Option<u64>,
}

/// The settings in force after flags, file and defaults.
#[derive(Debug, PartialEq)]
struct Settings {
    data: PathBuf,
    listen: String,
    peers: Vec<String>,
    cluster: String,
    read_only: bool,
    keep_id_for_copies: bool,
    peer_exchange: bool,
    /// The multicast group to discover peers on (`None`: discovery off).
    discovery: Option<String>,
    metrics: Option<String>,
    secret_file: Option<PathBuf>,
    client_secret_file: Option<PathBuf>,
    read_only_secret_file: Option<PathBuf>,
    busy_poll_us: u64,
    limits: Limits,
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
            file.secret_file = file.secret_file.map(|d| base.join(d));
            file.client_secret_file = file.client_secret_file.map(|d| base.join(d));
            file.read_only_secret_file = file.read_only_secret_file.map(|d| base.join(d));
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
        keep_id_for_copies: args.keep_id_for_copies || file.keep_id_for_copies.unwrap_or(false),
        peer_exchange: args.peer_exchange || file.peer_exchange.unwrap_or(false),
        discovery: (args.discovery || file.discovery.unwrap_or(false))
            .then(|| file.discovery_group.unwrap_or_else(|| meshkv::node::DEFAULT_GROUP.to_string())),
        metrics: args.metrics.clone().or(file.metrics),
        secret_file: target.secret_file.clone().or(file.secret_file),
        client_secret_file: args.client_secret_file.clone().or(file.client_secret_file),
        read_only_secret_file: args.read_only_secret_file.clone().or(file.read_only_secret_file),
        busy_poll_us: match args.busy_poll_us.or(file.busy_poll_us).unwrap_or(0) {
            us @ 0..=MAX_BUSY_POLL_US => us,
            us => bail!("busy_poll_us = {us} is over the limit of {MAX_BUSY_POLL_US} microseconds"),
        },
        limits: file.limits,
    })
}

/// The node configuration for `s`, with the secrets loaded.
fn node_config(s: &Settings, listen: SocketAddr, peers: Vec<(SocketAddr, Mode)>, insecure: bool) -> Result<NodeConfig> {
    let security = Security {
        secret: s.secret_file.as_deref().map(load_secret).transpose()?,
        client_secret: s.client_secret_file.as_deref().map(load_secret).transpose()?,
        read_only_secret: s.read_only_secret_file.as_deref().map(load_secret).transpose()?,
    };
    if let Err(e) = security.check() {
        bail!("{e}: pass --secret-file, and a secret made by `meshkv secret` for each kind of access");
    }
    if !listen.ip().is_loopback() && !security.is_enabled() && !insecure {
        bail!(
            "refusing to listen on {listen} without a cluster secret: anyone who can reach it could read and write \
             every record. Create one with `meshkv secret --out FILE` and pass --secret-file FILE to every node \
             and client, or pass --insecure to listen there unauthenticated (trusted networks only)"
        );
    }
    if let Some((peer, _)) = peers.iter().find(|(p, _)| !p.ip().is_loopback() && !security.is_enabled() && !insecure) {
        bail!(
            "refusing to dial peer {peer} without a cluster secret: records would cross the network unencrypted, \
             to and from whoever answers there. Create one with `meshkv secret --out FILE` and pass --secret-file \
             FILE to every node, or pass --insecure (trusted networks only)"
        );
    }
    let d = NodeConfig::default();
    let l = &s.limits;
    let link = LinkConfig {
        cluster: s.cluster.clone(),
        handshake_timeout_ms: l.handshake_timeout_ms.unwrap_or(d.link.handshake_timeout_ms),
        idle_timeout_ms: l.idle_timeout_ms.unwrap_or(d.link.idle_timeout_ms),
        ..d.link.clone()
    };
    Ok(NodeConfig {
        listen: Some(listen),
        peers,
        link,
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        max_handshaking: l.max_handshaking.unwrap_or(d.max_handshaking),
        max_frame: l.max_frame_bytes.unwrap_or(d.max_frame),
        server: ServerOptions {
            read_only: s.read_only,
            max_in_flight: l.max_in_flight.unwrap_or(0),
            max_cursors: l.max_cursors.unwrap_or(0),
            max_watches: l.max_watches.unwrap_or(0),
            busy_poll: Duration::from_micros(s.busy_poll_us),
            ..ServerOptions::default()
        },
        security,
        allow_insecure: insecure,
        peer_exchange: s.peer_exchange,
        ..d
    })
}

/// Store options with the configured key and value limits.
fn store_options(s: &Settings, max_frame: usize) -> Result<Options> {
    let d = Options::default();
    let options = Options {
        max_key_len: s.limits.max_key_bytes.unwrap_or(d.max_key_len),
        max_value_len: s.limits.max_value_bytes.unwrap_or(d.max_value_len),
        new_id_for_copies: !s.keep_id_for_copies,
        ..d
    };
    // A record must fit a frame to replicate (keys, value and version metadata).
    let record = options.max_key_len.saturating_add(options.max_value_len);
    if record.saturating_add(64 * 1024) > max_frame {
        bail!(
            "limits: max_key_bytes + max_value_bytes ({record}) leave no room for metadata in max_frame_bytes ({max_frame}); \
             raise max_frame_bytes to at least their sum + 65536"
        );
    }
    Ok(options)
}

/// Discovery on the multicast `group` (HOST:PORT), received on that port
/// of every interface.
fn discovery(group: &str) -> Result<Discovery> {
    let group = resolve("discovery_group", group)?;
    if !group.ip().is_multicast() {
        bail!("discovery_group {group} is not a multicast address (for example {})", meshkv::node::DEFAULT_GROUP);
    }
    let any: std::net::IpAddr =
        if group.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    Ok(Discovery { bind: SocketAddr::new(any, group.port()), announce_to: vec![group], ..Discovery::default() })
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
    let peers = s.peers.iter().map(|p| resolve("peer", p).map(|a| (a, Mode::Sync))).collect::<Result<Vec<_>>>()?;
    let mut cfg = node_config(&s, listen, peers, args.insecure)?;
    cfg.metrics = s.metrics.as_deref().map(|m| resolve("metrics", m)).transpose()?;
    cfg.discovery = s.discovery.as_deref().map(discovery).transpose()?;
    let options = store_options(&s, cfg.max_frame)?;
    let secured = cfg.security.is_enabled();
    let idle_ms = cfg.link.idle_timeout_ms;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the tokio runtime")?;
    let served = runtime.block_on(async {
        // The library's errors already name their cause: no `{:#}` chain.
        // Sockets first: a node that cannot start (port in use, settings it
        // refuses) must not create or touch the store.
        let bound = Node::bind(cfg).await.map_err(|e| anyhow!("{e}"))?;
        let db = Db::open(&s.data, options)
            .map_err(|e| anyhow!("cannot open the data directory {}: {e}", s.data.display()))?;
        let node = bound.start(db.clone());
        let addr = node.local_addr().unwrap_or(listen);
        tracing::info!(
            %addr,
            node_id = %db.node_id(),
            data = %s.data.display(),
            cluster = %s.cluster,
            peers = ?s.peers,
            read_only = s.read_only,
            secured,
            "meshkv node serving"
        );
        if secured {
            tracing::info!("connections are authenticated with the cluster secret and encrypted (Noise)");
        } else if addr.ip().is_loopback() {
            tracing::info!("no cluster secret: listening on loopback only; connections are not authenticated");
        } else {
            tracing::warn!(%addr, "no cluster secret (--insecure): anyone who can reach this address can read and write");
        }
        if idle_ms < 3 * LinkConfig::default().ping_ms {
            tracing::warn!(
                idle_timeout_ms = idle_ms,
                "peers keep links alive by their own settings: give every node this idle_timeout_ms, \
                 or links to nodes with the default one will time out"
            );
        }
        let reason = run_until_signal(&node).await?;
        tracing::info!(reason, "shutting down");
        node.shutdown().await;
        db.sync().map_err(|e| anyhow!("cannot flush the store on shutdown: {e}"))?;
        tracing::info!("stopped");
        Ok(())
    });
    // Dropping the runtime would wait for a worker blocked in synchronous
    // code, which shutdown gave up on (it warned): do not.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
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
                keep_id_for_copies: false,
                peer_exchange: false,
                discovery: None,
                metrics: None,
                secret_file: None,
                client_secret_file: None,
                read_only_secret_file: None,
                busy_poll_us: 0,
                limits: Limits::default(),
            }
        );
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data = \"d\"\nlisten = \"127.0.0.1:1\"\npeers = [\"127.0.0.1:2\"]\ncluster = \"c\"\nread_only = true\n\
             busy_poll_us = 40\npeer_exchange = true\ndiscovery = true\nkeep_id_for_copies = true\n",
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
        let loopback: SocketAddr = "127.0.0.1:7420".parse().unwrap();
        assert_eq!(node_config(&s, loopback, vec![], false).unwrap().server.busy_poll, Duration::from_micros(40));
        assert!(node_config(&s, loopback, vec![], false).unwrap().peer_exchange);
        assert!(!store_options(&s, usize::MAX).unwrap().new_id_for_copies);
        assert_eq!(s.discovery, Some(meshkv::node::DEFAULT_GROUP.to_string()));
        let d = discovery(s.discovery.as_deref().unwrap()).unwrap();
        assert_eq!(
            (d.bind.port(), d.announce_to),
            (meshkv::node::DEFAULT_GROUP.port(), vec![meshkv::node::DEFAULT_GROUP])
        );
        assert!(d.bind.ip().is_unspecified());

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
            "--busy-poll-us",
            "25",
        ]);
        let s = settings(&args, &target).unwrap();
        assert_eq!(s.data, PathBuf::from("x"));
        assert_eq!(s.busy_poll_us, 25);
        assert_eq!(
            (s.listen.as_str(), s.peers, s.cluster.as_str()),
            ("127.0.0.1:3", vec!["127.0.0.1:4".to_string()], "z")
        );
    }

    #[test]
    fn secret_files_in_the_config_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "secret_file = \"s\"\nclient_secret_file = \"c\"\nread_only_secret_file = \"r\"\n")
            .unwrap();
        let (args, target) = parse(&["--config", path.to_str().unwrap()]);
        let s = settings(&args, &target).unwrap();
        let files = [s.secret_file, s.client_secret_file, s.read_only_secret_file];
        assert_eq!(files, ["s", "c", "r"].map(|f| Some(dir.path().join(f))));
    }

    /// The error of `serve --config FILE` for a file holding `text`.
    fn config_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        let (args, target) = parse(&["--config", path.to_str().unwrap()]);
        format!("{:#}", settings(&args, &target).unwrap_err())
    }

    #[test]
    fn a_busy_poll_budget_over_the_limit_is_refused() {
        let e = config_error("busy_poll_us = 20000\n");
        assert!(e.contains("busy_poll_us"), "{e}");
    }

    #[test]
    fn a_public_listener_needs_a_secret_or_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{}\n", meshkv::secure::Secret::generate().to_hex())).unwrap();
        let (args, target) = parse(&[]);
        let plain = settings(&args, &target).unwrap();
        let public: SocketAddr = "0.0.0.0:7420".parse().unwrap();
        let e = node_config(&plain, public, vec![], false).unwrap_err();
        assert!(format!("{e:#}").contains("--insecure"), "{e:#}");
        assert!(node_config(&plain, public, vec![], true).unwrap().allow_insecure);
        let loopback: SocketAddr = "127.0.0.1:7420".parse().unwrap();
        assert!(!node_config(&plain, loopback, vec![], false).unwrap().security.is_enabled());
        let remote_peer = vec![("10.0.0.2:7420".parse().unwrap(), Mode::Sync)];
        let e = node_config(&plain, loopback, remote_peer.clone(), false).unwrap_err();
        assert!(format!("{e:#}").contains("refusing to dial peer 10.0.0.2:7420"), "{e:#}");
        assert!(node_config(&plain, loopback, remote_peer, true).is_ok());

        let (args, target) = parse(&["--secret-file", secret.to_str().unwrap()]);
        let secured = settings(&args, &target).unwrap();
        assert!(node_config(&secured, public, vec![], false).unwrap().security.is_enabled());
        let (args, target) = parse(&["--read-only-secret-file", secret.to_str().unwrap()]);
        let e = node_config(&settings(&args, &target).unwrap(), loopback, vec![], false).unwrap_err();
        assert!(format!("{e:#}").contains("--secret-file"), "{e:#}");
    }

    #[test]
    fn limits_come_from_the_config_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_connections = 7\nmax_handshaking = 3\nidle_timeout_ms = 900\nmax_value_bytes = 1000\n\
             max_frame_bytes = 100000\nmax_watches = 2\n",
        )
        .unwrap();
        let (args, target) = parse(&["--config", path.to_str().unwrap()]);
        let s = settings(&args, &target).unwrap();
        let cfg = node_config(&s, "127.0.0.1:1".parse().unwrap(), vec![], false).unwrap();
        assert_eq!((cfg.max_connections, cfg.max_handshaking, cfg.max_frame), (7, 3, 100_000));
        assert_eq!((cfg.link.idle_timeout_ms, cfg.server.max_watches), (900, 2));
        assert_eq!(store_options(&s, cfg.max_frame).unwrap().max_value_len, 1000);
        let e = store_options(&s, 1000).unwrap_err();
        assert!(format!("{e:#}").contains("max_frame_bytes"), "{e:#}");
    }

    #[test]
    fn unknown_config_fields_are_errors() {
        let e = config_error("lissen = \"127.0.0.1:1\"\n");
        assert!(e.contains("lissen"), "{e}");
    }
}
