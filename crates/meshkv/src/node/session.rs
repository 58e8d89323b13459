//! The server side of a remote client: requests against the local store,
//! streamed scans with cursors, watches, at-most-once retries, read-only
//! listeners and validation hooks.

use super::connection::ConnCtx;
use super::group::{self, Queued, WriteGroup};
use super::registry::PeerState;
use super::retry::{Outcome, RequestKey};
use crate::net::{BusyPoll, FrameReader, FrameWriter};
use crate::protocol::request::{BatchOp, ErrorCode, PeerInfo, RemoteError, Request, Response, Status};
use crate::protocol::{codec, version_refusal, CloseReason, Hello, Message, Role, MAGIC, PROTOCOL_VERSION};
use crate::secure::Access;
use crate::storage::{Batch, Db, Error as StorageError, FeedError, KeyRange, Scan, ScanOptions};
use crate::version::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A scan chunk takes no further entry that would bring its keys and values
/// past this many bytes (its first entry always fits a frame by itself).
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;
/// Room left in a frame for a reply's framing and metadata.
const REPLY_OVERHEAD: usize = 64 * 1024;

/// A validation hook: sees every write (a put or delete is a batch of one)
/// before it is applied; an `Err` refuses it with that message. It runs
/// on a runtime worker and must not block for long:
/// [`Node::shutdown`](super::Node::shutdown) gives up on a session stuck
/// in it after its bounds, leaving the store held.
pub type WriteHook = dyn Fn(&[BatchOp]) -> Result<(), String> + Send + Sync;

/// How a node serves remote clients.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Refuse every write with [`ErrorCode::ReadOnly`].
    pub read_only: bool,
    /// Called before every write; see [`WriteHook`].
    pub hook: Option<Arc<WriteHook>>,
    /// Open scan cursors per client (default 16 when 0).
    pub max_cursors: usize,
    /// Live watches per client (default 16 when 0).
    pub max_watches: usize,
    /// Requests of one client answered before their replies are written
    /// (default 128 when 0). Further pipelined requests wait in the
    /// client's socket, so a client that never reads costs bounded memory.
    pub max_in_flight: usize,
    /// Write replies remembered for retried requests (default 65 536 when 0).
    pub retry_memory: usize,
    /// After answering, wait this long for the client's next request by
    /// busy-polling its socket instead of sleeping (default zero: off).
    /// Sequential clients on virtual machines, where waking a sleeping
    /// thread costs tens of microseconds, get several times the round
    /// trips; each answered burst costs up to this much CPU. Tens of
    /// microseconds are enough on loopback.
    pub busy_poll: Duration,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions").field("read_only", &self.read_only).field("hook", &self.hook.is_some()).finish()
    }
}

/// Bytes of keys and values a reply may carry in a frame of `frame` bytes:
/// room is left for the reply's own encoding (64 KiB, or an eighth of a
/// smaller frame).
fn reply_limit(frame: usize) -> usize {
    frame - REPLY_OVERHEAD.min(frame / 8)
}

/// Refuses a reply carrying `bytes` of keys and values (described by
/// `what`, built only then) over `limit`, which the client could not read.
fn fits(limit: usize, bytes: usize, what: impl FnOnce() -> String) -> Result<(), RemoteError> {
    if bytes <= limit {
        return Ok(());
    }
    let msg = format!(
        "{} ({bytes} bytes) exceeds the reply limit of {limit} bytes (the smaller of the node's and this \
         client's max_frame, less room for the reply's encoding)",
        what()
    );
    Err(RemoteError::new(ErrorCode::BadRequest, msg))
}

