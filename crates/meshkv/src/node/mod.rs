//! The node runtime: a [`Db`] replicating with peers over TCP in the
//! background. Listens, dials static peers (added or removed at run time),
//! keeps one connection per peer, reconnects with backoff, and reports
//! events. The protocol itself lives in [`crate::protocol`].

mod admission;
mod connection;
mod dialer;
mod discovery;
mod exchange;
mod group;
mod inbox;
mod metrics;
mod registry;
mod retry;
mod session;

pub use discovery::{Discovery, DEFAULT_GROUP};
pub use registry::{PeerState, PeerStatus};
pub use session::{ServerOptions, WriteHook};

use crate::protocol::{codec, CloseReason, LinkConfig, Mode};
use crate::secure::Security;
use crate::storage::{Conflict, ConflictEvent, Db, FeedError};
use crate::version::NodeId;
use connection::ConnCtx;
use registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

/// Settings of a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Address to listen on; `None` runs without a listener (dial only).
    pub listen: Option<SocketAddr>,
    /// Peers to dial, each with the mode of its link.
    pub peers: Vec<(SocketAddr, Mode)>,
    /// Mode offered to peers that dial us.
    pub accept_mode: Mode,
    /// Protocol settings shared by all links (cluster name, windows, timeouts).
    pub link: LinkConfig,
    /// Accepted connections past their handshake, at most (default 256);
    /// one more is refused with `Close { Overloaded }`.
    pub max_connections: usize,
    /// Accepted connections still in their handshake, at most (default
    /// 64, and as many more that proved the secret); a new one evicts the
    /// oldest of the address holding the most. Bounds what silent or slow
    /// sockets can hold; each also has `link.handshake_timeout_ms` to finish.
    pub max_handshaking: usize,
    /// First reconnect delay (default 100 ms); doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 10 s).
    pub backoff_max: Duration,
    /// Largest accepted frame in bytes.
    pub max_frame: usize,
    /// How remote clients are served (read-only, validation hook, limits).
    pub server: ServerOptions,
    /// The cluster secret, and optional client and read-only secrets for
    /// clients: every connection must prove one of them. Without a cluster
    /// secret, connections are plaintext and unauthenticated, and only a
    /// loopback listener is allowed.
    pub security: Security,
    /// Allow a non-loopback listener, and non-loopback peers, without a
    /// secret (trusted networks only).
    pub allow_insecure: bool,
    /// Peer exchange (default off): tell peers where we and our other peers
    /// listen, and dial the peers they tell us about (at most 64 learned;
    /// without a secret, only loopback addresses unless `allow_insecure`).
    /// Turns a chain or a star into a mesh, so leave it off where the
    /// topology is deliberate (hub and spokes).
    pub peer_exchange: bool,
    /// A peer learned through peer exchange or discovery that has not been
    /// reachable for this long is forgotten (default 60 s); it is learned
    /// again when a peer shares it or it announces itself again.
    pub forget_learned_after: Duration,
    /// LAN discovery (`None`, the default: off): announce this node to a
    /// multicast group and dial the nodes of the cluster heard there, as
    /// peer exchange does (same limits). Needs the cluster secret, which
    /// authenticates the announcements.
    pub discovery: Option<Discovery>,
    /// Address of an HTTP listener serving Prometheus metrics at
    /// `/metrics` (`None`: no metrics endpoint). It exposes counters and
    /// peer addresses, never data, and needs no credentials.
    pub metrics: Option<SocketAddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7420))),
            peers: Vec::new(),
            accept_mode: Mode::Sync,
            link: LinkConfig::default(),
            max_connections: 256,
            max_handshaking: 64,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_frame: codec::DEFAULT_MAX_FRAME,
            server: ServerOptions::default(),
            security: Security::default(),
            allow_insecure: false,
            peer_exchange: false,
            forget_learned_after: Duration::from_secs(60),
            discovery: None,
            metrics: None,
        }
    }
}

