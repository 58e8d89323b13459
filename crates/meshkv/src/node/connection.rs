//! Drives one [`Link`] over one TCP connection: a reader task decodes
//! frames into an inbox bounded in bytes; the link task multiplexes incoming
//! messages, local commits, timer ticks and socket writes, so neither
//! direction can stall the other.

use super::admission::Ticket;
use super::inbox::{inbox, Inbox, InboxSender, INBOX_BYTES};
use super::registry::{Claim, LinkCounts, Registry};
use super::retry::RetryCache;
use super::session::{self, ServerOptions};
use super::NodeEvent;
use crate::net::{self, EstablishError, FrameError, FrameReader, FrameWriter};
use crate::protocol::{codec, version_refusal, CloseReason, Link, LinkConfig, LinkEvent, Message};
use crate::protocol::{Role, PROTOCOL_VERSION};
use crate::secure::{Access, SecureError, Security, Side};
use crate::storage::{Db, FeedError};
use crate::KeyRange;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Everything a connection task needs from its node.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub db: Db,
    /// Where links send the peer lists they receive (peer exchange on).
    pub exchange: Option<mpsc::Sender<Vec<SocketAddr>>>,
    /// A peer list is sent again after this long even if it did not change,
    /// so a peer that forgot an address (out of reach for a while) learns it
    /// again: half of `NodeConfig::forget_learned_after`, at most 30 s.
    pub share_refresh: Duration,
    /// Cluster name clients must present.
    pub cluster: String,
    /// Where the node listens (for status).
    pub local_addr: Option<SocketAddr>,
    /// Client-serving options and the retry memory.
    pub server: Arc<ServerState>,
    pub registry: Arc<Registry>,
    pub events: broadcast::Sender<NodeEvent>,
    pub shutdown: watch::Receiver<bool>,
    pub max_frame: usize,
    /// Secrets connections must prove (none: plaintext).
    pub security: Security,
    pub started: Instant,
    /// Held by every clone, so by every task that may use the store through
    /// one: [`Node::shutdown`](super::Node::shutdown) waits until all are gone.
    pub alive: mpsc::Sender<()>,
}

impl ConnCtx {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// Allows one event per interval (for log lines an attacker can trigger).
pub(crate) struct RateLimit {
    interval_ms: u64,
    /// Milliseconds since `started` of the last allowed event, plus one (0: never).
    last: std::sync::atomic::AtomicU64,
    started: Instant,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        RateLimit { interval_ms: interval.as_millis() as u64, last: Default::default(), started: Instant::now() }
    }

    /// Whether an event may be reported now.
    pub fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= self.interval_ms)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// How a connection ended.
pub(crate) struct Ended {
    pub peer: Option<crate::NodeId>,
    pub reason: Option<CloseReason>,
    /// Whether the handshake completed.
    pub handshaken: bool,
    /// Whether this connection became the peer's link (was announced).
    pub claimed: bool,
    /// What our sending half knew the peer to cover when the link ended
    /// (`None` if it did not send or was not the peer's link).
    pub peer_vv: Option<crate::VersionVector>,
}

impl Ended {
    fn before_handshake(reason: Option<CloseReason>) -> Self {
        Ended { peer: None, reason, handshaken: false, claimed: false, peer_vv: None }
    }
}

/// What the client-serving side of a node shares across connections.
pub(crate) struct ServerState {
    pub options: ServerOptions,
    pub retries: RetryCache,
    /// This start of the node (random, nonzero), stated to clients: the
    /// retry memory is only good for clients of the same incarnation.
    pub incarnation: u64,
    /// A client silent this long (or not reading our replies) is dropped.
    pub idle_timeout: Duration,
    /// Rate limit of the "refused connection" warning.
    pub refusal_log: RateLimit,
    /// Next scan cursor id, unique across all client connections.
    pub next_cursor: std::sync::atomic::AtomicU64,
    /// The last key count for `status`, and the write counters it was
    /// taken at: counting scans the whole store, so it is done again only
    /// once the store changed.
    pub key_count: std::sync::Mutex<Option<((u64, u64), u64)>>,
}