/// Serves one client connection until it closes, is idle for the idle
/// timeout, or stops reading our replies for that long.
pub(crate) async fn serve(
    ctx: &ConnCtx,
    hello: Hello,
    mut incoming: FrameReader,
    mut out: FrameWriter,
    addr: SocketAddr,
    access: Access,
) {
    let refusal = if hello.magic != MAGIC {
        Some(CloseReason::ProtocolError)
    } else if hello.version != PROTOCOL_VERSION {
        Some(CloseReason::VersionMismatch)
    } else if hello.cluster != ctx.cluster {
        Some(CloseReason::WrongCluster)
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!(%addr, ?reason, version = hello.version, "refusing client");
        let refusal = match reason {
            CloseReason::VersionMismatch => version_refusal(hello.version),
            _ => vec![Message::Close { reason }],
        };
        for msg in &refusal {
            let _ = out.queue(msg);
        }
        let _ = out.flush().await;
        return;
    }
    let ours = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster: ctx.cluster.clone(),
        node: ctx.db.node_id(),
        role: Role::Peer,
        mode: crate::protocol::Mode::Sync,
        policy: ctx.db.options().policy.fingerprint(),
        max_frame: ctx.max_frame as u64,
        incarnation: ctx.server.incarnation,
    };
    if out.send(&Message::Hello(ours)).await.is_err() {
        return;
    }
    tracing::debug!(%addr, client = %hello.node, ?access, "client connected");
    let limits = Limits::of(&ctx.server.options);
    let idle = ctx.server.idle_timeout;
    // The client reads frames up to the size it stated: never send more.
    let client_frame = usize::try_from(hello.max_frame).ok().filter(|n| *n > 0).unwrap_or(usize::MAX);
    let mut session = Session {
        ctx,
        client: hello.node,
        reply_limit: reply_limit(ctx.max_frame.min(client_frame)),
        read_only: access == Access::ReadOnly || ctx.server.options.read_only,
        limits,
        cursors: HashMap::new(),
        next_watch: 1,
        watches: Vec::new(),
        writes: WriteGroup::new(),
    };
    let mut feed = None;
    // Only frames from the client count as activity (not our watch events).
    let mut last_heard = tokio::time::Instant::now();
    // Re-armed only when it fires, not on every request.
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut shutdown = ctx.shutdown.clone();
    let mut busy_poll = BusyPoll::new(ctx.server.options.busy_poll);
    let mut answered = false;
    loop {
        if answered {
            busy_poll.wait(&mut incoming).await;
        }
        answered = false;
        let msg = tokio::select! {
            msg = incoming.next() => {
                last_heard = tokio::time::Instant::now();
                msg
            }
            commit = super::next_commit(&mut feed) => {
                match commit {
                    Ok(commit) => {
                        for ev in session.watch_events(&commit) {
                            if out.queue(&ev).is_err() {
                                return;
                            }
                        }
                    }
                    Err(FeedError::Lagged { missed }) => {
                        for (watch, _) in &session.watches {
                            if out.queue(&Message::WatchLagged { watch: *watch, missed }).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                }
                if !flush(&mut out, idle, addr, &shutdown).await {
                    return;
                }
                continue;
            }
            _ = &mut idle_timer => {
                if last_heard.elapsed() < idle {
                    idle_timer.as_mut().reset(last_heard + idle);
                    continue;
                }
                tracing::debug!(%addr, "client idle for too long; closing");
                let _ = out.queue(&Message::Close { reason: CloseReason::Timeout });
                flush(&mut out, idle, addr, &shutdown).await;
                return;
            }
            _ = shutdown.changed() => {
                let _ = out.queue(&Message::Close { reason: CloseReason::Shutdown });
                flush(&mut out, idle, addr, &shutdown).await;
                return;
            }
        };
        // Answer this request and any others already received (up to the
        // in-flight limit), then write all replies at once: pipelined
        // clients get one write per burst, and one that never reads its
        // replies holds at most a burst of them here (TCP holds the rest).
        // Consecutive writes are committed together (see `WriteGroup`);
        // any other request first commits the writes before it, so it
        // sees them, and replies keep the order of the requests.
        let mut replies = Vec::new();
        let mut next = msg;
        for answered in 1..=limits.in_flight {
            let close = match next {
                Some(Ok(Message::Request { id, request: Request::Write { ops } })) if !session.read_only => {
                    session.queue_write(id, ops, &mut replies);
                    None
                }
                Some(Ok(Message::Request { id, request })) => {
                    session.commit_writes(&mut replies);
                    let watching = matches!(request, Request::Watch { .. });
                    let result = session.handle(id, request);
                    if watching && result.is_ok() && feed.is_none() {
                        feed = Some(ctx.db.subscribe(KeyRange::all()));
                    } else if session.watches.is_empty() {
                        // No subscriber: writes need not publish for us.
                        feed = None;
                    }
                    codec::encode(&Message::Reply { id, result }, &mut replies);
                    None
                }
                Some(Ok(Message::Ping)) => None,
                Some(Ok(Message::Close { .. })) | None => Some(None),
                Some(Ok(other)) => {
                    tracing::warn!(%addr, kind = other.kind(), "unexpected message from client");
                    Some(Some(CloseReason::ProtocolError))
                }
                Some(Err(e)) => {
                    tracing::warn!(%addr, error = %e, "bad input from client, closing");
                    Some(Some(CloseReason::ProtocolError))
                }
            };
            if let Some(reason) = close {
                session.commit_writes(&mut replies);
                if let Some(reason) = reason {
                    codec::encode(&Message::Close { reason }, &mut replies);
                }
                if out.queue_frames(&replies).is_ok() {
                    flush(&mut out, idle, addr, &shutdown).await;
                }
                return;
            }
            // Take the next frame only if it will be answered in this burst.
            if answered == limits.in_flight || replies.len() >= 1 << 20 {
                break;
            }
            match incoming.try_next() {
                Some(m) => next = Some(m),
                None => break,
            }
        }
        session.commit_writes(&mut replies);
        if out.queue_frames(&replies).is_err() || !flush(&mut out, idle, addr, &shutdown).await {
            return;
        }
        answered = true;
    }
}

/// Writes what is queued; `false` if the connection failed or the client
/// did not read for `idle`.
async fn flush(out: &mut FrameWriter, idle: Duration, addr: SocketAddr, shutdown: &watch::Receiver<bool>) -> bool {
    // Most replies fit in the socket's buffer: no timer for those.
    if out.try_flush().is_err() {
        return false;
    }
    if out.pending() == 0 {
        return true;
    }
    // Once the node shuts down, a client that does not read gets only a
    // moment more, so that shutdown does not wait for it.
    let mut shutdown = shutdown.clone();
    let closing = async {
        if !*shutdown.borrow_and_update() {
            let _ = shutdown.changed().await;
        }
        tokio::time::sleep(CLOSING_FLUSH).await;
    };
    tokio::select! {
        written = tokio::time::timeout(idle, out.flush()) => match written {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(%addr, "client stopped reading replies; closing");
                false
            }
        },
        () = closing => {
            tracing::debug!(%addr, "shutting down while the client does not read; closing");
            false
        }
    }
}