/// Something that happened to a node's links.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A link to `peer` is up.
    Connected {
        /// The peer's id.
        peer: NodeId,
        /// Its address (remote socket address for inbound links).
        addr: SocketAddr,
    },
    /// A complete catch-up from `peer` was applied.
    CaughtUp {
        /// The peer's id.
        peer: NodeId,
    },
    /// Concurrent writes to `key` were settled (local or replicated merge).
    Conflict {
        /// The key.
        key: Vec<u8>,
        /// Winner and losers.
        conflict: Conflict,
    },
    /// A link failed because of bad input or a local storage error; the
    /// connection was closed, the node keeps serving.
    Error {
        /// The remote address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// A link to `peer` went down.
    Disconnected {
        /// The peer's id.
        peer: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// Why, if a close message said so.
        reason: Option<CloseReason>,
    },
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The listen address could not be bound (in use, not local, no
    /// permission). Nothing was started.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What it was for: "peers and clients", "metrics" or "discovery".
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The listen address is reachable from other hosts but no secret is
    /// configured (and `allow_insecure` is off). Nothing was started.
    #[error(
        "refusing to listen on {addr} without a cluster secret: it is not a loopback address, so anyone who \
         can reach it could read and write every record; configure a secret (meshkv secret) or allow insecure \
         listening explicitly"
    )]
    Insecure {
        /// The address.
        addr: SocketAddr,
    },
    /// A static peer is reachable only over the network but no secret is
    /// configured (and `allow_insecure` is off): its records would cross
    /// the network in clear, and whatever answers there would be merged.
    /// Nothing was started.
    #[error(
        "refusing to dial peer {addr} without a cluster secret: it is not a loopback address, so records would \
         cross the network unencrypted to and from whoever answers there; configure a secret (meshkv secret) or \
         allow insecure links explicitly"
    )]
    InsecurePeer {
        /// The peer's address.
        addr: SocketAddr,
    },
    /// The settings contradict each other. Nothing was started.
    #[error("invalid node configuration: {0}")]
    Config(String),
}

/// How long [`Node::shutdown`] waits, after its 5 s bound and aborting the
/// tasks still running, for them to be dropped and release the store.
pub const SHUTDOWN_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A running node. Dropping it (or [`Node::shutdown`]) stops replication.
pub struct Node {
    db: Db,
    local_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    discovery_addr: Option<SocketAddr>,
    metrics: Arc<metrics::NodeMetrics>,
    registry: Arc<Registry>,
    events: broadcast::Sender<NodeEvent>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    ctx: ConnCtx,
    /// Ends once every clone of `ctx` is dropped (see [`ConnCtx::alive`]).
    released: tokio::sync::mpsc::Receiver<()>,
    cfg: NodeConfig,
}

impl Node {
    /// Starts replicating `db`: binds the listener and dials the peers.
    /// Must be called within a tokio runtime.
    pub async fn start(db: Db, cfg: NodeConfig) -> Result<Node, NodeError> {
        Ok(Node::bind(cfg).await?.start(db))
    }

    /// Checks `cfg` and binds its sockets (listener, metrics, discovery)
    /// without a store: a program that opens (and perhaps creates) its
    /// store only once this succeeded leaves nothing behind when the node
    /// cannot start. [`BoundNode::start`] then serves the store. Must be
    /// called within a tokio runtime.
    pub async fn bind(cfg: NodeConfig) -> Result<BoundNode, NodeError> {
        cfg.security.check().map_err(NodeError::Config)?;
        if let Some(d) = &cfg.discovery {
            discovery::check(d, &cfg).map_err(NodeError::Config)?;
        }
        match cfg.listen {
            Some(addr) if !addr.ip().is_loopback() && !cfg.security.is_enabled() && !cfg.allow_insecure => {
                return Err(NodeError::Insecure { addr });
            }
            _ => {}
        }
        if let Some(&(addr, _)) = cfg.peers.iter().find(|(addr, _)| !dialer::may_dial(&cfg, *addr)) {
            return Err(NodeError::InsecurePeer { addr });
        }
        let listen = |addr, what| move |source| NodeError::Listen { addr, what, source };
        let listener = match cfg.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(listen(addr, "peers and clients"))?),
            None => None,
        };
        let metrics_listener = match cfg.metrics {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(listen(addr, "metrics"))?),
            None => None,
        };
        let discovery_socket = match &cfg.discovery {
            Some(d) => Some(discovery::bind(d).map_err(listen(d.bind, "discovery"))?),
            None => None,
        };
        Ok(BoundNode { cfg, listener, metrics_listener, discovery_socket })
    }
}

/// A node whose configuration was checked and whose sockets are bound,
/// not yet serving a store (see [`Node::bind`]). Dropping it releases the
/// sockets.
pub struct BoundNode {
    cfg: NodeConfig,
    listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    discovery_socket: Option<tokio::net::UdpSocket>,
}

