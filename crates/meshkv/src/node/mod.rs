//! The node runtime: a [`Db`] replicating with peers over TCP in the
//! background. Listens, dials static peers (added or removed at run time),
//! keeps one connection per peer, reconnects with backoff, and reports
//! events. The protocol itself lives in [`crate::protocol`].

mod connection;
mod dialer;
mod registry;
mod session;

pub use registry::{PeerState, PeerStatus};
pub use session::{ServerOptions, WriteHook};

use crate::protocol::{codec, CloseReason, LinkConfig, Mode};
use crate::storage::{Conflict, Db, FeedError};
use crate::version::NodeId;
use connection::ConnCtx;
use registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch, Semaphore};
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
    /// Maximum simultaneous connections (default 256).
    pub max_connections: usize,
    /// First reconnect delay (default 100 ms); doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 10 s).
    pub backoff_max: Duration,
    /// Largest accepted frame in bytes.
    pub max_frame: usize,
    /// How remote clients are served (read-only, validation hook).
    pub server: ServerOptions,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7420))),
            peers: Vec::new(),
            accept_mode: Mode::Sync,
            link: LinkConfig::default(),
            max_connections: 256,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_frame: codec::DEFAULT_MAX_FRAME,
            server: ServerOptions::default(),
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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running node. Dropping it (or [`Node::shutdown`]) stops replication.
pub struct Node {
    db: Db,
    local_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    events: broadcast::Sender<NodeEvent>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    ctx: ConnCtx,
    cfg: NodeConfig,
}

impl Node {
    /// Starts replicating `db`: binds the listener and dials the peers.
    /// Must be called within a tokio runtime.
    pub async fn start(db: Db, cfg: NodeConfig) -> Result<Node, NodeError> {
        let listener = match cfg.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| NodeError::Listen { addr, source })?),
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let (events, _) = broadcast::channel(1024);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let registry = Arc::new(Registry::new());
        let retry_memory = match cfg.server.retry_memory {
            0 => 65_536,
            n => n,
        };
        let ctx = ConnCtx {
            db: db.clone(),
            cluster: cfg.link.cluster.clone(),
            local_addr,
            server: Arc::new(connection::ServerState {
                options: cfg.server.clone(),
                retries: session::RetryCache::new(retry_memory),
                next_cursor: std::sync::atomic::AtomicU64::new(1),
            }),
            registry: Arc::clone(&registry),
            events: events.clone(),
            shutdown: shutdown_rx,
            max_frame: cfg.max_frame,
            started: Instant::now(),
        };
        let mut node =
            Node { db, local_addr, registry, events, shutdown, tasks: JoinSet::new(), ctx, cfg: cfg.clone() };
        if let Some(listener) = listener {
            if let Some(addr) = local_addr {
                tracing::info!(%addr, node = %node.db.node_id(), "listening");
            }
            node.tasks.spawn(accept_loop(listener, node.ctx.clone(), cfg.clone()));
        }
        node.tasks.spawn(forward_conflicts(node.db.clone(), node.events.clone(), node.ctx.shutdown.clone()));
        for (addr, mode) in cfg.peers {
            node.add_peer(addr, mode);
        }
        Ok(node)
    }

    /// The store this node replicates.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The address the listener is bound to (with the real port if 0 was asked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Events about links; each subscriber sees those after it subscribed.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Current connections and dial targets.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.registry.statuses()
    }

    /// Starts dialing `addr` (again) with the given link mode.
    pub fn add_peer(&mut self, addr: SocketAddr, mode: Mode) {
        if self.registry.dial_mode(addr).is_some() {
            self.registry.set_dial(addr, Some(mode));
            return;
        }
        self.registry.set_dial(addr, Some(mode));
        self.tasks.spawn(dialer::dial_loop(self.ctx.clone(), self.cfg.clone(), addr));
    }

    /// Stops dialing `addr` and closes the link to the node behind it.
    /// (If that node dials us itself, it can still connect.)
    pub fn remove_peer(&mut self, addr: SocketAddr) {
        self.registry.set_dial(addr, None);
        if let Some(peer) = self.registry.known_id(addr) {
            self.registry.close_peer(peer);
        }
    }

    /// Stops accepting, closes every link with a `Close`, and waits for
    /// the tasks to finish. The store stays open.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.registry.close_all();
        let drained =
            tokio::time::timeout(Duration::from_secs(5), async { while self.tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
    }
}

/// Republishes conflicts from the change feed as node events.
async fn forward_conflicts(db: Db, events: broadcast::Sender<NodeEvent>, mut shutdown: watch::Receiver<bool>) {
    let mut feed = db.subscribe(crate::KeyRange::all());
    loop {
        let commit = tokio::select! {
            c = feed.recv_commit() => c,
            _ = shutdown.changed() => return,
        };
        match commit {
            Ok(commit) => {
                for change in &commit.changes {
                    if let Some(conflict) = &change.conflict {
                        tracing::debug!(key = ?String::from_utf8_lossy(&change.key), ?conflict, "conflict settled");
                        let _ =
                            events.send(NodeEvent::Conflict { key: change.key.clone(), conflict: conflict.clone() });
                    }
                }
            }
            Err(FeedError::Lagged { missed }) => tracing::warn!(missed, "conflict events dropped: feed lagged"),
            Err(_) => return,
        }
    }
}

async fn accept_loop(listener: TcpListener, ctx: ConnCtx, cfg: NodeConfig) {
    let limit = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = shutdown.changed() => return,
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%addr, limit = cfg.max_connections, "connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let link = LinkConfig { mode: cfg.accept_mode, ..cfg.link.clone() };
        tokio::spawn(async move {
            connection::run(ctx, stream, addr, link, false).await;
            drop(permit);
        });
    }
}