/// How long a session of a node that shuts down still waits for its
/// client to take the replies and the `Close` queued for it.
const CLOSING_FLUSH: Duration = Duration::from_millis(200);

/// An open scan of a client.
struct Cursor {
    scan: Scan,
    chunk: usize,
    /// The entry that did not fit the last chunk: the next one starts with it.
    held: Option<crate::storage::Entry>,
}

/// Per-client limits in force.
#[derive(Clone, Copy)]
struct Limits {
    cursors: usize,
    watches: usize,
    in_flight: usize,
}

impl Limits {
    fn of(options: &ServerOptions) -> Limits {
        let or = |n: usize, default: usize| if n == 0 { default } else { n };
        Limits {
            cursors: or(options.max_cursors, 16),
            watches: or(options.max_watches, 16),
            in_flight: or(options.max_in_flight, 128),
        }
    }
}

struct Session<'a> {
    ctx: &'a ConnCtx,
    client: NodeId,
    /// Bytes of keys and values one reply or event may carry: within both
    /// our frame limit and the client's.
    reply_limit: usize,
    read_only: bool,
    limits: Limits,
    cursors: HashMap<u64, Cursor>,
    next_watch: u64,
    watches: Vec<(u64, KeyRange)>,
    /// Write requests of the current burst not yet committed.
    writes: WriteGroup,
}