/// Runs a connection this node accepted until it closes: the handshake
/// (authentication, evictable, under the handshake timeout), then a peer
/// link or a client session depending on the role in the first `Hello`.
pub(crate) async fn accepted(ctx: ConnCtx, stream: TcpStream, addr: SocketAddr, cfg: LinkConfig, mut ticket: Ticket) {
    let wait = Duration::from_millis(cfg.handshake_timeout_ms);
    let mut shutdown = ctx.shutdown.clone();
    if *shutdown.borrow() {
        return;
    }
    let admitted = tokio::select! {
        res = tokio::time::timeout(wait, admit(&ctx, stream, ticket.prover())) => match res {
            Ok(Ok(admitted)) => admitted,
            Ok(Err(why)) => {
                // Failed authentication is worth an operator's attention
                // (rate-limited: a flood must not flood the log); port scans
                // and dropped sockets are not.
                match why.event() {
                    Some(message) => {
                        if ctx.server.refusal_log.allow() {
                            tracing::warn!(%addr, "{message}");
                        }
                        let _ = ctx.events.send(NodeEvent::Error { addr, message });
                    }
                    None => tracing::debug!(%addr, "dropped connection: {why}"),
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%addr, "no handshake in time; dropping connection");
                return;
            }
        },
        _ = &mut ticket.evicted => return,
        _ = shutdown.changed() => return,
    };
    let (frames, mut writer, access, hello) = admitted;
    let Some(_slot) = ticket.admit() else {
        tracing::warn!(%addr, "connection limit reached; refusing");
        let _ = writer.send(&Message::Close { reason: CloseReason::Overloaded }).await;
        return;
    };
    match hello {
        Message::Hello(hello) if hello.role == Role::Client => {
            session::serve(&ctx, hello, frames, writer, addr, access).await;
        }
        _ if !access.may_peer() => {
            tracing::warn!(%addr, ?access, "refused a peer link holding only a client secret");
            let _ = writer.send(&Message::Close { reason: CloseReason::Unauthorized }).await;
        }
        first => {
            run_link(ctx, frames, writer, addr, cfg, false, Some(Ok(first))).await;
        }
    }
}

/// Why an accepted connection was dropped before its first frame.
enum Refusal {
    Handshake(EstablishError),
    NoHello,
    /// The first frame did not decode (or decrypt): a replayed handshake,
    /// or not a meshkv node or client.
    BadFirstFrame(FrameError),
    /// The first frame is a `Hello` of another protocol version; it was
    /// answered with the refusal that version reads.
    OtherVersion(FrameError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Handshake(e) => write!(f, "{e}"),
            Refusal::NoHello => f.write_str("closed before its first frame"),
            Refusal::BadFirstFrame(e) => write!(f, "malformed first frame: {e}"),
            Refusal::OtherVersion(e) => write!(f, "{e}"),
        }
    }
}

impl Refusal {
    /// The node event worth raising: authentication failures are; port
    /// scans and dropped sockets are not.
    fn event(&self) -> Option<String> {
        match self {
            Refusal::Handshake(EstablishError::Secure(
                e @ (SecureError::WrongSecret | SecureError::NeedSecret | SecureError::UnexpectedPlain),
            )) => Some(format!("refused connection: {e}")),
            // Through the same rate limit: a replayed handshake followed by
            // garbage must not flood the log, nor reach a link.
            Refusal::BadFirstFrame(e) => Some(format!("refused connection: malformed first frame: {e}")),
            // Worth an operator's attention: the cluster runs two versions.
            Refusal::OtherVersion(e) => Some(format!("refused connection: {e}")),
            _ => None,
        }
    }
}

/// Largest first frame of an accepted connection.
const FIRST_FRAME_LIMIT: usize = 64 * 1024;

type Admitted = (FrameReader, FrameWriter, Access, Message);

async fn admit(ctx: &ConnCtx, stream: TcpStream, proven: impl Fn()) -> Result<Admitted, Refusal> {
    let (mut frames, mut writer, access) =
        net::establish(stream, Side::Responder, &ctx.security, ctx.max_frame).await.map_err(Refusal::Handshake)?;
    proven();
    // The first frame is a small `Hello`: a socket still being admitted
    // cannot make the node buffer a full-size frame.
    frames.set_max_frame(FIRST_FRAME_LIMIT.min(ctx.max_frame));
    let first = match frames.next().await.ok_or(Refusal::NoHello)? {
        Ok(first) => first,
        Err(e) => {
            let Some(theirs) = e.other_version() else { return Err(Refusal::BadFirstFrame(e)) };
            // Tell the other side why, in frames its version decodes.
            let mut out = Vec::new();
            for msg in version_refusal(theirs) {
                codec::encode(&msg, &mut out);
            }
            if writer.queue_frames(&out).is_ok() {
                let _ = writer.shutdown().await;
            }
            return Err(Refusal::OtherVersion(e));
        }
    };
    frames.set_max_frame(ctx.max_frame);
    Ok((frames, writer, access, first))
}