impl BoundNode {
    /// The address the node listens on for peers and clients, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts replicating `db` on the bound sockets and dials the peers.
    /// Must be called within a tokio runtime.
    pub fn start(self, db: Db) -> Node {
        let BoundNode { cfg, listener, metrics_listener, discovery_socket } = self;
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let discovery_addr = discovery_socket.as_ref().and_then(|s| s.local_addr().ok());
        let (events, _) = broadcast::channel(1024);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let registry = Arc::new(Registry::new());
        let retry_memory = match cfg.server.retry_memory {
            0 => 65_536,
            n => n,
        };
        // Addresses learned by peer exchange and discovery go to one task.
        let (learned_tx, learned_rx) = match cfg.peer_exchange || cfg.discovery.is_some() {
            true => {
                let (tx, rx) = tokio::sync::mpsc::channel(exchange::QUEUE);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let (alive, released) = tokio::sync::mpsc::channel(1);
        let ctx = ConnCtx {
            db: db.clone(),
            exchange: learned_tx.clone().filter(|_| cfg.peer_exchange),
            share_refresh: (cfg.forget_learned_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(30)),
            cluster: cfg.link.cluster.clone(),
            local_addr,
            server: Arc::new(connection::ServerState {
                options: cfg.server.clone(),
                retries: retry::RetryCache::new(retry_memory),
                incarnation: rand::random_range(1..=u64::MAX),
                idle_timeout: Duration::from_millis(cfg.link.idle_timeout_ms),
                refusal_log: connection::RateLimit::new(Duration::from_secs(5)),
                next_cursor: std::sync::atomic::AtomicU64::new(1),
                key_count: std::sync::Mutex::new(None),
            }),
            registry: Arc::clone(&registry),
            events: events.clone(),
            shutdown: shutdown_rx,
            max_frame: cfg.max_frame,
            security: cfg.security.clone(),
            started: Instant::now(),
            alive,
        };
        let metrics = Arc::new(metrics::NodeMetrics::new(db.clone(), Arc::clone(&registry), ctx.started));
        let mut node = Node {
            db,
            local_addr,
            metrics_addr,
            discovery_addr,
            metrics,
            registry,
            events,
            shutdown,
            tasks: JoinSet::new(),
            ctx,
            released,
            cfg: cfg.clone(),
        };
        if let (Some(listener), Some(addr)) = (metrics_listener, metrics_addr) {
            tracing::info!(%addr, "serving metrics at /metrics");
            node.tasks.spawn(metrics::serve(listener, Arc::clone(&node.metrics), node.ctx.shutdown.clone()));
        }
        if let Some(listener) = listener {
            if let Some(addr) = local_addr {
                tracing::info!(%addr, node = %node.db.node_id(), secured = cfg.security.is_enabled(), "listening");
                if !cfg.security.is_enabled() {
                    tracing::warn!(%addr, "no cluster secret: connections are neither authenticated nor encrypted");
                }
            }
            node.tasks.spawn(accept_loop(listener, node.ctx.clone(), cfg.clone()));
        }
        node.tasks.spawn(forward_conflicts(node.db.clone(), node.events.clone(), node.ctx.shutdown.clone()));
        if let Some(lists) = learned_rx {
            node.tasks.spawn(exchange::run(node.ctx.clone(), cfg.clone(), lists));
        }
        if let (Some(socket), Some(d), Some(secret), Some(learned)) =
            (discovery_socket, &cfg.discovery, &cfg.security.secret, learned_tx)
        {
            tracing::info!(addr = ?discovery_addr, announce_to = ?d.announce_to, "discovering peers");
            node.tasks.spawn(discovery::run(node.ctx.clone(), d.clone(), socket, secret.clone(), learned));
        }
        for (addr, mode) in cfg.peers {
            node.add_peer(addr, mode);
        }
        node
    }
}

impl Node {
    /// The store this node replicates.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The address the listener is bound to (with the real port if 0 was asked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The address the metrics endpoint is bound to, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address the discovery socket is bound to, if discovery is on.
    pub fn discovery_addr(&self) -> Option<SocketAddr> {
        self.discovery_addr
    }

    /// The node's metrics in the Prometheus text format, as the metrics
    /// endpoint serves them.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Events about links; each subscriber sees those after it subscribed.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Current connections and dial targets.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.registry.statuses(&self.ctx.db.version_vector())
    }

    /// Starts dialing `addr` (again) with the given link mode. Without a
    /// secret (and `allow_insecure`), an address beyond loopback is not
    /// dialed: the node logs it and reports [`NodeEvent::Error`].
    pub fn add_peer(&mut self, addr: SocketAddr, mode: Mode) {
        if !dialer::may_dial(&self.cfg, addr) {
            let message = NodeError::InsecurePeer { addr }.to_string();
            tracing::error!(%addr, "{message}");
            let _ = self.events.send(NodeEvent::Error { addr, message });
            return;
        }
        if let Some(token) = self.registry.set_dial(addr, mode) {
            self.tasks.spawn(dialer::dial_loop(self.ctx.clone(), self.cfg.clone(), addr, token));
        }
    }

    /// Stops dialing `addr` and closes the link to the node behind it.
    /// (If that node dials us itself, it can still connect.)
    pub fn remove_peer(&mut self, addr: SocketAddr) {
        self.registry.remove_dial(addr);
        if let Some(peer) = self.registry.known_id(addr) {
            self.registry.close_peer(peer);
        }
    }

    /// Stops accepting, closes every link with a `Close`, and waits for
    /// the tasks to finish (at most 5 s, then aborts the rest). The store
    /// stays open; once this returns no task of the node uses it, so it can
    /// be closed and opened again — unless a task is stuck in synchronous
    /// code (a write hook that does not return, a write on a dead disk):
    /// shutdown waits [`SHUTDOWN_RELEASE_WAIT`] more for the aborted tasks
    /// to let go of the store, then logs a warning and returns anyway.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.registry.close_all();
        let drained =
            tokio::time::timeout(Duration::from_secs(5), async { while self.tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
        // Aborted tasks, and the connections the accept loop spawned, are
        // dropped at their next poll, not by `abort_all`: wait for that,
        // but not for ever (a task blocked inside a poll is not dropped
        // until that poll returns).
        let (closed, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.ctx.alive, closed));
        let released = tokio::time::timeout(SHUTDOWN_RELEASE_WAIT, async {
            while self.tasks.join_next().await.is_some() {}
            while self.released.recv().await.is_some() {}
        })
        .await;
        if released.is_err() {
            tracing::warn!(
                waited = ?SHUTDOWN_RELEASE_WAIT,
                "shutdown: tasks of the node are still blocked and hold the store (a write hook or a write \
                 that does not return); returning without them: the data directory stays locked until they end"
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
    }
}

/// The next commit of an optional feed subscription; never ready without one.
async fn next_commit(
    feed: &mut Option<crate::storage::Subscription>,
) -> Result<Arc<crate::storage::Commit>, FeedError> {
    match feed {
        Some(f) => f.recv_commit().await,
        None => std::future::pending().await,
    }
}

/// Republishes the conflicts merges settle as node events.
async fn forward_conflicts(db: Db, events: broadcast::Sender<NodeEvent>, mut shutdown: watch::Receiver<bool>) {
    const LAG_WARN_INTERVAL: Duration = Duration::from_secs(10);
    let mut conflicts = db.subscribe_conflicts();
    let (mut dropped, mut last_warned) = (0u64, None);
    loop {
        let event = tokio::select! {
            e = conflicts.recv() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            Ok(event) => {
                let ConflictEvent { key, conflict } = &*event;
                tracing::debug!(key = ?String::from_utf8_lossy(key), ?conflict, "conflict settled");
                let _ = events.send(NodeEvent::Conflict { key: key.clone(), conflict: conflict.clone() });
            }
            Err(FeedError::Lagged { missed }) => {
                // Under a storm of conflicts this repeats; say it once per interval.
                dropped += missed;
                if last_warned.is_none_or(|t: Instant| t.elapsed() >= LAG_WARN_INTERVAL) {
                    tracing::warn!(missed = dropped, "conflict events dropped (conflicts are still counted)");
                    dropped = 0;
                    last_warned = Some(Instant::now());
                }
            }
            Err(_) => return,
        }
    }
}

/// The next connection on `listener`, or `None` once shutdown is signalled.
async fn accept_next(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = shutdown.changed() => return None,
        };
        match accepted {
            Ok(x) => return Some(x),
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, ctx: ConnCtx, cfg: NodeConfig) {
    let admission = admission::Admission::new(cfg.max_handshaking, cfg.max_connections);
    let mut shutdown = ctx.shutdown.clone();
    // Held here so that shutdown waits for them (each watches the signal).
    let mut connections = JoinSet::new();
    while let Some((stream, addr)) = accept_next(&listener, &mut shutdown, "peers and clients").await {
        while connections.try_join_next().is_some() {}
        let ticket = admission.start(addr.ip());
        let ctx = ctx.clone();
        let link = LinkConfig { mode: cfg.accept_mode, ..cfg.link.clone() };
        connections.spawn(connection::accepted(ctx, stream, addr, link, ticket));
    }
    while connections.join_next().await.is_some() {}
}