impl Session<'_> {
    fn db(&self) -> &Db {
        &self.ctx.db
    }

    fn handle(&mut self, id: u64, request: Request) -> Result<Response, RemoteError> {
        match request {
            Request::Get { key } => {
                let value = self.db().get(key).map_err(internal)?;
                fits(self.reply_limit, value.as_ref().map_or(0, Vec::len), || "the value".into())?;
                Ok(Response::Value(value.map(Into::into)))
            }
            Request::GetMany { keys } => self.get_many(&keys),
            // Refused before the retry memory: refusals cost nothing to
            // repeat and must not evict other clients' remembered replies.
            Request::Write { .. } if self.read_only => {
                Err(RemoteError::new(ErrorCode::ReadOnly, "read-only access: writes are refused"))
            }
            Request::Write { ops } => {
                self.commit(vec![Queued { id, ops }]).pop().map_or_else(|| unreachable!("one reply"), |(_, r)| r)
            }
            Request::Scan { options, chunk } => self.open_scan(options, chunk),
            Request::ScanMore { cursor } => self.next_chunk(cursor),
            Request::ScanClose { cursor } => {
                self.cursors.remove(&cursor);
                Ok(Response::Ok)
            }
            Request::Unwatch { watch } => {
                self.watches.retain(|(w, _)| *w != watch);
                Ok(Response::Ok)
            }
            Request::Watch { range } => {
                if self.watches.len() >= self.limits.watches {
                    let limit = self.limits.watches;
                    return Err(RemoteError::new(ErrorCode::BadRequest, format!("too many watches (limit {limit})")));
                }
                let watch = self.next_watch;
                self.next_watch += 1;
                self.watches.push((watch, range));
                Ok(Response::Watching { watch })
            }
            Request::Status => Ok(Response::Status(self.status())),
        }
    }

    /// Values of `keys` from one snapshot. The reply must fit a frame, so
    /// a request whose values add up to more is refused, not built.
    fn get_many(&self, keys: &[serde_bytes::ByteBuf]) -> Result<Response, RemoteError> {
        let snap = self.db().snapshot();
        let mut values = Vec::with_capacity(keys.len().min(4096));
        let mut bytes = 0usize;
        for key in keys {
            let value = snap.get(key).map_err(internal)?;
            bytes += value.as_ref().map_or(1, |v| v.len() + 8);
            fits(self.reply_limit, bytes, || format!("the values of these {} keys", keys.len()))?;
            values.push(value.map(Into::into));
        }
        Ok(Response::Values(values))
    }

    /// Adds a write request to the pending group, committing the group
    /// first if the request cannot join it.
    fn queue_write(&mut self, id: u64, ops: Vec<BatchOp>, replies: &mut Vec<u8>) {
        if let Err(ops) = self.writes.offer(id, ops) {
            self.commit_writes(replies);
            self.writes.offer(id, ops).unwrap_or_else(|_| unreachable!("an empty group takes any request"));
        }
    }

    /// Commits the pending write requests and encodes their replies.
    fn commit_writes(&mut self, replies: &mut Vec<u8>) {
        if self.writes.is_empty() {
            return;
        }
        let group = self.writes.take();
        for (id, result) in self.commit(group) {
            codec::encode(&Message::Reply { id, result }, replies);
        }
    }

    /// Applies a group of write requests as one batch, each at most once:
    /// a request answered before gets its remembered reply; one refused by
    /// the hook or the size limits is left out. Replies are in request order.
    fn commit(&self, mut group: Vec<Queued>) -> Vec<(u64, Outcome)> {
        let keys: Vec<RequestKey> = group.iter().map(|q| (self.client, q.id)).collect();
        let outcomes = self.ctx.server.retries.once_each(&keys, |fresh| {
            let mut outcomes: Vec<Option<Outcome>> = vec![None; fresh.len()];
            let mut batch = Batch::new();
            // (position in `fresh`, where its ops end in `batch`)
            let mut applied = Vec::new();
            for (n, &i) in fresh.iter().enumerate() {
                let ops = std::mem::take(&mut group[i].ops);
                if let Err(e) = self.check_write(&ops) {
                    outcomes[n] = Some(Err(e));
                    continue;
                }
                if ops.is_empty() {
                    outcomes[n] = Some(Ok(Response::Written(None)));
                    continue;
                }
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => batch.put(key, value),
                        BatchOp::Delete { key } => batch.delete(key),
                    };
                }
                applied.push((n, batch.len()));
            }
            if !applied.is_empty() {
                let len = batch.len();
                let ends: Vec<usize> = applied.iter().map(|&(_, end)| end).collect();
                match self.db().write(batch) {
                    Ok(Some(last)) => {
                        for ((n, _), dot) in applied.iter().zip(group::dots(&ends, len, last)) {
                            outcomes[*n] = Some(Ok(Response::Written(Some(dot))));
                        }
                    }
                    result => {
                        let outcome = result.map(|_| Response::Written(None)).map_err(write_error);
                        for (n, _) in &applied {
                            outcomes[*n] = Some(outcome.clone());
                        }
                    }
                }
            }
            outcomes.into_iter().map(|o| o.unwrap_or_else(|| unreachable!("every request answered"))).collect()
        });
        group.iter().map(|q| q.id).zip(outcomes).collect()
    }

    /// The hook's verdict on one write request, then the store's size limits.
    fn check_write(&self, ops: &[BatchOp]) -> Result<(), RemoteError> {
        if let Some(hook) = &self.ctx.server.options.hook {
            hook(ops).map_err(|msg| RemoteError::new(ErrorCode::Rejected, msg))?;
        }
        let inner = &self.db().inner;
        for op in ops {
            match op {
                BatchOp::Put { key, value } => inner.check_key(key).and_then(|()| inner.check_value(value)),
                BatchOp::Delete { key } => inner.check_key(key),
            }
            .map_err(write_error)?;
        }
        Ok(())
    }

    fn open_scan(&mut self, options: ScanOptions, chunk: u32) -> Result<Response, RemoteError> {
        let max = self.limits.cursors;
        if self.cursors.len() >= max {
            return Err(RemoteError::new(ErrorCode::BadRequest, format!("too many open scans (limit {max})")));
        }
        // Node-wide ids: a cursor id from a lost connection never names a
        // scan of the client's next connection.
        let cursor = self.ctx.server.next_cursor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scan = self.db().snapshot().scan(options);
        self.cursors.insert(cursor, Cursor { scan, chunk: chunk.clamp(1, 10_000) as usize, held: None });
        self.next_chunk(cursor)
    }

    fn next_chunk(&mut self, cursor: u64) -> Result<Response, RemoteError> {
        // A client reading frames smaller than a chunk gets smaller chunks.
        let limit = self.reply_limit;
        let budget = SCAN_CHUNK_BYTES.min(limit);
        let Some(Cursor { scan, chunk, held }) = self.cursors.get_mut(&cursor) else {
            // Finished, closed, or opened on a connection that was lost.
            return Err(RemoteError::new(ErrorCode::ConnectionLost, format!("scan cursor {cursor} is not open here")));
        };
        let mut entries = Vec::with_capacity((*chunk).min(1024));
        let mut bytes = 0;
        let mut done = true;
        while let Some(entry) = held.take().map(Ok).or_else(|| scan.next()) {
            let entry = entry.map_err(internal)?;
            // With its framing in the reply (lengths, options), as for get_many.
            let size = entry.key.len() + entry.value.len() + 8;
            if let Err(e) = fits(limit, size, || "an entry of this scan".into()) {
                self.cursors.remove(&cursor);
                return Err(e);
            }
            // Count and size both bound a chunk, so any chunk fits a frame:
            // an entry that would overflow it opens the next one.
            if !entries.is_empty() && bytes + size > budget {
                *held = Some(entry);
                done = false;
                break;
            }
            bytes += size;
            entries.push(entry);
            if entries.len() == *chunk {
                done = false;
                break;
            }
        }
        if done {
            self.cursors.remove(&cursor);
        }
        Ok(Response::Chunk { cursor, entries, done })
    }

    /// The events `commit` makes for this client's watches; a change too
    /// large for the client to read is reported as one missed change.
    fn watch_events(&self, commit: &crate::storage::Commit) -> Vec<Message> {
        let mut out = Vec::new();
        for change in &commit.changes {
            for (watch, range) in &self.watches {
                if range.contains(&change.key) {
                    let value = change.record().value();
                    let size = change.key.len() + value.map_or(0, <[u8]>::len);
                    out.push(if size > self.reply_limit {
                        Message::WatchLagged { watch: *watch, missed: 1 }
                    } else {
                        Message::Watch { watch: *watch, key: change.key.clone(), value: value.map(<[u8]>::to_vec) }
                    });
                }
            }
        }
        out
    }

    /// Live keys in the store: counted again only if it changed since the
    /// last count (a scan of the whole store), off the runtime's workers
    /// where the runtime has several, so a stream of `Status` requests
    /// neither repeats the scan nor stalls other connections.
    fn key_count(&self) -> u64 {
        let db = self.db();
        let changes = (db.local_write_count(), db.remote_applied_count());
        let cache = &self.ctx.server.key_count;
        let cached = *cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, keys)) = cached.filter(|(at, _)| *at == changes) {
            return keys;
        }
        let count = || db.snapshot().scan(ScanOptions { values: false, ..ScanOptions::default() }).count() as u64;
        let keys = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(count),
            _ => count(),
        };
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((changes, keys));
        keys
    }

    fn status(&self) -> Status {
        let db = self.db();
        let vv = db.version_vector();
        let keys = self.key_count();
        let peers = self
            .ctx
            .registry
            .statuses(&vv)
            .into_iter()
            .map(|p| PeerInfo {
                addr: p.addr.to_string(),
                node_id: p.node_id,
                state: match p.state {
                    PeerState::Connecting => "connecting",
                    PeerState::Connected => "connected",
                    PeerState::Live => "live",
                }
                .into(),
                lag: p.lag,
                sync: p.sync,
            })
            .collect();
        Status {
            node_id: db.node_id(),
            cluster: self.ctx.cluster.clone(),
            listen: self.ctx.local_addr.map(|a| a.to_string()),
            version_vector: vv,
            keys,
            conflicts: db.conflict_count(),
            peers,
        }
    }
}

fn write_error(e: StorageError) -> RemoteError {
    match e {
        StorageError::KeyTooLarge { .. } | StorageError::ValueTooLarge { .. } => {
            RemoteError::new(ErrorCode::BadRequest, e.to_string())
        }
        e => internal(e),
    }
}

fn internal(e: StorageError) -> RemoteError {
    RemoteError::new(ErrorCode::Internal, e.to_string())
}