/// Runs a connection this node dialed (a peer link) until it closes.
pub(crate) async fn dialed(ctx: ConnCtx, stream: TcpStream, addr: SocketAddr, cfg: LinkConfig) -> Ended {
    let wait = Duration::from_millis(cfg.handshake_timeout_ms);
    let establish = tokio::time::timeout(wait, net::establish(stream, Side::Initiator, &ctx.security, ctx.max_frame));
    let mut shutdown = ctx.shutdown.clone();
    let established = tokio::select! {
        res = establish => res,
        _ = shutdown.changed() => return Ended::before_handshake(Some(CloseReason::Shutdown)),
    };
    match established {
        Ok(Ok((frames, writer, _))) => run_link(ctx, frames, writer, addr, cfg, true, None).await,
        Ok(Err(e)) => {
            tracing::warn!(%addr, "cannot connect to peer: {e}");
            if let EstablishError::Secure(_) = e {
                let _ = ctx.events.send(NodeEvent::Error { addr, message: format!("cannot connect to peer: {e}") });
            }
            Ended::before_handshake(None)
        }
        Err(_) => {
            tracing::debug!(%addr, "peer handshake timed out");
            Ended::before_handshake(Some(CloseReason::Timeout))
        }
    }
}

async fn run_link(
    ctx: ConnCtx,
    frames: FrameReader,
    writer: FrameWriter,
    addr: SocketAddr,
    cfg: LinkConfig,
    dialed: bool,
    first: Option<Result<Message, FrameError>>,
) -> Ended {
    let (in_tx, incoming) = inbox(INBOX_BYTES);
    let received = Arc::new(AtomicU64::new(0));
    // Aborted with this task too (a shutdown past its bound aborts it): the
    // reader holds the socket's read half open.
    let reader = AbortOnDrop(tokio::spawn(read_frames(frames, in_tx, Arc::clone(&received))));
    let conn = ctx.registry.new_connection(addr);
    let link = LinkIo { incoming, writer, received };
    let ended = drive(&ctx, link, first, addr, cfg, dialed, conn).await;
    drop(reader);
    ctx.registry.release(conn, ended.peer_vv.as_ref());
    // Only for a link that was the peer's, and only if no other took over.
    if let (Some(peer), true) = (ended.peer, ended.claimed) {
        if !ctx.registry.is_linked(peer) {
            let _ = ctx.events.send(NodeEvent::Disconnected { peer, addr, reason: ended.reason });
        }
    }
    ended
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A link's side of its connection: decoded frames in, frames out, and the
/// count of frame bytes the reader has decoded.
struct LinkIo {
    incoming: Inbox,
    writer: FrameWriter,
    received: Arc<AtomicU64>,
}

async fn drive(
    ctx: &ConnCtx,
    io: LinkIo,
    first: Option<Result<Message, FrameError>>,
    addr: SocketAddr,
    cfg: LinkConfig,
    dialed: bool,
    conn: u64,
) -> Ended {
    let LinkIo { incoming: mut in_rx, mut writer, received } = io;
    let mut bytes_sent = 0u64;
    let tick_ms = (cfg.ping_interval_ms() / 2).clamp(10, 1_000);
    // Subscribe before the link exists so no commit after its snapshot is missed.
    // Dropped at the handshake if the link turns out not to send.
    let mut feed = Some(ctx.db.subscribe(KeyRange::all()));
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut link = Link::new(ctx.db.clone(), cfg, ctx.now_ms());
    let (close_tx, mut close_rx) = oneshot::channel::<CloseReason>();
    let mut close_tx = Some(close_tx);
    let mut shutdown = ctx.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
    let mut out = Vec::new();
    let mut ended = Ended::before_handshake(None);
    let mut peer_gone = false;
    let mut lag = 0;
    let mut progress_logged = std::time::Instant::now();
    let mut marked_live = false;
    let mut last_write = tokio::time::Instant::now();
    // The registry generation of the peer list last sent (peer exchange).
    let mut shared = None;
    if *shutdown.borrow() {
        link.close(CloseReason::Shutdown);
    }
    if let Some(frame) = first {
        deliver(ctx, &mut link, addr, frame, false);
    }

    loop {
        // Queue what the link has to say (bounded by its window).
        if writer.pending() == 0 {
            out.clear();
            while out.len() < 1 << 20 {
                match link.poll_transmit(ctx.now_ms()) {
                    Ok(Some(msg)) => {
                        codec::encode(&msg, &mut out);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "link failed");
                        let _ = ctx.events.send(NodeEvent::Error { addr, message: e.to_string() });
                        break;
                    }
                }
            }
            bytes_sent += out.len() as u64;
            if writer.queue_frames(&out).is_err() {
                peer_gone = true;
                link.close(CloseReason::Shutdown);
            }
        }
        let counts = |link: &Link, lag: u64| {
            let (sent, received_items) = link.item_counts();
            LinkCounts {
                sent,
                received: received_items,
                lag,
                sync: link.catch_up_progress(),
                bytes_sent,
                bytes_received: received.load(Ordering::Relaxed),
            }
        };
        while let Some(ev) = link.poll_event() {
            match ev {
                LinkEvent::Connected { peer } => {
                    if !link.sends() {
                        // Commits would only be held for it and dropped.
                        feed = None;
                    }
                    ended.peer = Some(peer);
                    ended.handshaken = true;
                    if dialed {
                        ctx.registry.learn(addr, peer);
                    }
                    let closer = close_tx.take().unwrap_or_else(|| oneshot::channel().0);
                    match ctx.registry.claim(ctx.db.node_id(), peer, conn, dialed.then_some(addr), closer) {
                        Claim::Keep { replaced } => {
                            ended.claimed = true;
                            if dialed {
                                ctx.registry.set_listen(peer, addr);
                            }
                            // A replacement: the peer stayed linked, and its
                            // `Connected` was reported already.
                            if !replaced {
                                tracing::info!(%addr, %peer, "peer connected");
                                let _ = ctx.events.send(NodeEvent::Connected { peer, addr });
                            }
                            shared = share_peers(ctx, &mut link, peer, None);
                        }
                        Claim::Duplicate => link.close(CloseReason::Duplicate),
                        Claim::Removed => link.close(CloseReason::Shutdown),
                    }
                }
                LinkEvent::CaughtUp { peer } => {
                    // Counts first: whoever hears the event reads them.
                    ctx.registry.set_counts(conn, counts(&link, lag));
                    ctx.registry.set_live(conn);
                    tracing::info!(%addr, %peer, "caught up");
                    let _ = ctx.events.send(NodeEvent::CaughtUp { peer });
                }
                LinkEvent::Peers { listen, known } => {
                    if let (Some(exchange), Some(peer)) = (&ctx.exchange, ended.peer) {
                        if let (Some(listen), false) = (listen, dialed) {
                            let ip = if listen.ip().is_unspecified() { addr.ip() } else { listen.ip() };
                            ctx.registry.set_listen(peer, SocketAddr::new(ip, listen.port()));
                        }
                        // A full queue drops the list; it is sent again.
                        let _ = exchange.try_send(known);
                    }
                }
                LinkEvent::Closed { reason, by_peer } => {
                    ended.reason = Some(reason);
                    if by_peer {
                        peer_gone = true;
                    }
                    match reason {
                        CloseReason::SelfConnection if dialed => ctx.registry.mark_self(addr),
                        CloseReason::Shutdown | CloseReason::Duplicate | CloseReason::SelfConnection => {}
                        other => {
                            tracing::warn!(%addr, ?other, by_peer, "link closed");
                            if by_peer {
                                let message = match other {
                                    CloseReason::VersionMismatch => format!(
                                        "peer closed the link: VersionMismatch (it does not speak protocol \
                                         version {PROTOCOL_VERSION}: run one version in a cluster)"
                                    ),
                                    _ => format!("peer closed the link: {other:?}"),
                                };
                                let _ = ctx.events.send(NodeEvent::Error { addr, message });
                            }
                        }
                    }
                }
            }
        }
        if link.is_closed() {
            // Flush what is queued (the Close frame at least), briefly.
            out.clear();
            while let Ok(Some(msg)) = link.poll_transmit(ctx.now_ms()) {
                codec::encode(&msg, &mut out);
            }
            if !peer_gone && writer.queue_frames(&out).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
            }
            break;
        }
        ctx.registry.set_counts(conn, counts(&link, lag));
        // A link that only sends is live once its catch-up went out (one
        // that receives, at `CaughtUp`).
        if ended.claimed && !marked_live && !link.receives() && link.is_sender_live() {
            ctx.registry.set_live(conn);
            marked_live = true;
        }

        tokio::select! {
            // Unbiased: a busy socket must not starve the feed (whose ring
            // holds records in memory until every subscriber has read them).
            reason = &mut close_rx => link.close(reason.unwrap_or(CloseReason::Duplicate)),
            _ = shutdown.changed() => link.close(CloseReason::Shutdown),
            res = writer.write_some(), if writer.pending() > 0 => match res {
                Ok(_) => last_write = tokio::time::Instant::now(),
                Err(_) => {
                    peer_gone = true;
                    link.close(CloseReason::Shutdown);
                }
            },
            msg = in_rx.recv() => match msg {
                Some(received) => {
                    let more = !in_rx.is_empty();
                    // Its room in the inbox is given back once it is handled.
                    deliver(ctx, &mut link, addr, received.frame, more);
                }
                None => {
                    peer_gone = true;
                    link.close(CloseReason::Shutdown);
                }
            },
            commit = super::next_commit(&mut feed) => match commit {
                Ok(c) => link.handle_commit(c),
                Err(FeedError::Lagged { .. }) => link.handle_feed_lagged(),
                Err(_) => link.close(CloseReason::Shutdown),
            },
            _ = tick.tick() => {
                if writer.pending() == 0 {
                    last_write = tokio::time::Instant::now();
                } else if last_write.elapsed() > idle {
                    // A peer that sends but never reads would otherwise
                    // have us queue acknowledgements for it without end.
                    tracing::warn!(%addr, "peer stopped reading; closing");
                    link.close(CloseReason::Timeout);
                }
                link.handle_tick(ctx.now_ms());
                if let (Some(_), Some(peer)) = (shared, ended.peer) {
                    shared = share_peers(ctx, &mut link, peer, shared);
                }
                lag = link.lag(&ctx.db.version_vector());
                if let (Some((done, total)), Some(peer)) = (link.catch_up_progress(), ended.peer) {
                    if done > 0 && progress_logged.elapsed() >= Duration::from_secs(2) {
                        progress_logged = std::time::Instant::now();
                        tracing::info!(%addr, %peer, records = done, at_most = total, "initial sync in progress");
                    }
                }
            }
        }
    }
    if ended.claimed {
        ended.peer_vv = link.peer_vv().cloned();
    }
    ended
}

