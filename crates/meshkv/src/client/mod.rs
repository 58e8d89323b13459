//! The remote client (the multileveldown role): talks to a running node over
//! TCP. Requests are pipelined over one connection; with `retry` on, a lost
//! connection is re-established and pending requests are re-sent, writes
//! applied at most once (the node remembers their request ids; a write sent
//! to a node that restarted since fails instead of being re-sent), and scans
//! resume after the last key received.
//!
//! With a cluster secret ([`ClientOptions::secret`]) the connection is
//! authenticated and encrypted. For the lowest latency run the client on a
//! runtime of its own (a current-thread runtime suffices): a request then
//! crosses no thread inside the client process.

mod conn;
mod inflight;
mod scan;

pub use scan::ScanStream;

use crate::protocol::request::{BatchOp, ErrorCode, RemoteError, Request, Response, Status, MAX_REQUEST_ITEMS};
use crate::storage::{KeyRange, ScanOptions};
use crate::version::{Dot, NodeId};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a client call can fail with: a stable [`ErrorCode`] and a message.
pub type Error = RemoteError;
/// Result of client calls.
pub type Result<T> = std::result::Result<T, Error>;

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Re-send pending requests after a reconnect (default `true`). A
    /// write is then applied once, unless the node forgot its reply past
    /// its retry memory. A write sent to a node that restarted before
    /// answering (its `Hello` names another incarnation) is not re-sent:
    /// it fails with [`ErrorCode::ConnectionLost`], applied or not. A node
    /// that refuses the reconnection for good (another protocol version,
    /// cluster or secret) fails the pending requests at once with its
    /// refusal (a write already sent: connection-lost). Off: every request
    /// pending when the connection is lost fails with it.
    pub retry: bool,
    /// Cluster name the node must have (default `meshkv`).
    pub cluster: String,
    /// Give up connecting after this long (per attempt; default 5 s).
    pub connect_timeout: Duration,
    /// First reconnect delay (default 50 ms), doubling up to 2 s.
    pub reconnect_min: Duration,
    /// Largest accepted frame (default 17 MiB). The node is told, and
    /// refuses a read whose reply would exceed it (bad-request) rather
    /// than send it; raise it to read values near a node's larger limits.
    pub max_frame: usize,
    /// An idle connection sends a ping this often (default 10 s); keep it
    /// well below the node's idle timeout (30 s by default).
    pub keepalive: Duration,
    /// The cluster secret (or the read-only client secret) to authenticate
    /// with; required by nodes that have one, refused by nodes that don't.
    pub secret: Option<crate::secure::Secret>,
    /// A call not answered within this fails with
    /// [`ErrorCode::ConnectionLost`] (default 30 s). A write that timed out
    /// may still be applied later if it was re-sent.
    pub request_timeout: Duration,
    /// While requests await replies, wait this long for a reply by
    /// busy-polling the socket before sleeping (default zero: off); see
    /// [`ServerOptions::busy_poll`](crate::node::ServerOptions::busy_poll).
    /// Blocks the client's runtime thread meanwhile.
    pub busy_poll: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: true,
            cluster: "meshkv".into(),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(50),
            max_frame: crate::protocol::codec::DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(30),
            secret: None,
            keepalive: Duration::from_secs(10),
            busy_poll: Duration::ZERO,
        }
    }
}

/// A change seen by a [`Client::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// `key` now has `value` (`None`: deleted).
    Change {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Option<Vec<u8>>,
    },
    /// Some changes were not delivered (slow reader or reconnect).
    Lagged,
}

pub(crate) enum Command {
    Call { request: Request, reply: oneshot::Sender<Result<Response>> },
    Watch { range: KeyRange, events: mpsc::Sender<WatchEvent>, reply: oneshot::Sender<Result<()>> },
}

/// A connection to a meshkv node. Cheap to clone; clones share the
/// connection. Dropping every clone closes it.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    retry: bool,
    timeout: Duration,
    /// The node's frame limit, as its last handshake stated it.
    max_request: Arc<AtomicUsize>,
}

impl Client {
    /// Connects to the node at `addr` (the first connection is made here, so
    /// a node that is down is reported at once).
    pub async fn connect(addr: SocketAddr, options: ClientOptions) -> Result<Client> {
        let id = NodeId::random();
        let (retry, timeout) = (options.retry, options.request_timeout);
        let first = conn::connect(addr, id, &options).await?;
        let (tx, rx) = mpsc::channel(1024);
        let max_request = Arc::new(AtomicUsize::new(first.max_request()));
        tokio::spawn(conn::run(addr, id, options, first, rx, Arc::clone(&max_request)));
        Ok(Client { tx, retry, timeout, max_request })
    }

    pub(crate) async fn call(&self, request: Request) -> Result<Response> {
        self.call_within(request).await.unwrap_or_else(|| Err(timed_out()))
    }

    /// A call; `None` if no reply came within the request timeout.
    pub(crate) async fn call_within(&self, request: Request) -> Option<Result<Response>> {
        if request.items() > MAX_REQUEST_ITEMS {
            let msg = format!("{} keys or operations in one request; at most {MAX_REQUEST_ITEMS}", request.items());
            return Some(Err(RemoteError::new(ErrorCode::BadRequest, msg)));
        }
        let (reply, rx) = oneshot::channel();
        let call = async {
            self.tx.send(Command::Call { request, reply }).await.map_err(|_| lost())?;
            rx.await.map_err(|_| lost())?
        };
        tokio::time::timeout(self.timeout, call).await.ok()
    }

    /// The value of `key`.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        match self.call(Request::Get { key: key.into() }).await? {
            Response::Value(v) => Ok(v.map(|b| b.into_vec())),
            other => Err(unexpected(other)),
        }
    }

    /// The values of `keys`, read from one snapshot, in order.
    pub async fn get_many(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>> {
        let keys = keys.into_iter().map(serde_bytes::ByteBuf::from).collect();
        match self.call(Request::GetMany { keys }).await? {
            Response::Values(v) => Ok(v.into_iter().map(|b| b.map(|b| b.into_vec())).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Stores `value` under `key`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<Option<Dot>> {
        self.batch(vec![BatchOp::Put { key: key.into(), value: value.into() }]).await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<Option<Dot>> {
        self.batch(vec![BatchOp::Delete { key: key.into() }]).await
    }

    /// Applies `ops` atomically on the node.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<Option<Dot>> {
        match self.call(Request::Write { ops }).await? {
            Response::Written(dot) => Ok(dot),
            other => Err(unexpected(other)),
        }
    }

    /// Streams entries in batches of `chunk`, each batch fetched when the
    /// previous one is consumed (backpressure). With retry on, a lost
    /// connection resumes right after the last key received.
    pub fn scan(&self, options: ScanOptions, chunk: u32) -> ScanStream {
        ScanStream::new(self.clone(), options, chunk)
    }

    /// Live changes to keys in `range`, from now on. Like a call, fails
    /// with [`ErrorCode::ConnectionLost`] if the node has not confirmed
    /// the watch within the request timeout.
    pub async fn watch(&self, range: KeyRange) -> Result<mpsc::Receiver<WatchEvent>> {
        let (events, rx) = mpsc::channel(1024);
        let (reply, done) = oneshot::channel();
        let register = async {
            self.tx.send(Command::Watch { range, events, reply }).await.map_err(|_| lost())?;
            done.await.map_err(|_| lost())?
        };
        // On a timeout `rx` is dropped: the watch is never set up, or stopped
        // on the node once it is (as any dropped watch).
        tokio::time::timeout(self.timeout, register).await.unwrap_or_else(|_| Err(timed_out()))?;
        Ok(rx)
    }

    /// The largest request the node takes, in encoded bytes (its frame
    /// limit). A larger one is refused here with
    /// [`ErrorCode::BadRequest`], without being sent.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request.load(Ordering::Relaxed)
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status> {
        match self.call(Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` without waiting for (or caring about) the reply.
    pub(crate) fn forget(&self, request: Request) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.try_send(Command::Call { request, reply });
    }

    pub(crate) fn retries(&self) -> bool {
        self.retry
    }
}

pub(crate) fn timed_out() -> Error {
    RemoteError::new(ErrorCode::ConnectionLost, "no reply from the node in time")
}

pub(crate) fn lost() -> Error {
    RemoteError::new(ErrorCode::ConnectionLost, "connection to the node lost")
}

fn unexpected(r: Response) -> Error {
    RemoteError::new(ErrorCode::BadRequest, format!("unexpected reply {r:?}"))
}