/// With peer exchange on, queues our peer list for `peer` if it changed
/// since `sent` (generation and time) or that is `share_refresh` ago;
/// returns what is sent now.
fn share_peers(
    ctx: &ConnCtx,
    link: &mut Link,
    peer: crate::NodeId,
    sent: Option<(u64, Instant)>,
) -> Option<(u64, Instant)> {
    ctx.exchange.as_ref()?;
    if let Some((generation, at)) = sent {
        if generation == ctx.registry.generation() && at.elapsed() < ctx.share_refresh {
            return sent;
        }
    }
    let (generation, known) = ctx.registry.shared_addrs(peer);
    link.share_peers(ctx.local_addr, known);
    Some((generation, Instant::now()))
}

/// Hands one decoded frame (or a decoding error) to the link (`more`: another
/// frame is already waiting); failures close the link and are reported as
/// node events.
fn deliver(ctx: &ConnCtx, link: &mut Link, addr: SocketAddr, frame: Result<Message, FrameError>, more: bool) {
    let message = match frame {
        Ok(msg) => match link.handle_queued_message(msg, ctx.now_ms(), more) {
            Ok(()) => return,
            Err(e) => e.to_string(),
        },
        // A `Hello` of another version. An accepted connection refuses one
        // before it has a link, so this is a dialed one, whose `Hello` went
        // out already: the `Close` alone, which every version decodes.
        Err(e) if e.other_version().is_some() => {
            link.close(CloseReason::VersionMismatch);
            e.to_string()
        }
        Err(e) => {
            link.close(CloseReason::ProtocolError);
            format!("bad input: {e}")
        }
    };
    tracing::warn!(%addr, error = %message, "closing connection");
    let _ = ctx.events.send(NodeEvent::Error { addr, message });
}

/// Forwards frames to the link task until EOF or a malformed frame (which
/// is forwarded as an error).
async fn read_frames(mut frames: FrameReader, tx: InboxSender, decoded: Arc<AtomicU64>) {
    let mut before = frames.decoded_bytes();
    while let Some(m) = frames.next().await {
        let now = frames.decoded_bytes();
        decoded.store(now, Ordering::Relaxed);
        if tx.send(m, (now - before) as usize).await.is_err() {
            return;
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::AbortOnDrop;
    use std::time::Duration;

    #[tokio::test]
    async fn dropping_the_guard_aborts_its_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let guard = AbortOnDrop(tokio::spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await
        }));
        drop(guard);
        // The aborted task's future, and the sender it holds, are dropped.
        let ended = tokio::time::timeout(Duration::from_secs(10), rx).await;
        assert!(matches!(ended, Ok(Err(_))), "the task still runs");
    }
}
