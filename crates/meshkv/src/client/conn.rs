//! The client's connection task: owns the socket, matches replies to
//! requests by id, reconnects, and re-sends what may be re-sent.

use super::{lost, ClientOptions, Command, Result, WatchEvent};
use crate::net::{self, BusyPoll, EstablishError, FrameReader, FrameWriter};
use crate::protocol::request::{ErrorCode, RemoteError, Request, Response};
use crate::protocol::{codec, CloseReason, Hello, Message, Mode, Role, MAGIC, PROTOCOL_VERSION};
use crate::secure::{Security, Side};
use crate::storage::KeyRange;
use crate::version::NodeId;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A connected, handshaken connection.
pub(crate) struct Connected {
    reader: FrameReader,
    writer: FrameWriter,
}

/// Requests are taken from callers only while less than this many bytes
/// wait to be written (backpressure on a slow connection).
const MAX_UNSENT: usize = 1 << 20;
/// Commands taken from callers per write, at most.
const MAX_BURST: usize = 256;

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Response>>,
}

struct Watch {
    range: KeyRange,
    events: mpsc::Sender<WatchEvent>,
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// Opens a connection, authenticates (with a secret) and performs the
/// client handshake.
pub(crate) async fn connect(addr: SocketAddr, id: NodeId, opts: &ClientOptions) -> Result<Connected> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| RemoteError::new(ErrorCode::ConnectionLost, format!("cannot connect to {addr}: {e}")))?;
        let security = Security { secret: opts.secret.clone(), read_only_secret: None };
        let (mut reader, mut writer, _) =
            net::establish(stream, Side::Initiator, &security, opts.max_frame).await.map_err(|e| match e {
                EstablishError::Secure(e) => RemoteError::new(ErrorCode::Unauthorized, e.to_string()),
                EstablishError::Io(e) => RemoteError::new(ErrorCode::ConnectionLost, format!("{addr}: {e}")),
            })?;
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster: opts.cluster.clone(),
            node: id,
            role: Role::Client,
            mode: Mode::Sync,
            policy: 0,
        };
        writer.send(&Message::Hello(hello)).await.map_err(|_| lost())?;
        match reader.next().await {
            Some(Ok(Message::Hello(h))) if h.magic == MAGIC && h.version == PROTOCOL_VERSION => {
                Ok(Connected { reader, writer })
            }
            Some(Ok(Message::Close { reason })) => Err(refused(reason)),
            Some(Ok(other)) => {
                Err(RemoteError::new(ErrorCode::BadRequest, format!("unexpected {} in handshake", other.kind())))
            }
            Some(Err(e)) => Err(RemoteError::new(ErrorCode::BadRequest, format!("malformed frame from node: {e}"))),
            None => Err(lost()),
        }
    };
    tokio::time::timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| RemoteError::new(ErrorCode::ConnectionLost, format!("timed out connecting to {addr}")))?
}

fn refused(reason: CloseReason) -> RemoteError {
    match reason {
        CloseReason::WrongCluster => RemoteError::new(ErrorCode::Unauthorized, "the node belongs to another cluster"),
        CloseReason::Overloaded => {
            RemoteError::new(ErrorCode::ConnectionLost, "the node is at its connection limit; try again later")
        }
        other => RemoteError::new(ErrorCode::ConnectionLost, format!("the node closed the connection: {other:?}")),
    }
}

/// Whether a request may be sent again on a new connection.
fn resendable(r: &Request) -> bool {
    !matches!(r, Request::ScanMore { .. } | Request::ScanClose { .. })
}

pub(crate) async fn run(
    addr: SocketAddr,
    id: NodeId,
    opts: ClientOptions,
    first: Connected,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut next_id: u64 = 1;
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut watches: HashMap<u64, Watch> = HashMap::new();
    // Request id of a watch registration -> local watch key.
    let mut watch_requests: HashMap<u64, u64> = HashMap::new();
    // Server watch id -> local watch key (per connection).
    let mut live_watches: HashMap<u64, u64> = HashMap::new();
    let mut next_watch = 1u64;
    let mut conn = Some(first);
    let mut backoff = opts.reconnect_min;
    loop {
        let Some(Connected { mut reader, mut writer }) = conn.take() else {
            // Not connected: wait for work (without retry) or reconnect.
            if !opts.retry && pending.is_empty() {
                match commands.recv().await {
                    Some(cmd) => {
                        // Sent (with the rest of `pending`) once connected.
                        accept(cmd, &mut next_id, &mut pending, &mut watches, &mut next_watch, None);
                    }
                    None => return,
                }
            }
            match connect(addr, id, &opts).await {
                Ok(c) => {
                    backoff = opts.reconnect_min;
                    conn = Some(c);
                }
                Err(e) => {
                    if !opts.retry {
                        for (_, p) in std::mem::take(&mut pending) {
                            let _ = p.reply.send(Err(e.clone()));
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            continue;
        };
        let mut out = Vec::new();
        // (Re-)send what is pending and re-register watches.
        live_watches.clear();
        watch_requests.clear();
        for (rid, p) in &pending {
            codec::encode(&Message::Request { id: *rid, request: p.request.clone() }, &mut out);
        }
        for (key, w) in &mut watches {
            let rid = next_id;
            next_id += 1;
            watch_requests.insert(rid, *key);
            codec::encode(&Message::Request { id: rid, request: Request::Watch { range: w.range.clone() } }, &mut out);
            if w.reply.is_none() {
                let _ = w.events.try_send(WatchEvent::Lagged);
            }
        }
        // A ping goes out when nothing was sent for `every`; the timer is
        // re-armed when it fires, not on every request.
        let every = opts.keepalive.max(Duration::from_millis(10));
        let keepalive = tokio::time::sleep(every);
        tokio::pin!(keepalive);
        let mut last_sent = tokio::time::Instant::now();
        let mut busy_poll = BusyPoll::new(opts.busy_poll);
        loop {
            // Write without waiting; the rest goes out in the select below,
            // which keeps reading replies meanwhile (a node blocked writing
            // replies to us must never wait on us blocked writing requests).
            if !out.is_empty() {
                if writer.queue_frames(&out).is_err() || writer.try_flush().is_err() {
                    break;
                }
                out.clear();
                last_sent = tokio::time::Instant::now();
            }
            if !pending.is_empty() && writer.pending() == 0 {
                busy_poll.wait(&mut reader).await;
            }
            // Dispatch whatever complete frames are buffered. A frame that
            // cannot be decoded leaves the stream out of step: drop the
            // connection (and reconnect) rather than guess.
            let mut broken = false;
            while let Some(frame) = reader.try_next() {
                match frame {
                    Ok(msg) => on_message(msg, &mut pending, &mut watches, &mut watch_requests, &mut live_watches),
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "undecodable frame from node; reconnecting");
                        broken = true;
                    }
                }
            }
            if broken {
                break;
            }
            tokio::select! {
                cmd = commands.recv(), if writer.pending() < MAX_UNSENT => {
                    let Some(mut cmd) = cmd else { return };
                    // Take every command already queued: one write for the burst.
                    for taken in 1..=MAX_BURST {
                        let is_watch = matches!(cmd, Command::Watch { .. });
                        let rid = accept(cmd, &mut next_id, &mut pending, &mut watches, &mut next_watch, Some(&mut out));
                        if is_watch {
                            watch_requests.insert(rid, next_watch - 1);
                        }
                        // Take another command only if this burst sends it.
                        if taken == MAX_BURST || out.len() >= MAX_UNSENT {
                            break;
                        }
                        match commands.try_recv() {
                            Ok(more) => cmd = more,
                            Err(_) => break,
                        }
                    }
                }
                res = writer.write_some(), if writer.pending() > 0 => if res.is_err() {
                    break;
                },
                frame = reader.next() => match frame {
                    Some(Ok(msg)) => on_message(msg, &mut pending, &mut watches, &mut watch_requests, &mut live_watches),
                    Some(Err(e)) => {
                        tracing::warn!(%addr, error = %e, "undecodable frame from node; reconnecting");
                        break;
                    }
                    None => break,
                },
                _ = &mut keepalive => {
                    if last_sent.elapsed() >= every {
                        codec::encode(&Message::Ping, &mut out);
                        last_sent = tokio::time::Instant::now();
                    }
                    keepalive.as_mut().reset(last_sent + every);
                }
            }
        }
        tracing::debug!(%addr, "connection to node lost");
        // Fail what cannot be retried.
        let keep: Vec<u64> =
            pending.iter().filter(|(_, p)| opts.retry && resendable(&p.request)).map(|(k, _)| *k).collect();
        for (rid, p) in std::mem::take(&mut pending) {
            if keep.contains(&rid) {
                pending.insert(rid, p);
            } else {
                let _ = p.reply.send(Err(lost()));
            }
        }
        if !opts.retry {
            for (_, w) in watches.drain() {
                if let Some(reply) = w.reply {
                    let _ = reply.send(Err(lost()));
                }
            }
        }
    }
}

/// Registers a command and encodes its request into `out` (if given);
/// returns the request id.
fn accept(
    cmd: Command,
    next_id: &mut u64,
    pending: &mut BTreeMap<u64, Pending>,
    watches: &mut HashMap<u64, Watch>,
    next_watch: &mut u64,
    out: Option<&mut Vec<u8>>,
) -> u64 {
    let rid = *next_id;
    *next_id += 1;
    let request = match cmd {
        Command::Call { request, reply } => {
            // Encoded before it is kept for a re-send: no copy of its keys and values.
            if let Some(out) = out {
                let msg = Message::Request { id: rid, request };
                codec::encode(&msg, out);
                let Message::Request { request, .. } = msg else { unreachable!("built above") };
                pending.insert(rid, Pending { request, reply });
            } else {
                pending.insert(rid, Pending { request, reply });
            }
            return rid;
        }
        Command::Watch { range, events, reply } => {
            let key = *next_watch;
            *next_watch += 1;
            watches.insert(key, Watch { range: range.clone(), events, reply: Some(reply) });
            Request::Watch { range }
        }
    };
    if let Some(out) = out {
        codec::encode(&Message::Request { id: rid, request }, out);
    }
    rid
}

fn on_message(
    msg: Message,
    pending: &mut BTreeMap<u64, Pending>,
    watches: &mut HashMap<u64, Watch>,
    watch_requests: &mut HashMap<u64, u64>,
    live_watches: &mut HashMap<u64, u64>,
) {
    match msg {
        Message::Reply { id, result } => {
            if let Some(key) = watch_requests.remove(&id) {
                let Some(w) = watches.get_mut(&key) else { return };
                match result {
                    Ok(Response::Watching { watch }) => {
                        live_watches.insert(watch, key);
                        if let Some(reply) = w.reply.take() {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(reply) = w.reply.take() {
                            let _ = reply.send(Err(e));
                        }
                        watches.remove(&key);
                    }
                }
            } else if let Some(p) = pending.remove(&id) {
                let _ = p.reply.send(result);
            }
        }
        Message::Watch { watch, key, value } => {
            if let Some(w) = live_watches.get(&watch).and_then(|k| watches.get(k)) {
                if w.events.try_send(WatchEvent::Change { key, value }).is_err() {
                    let _ = w.events.try_send(WatchEvent::Lagged);
                }
            }
        }
        Message::WatchLagged { watch, .. } => {
            if let Some(w) = live_watches.get(&watch).and_then(|k| watches.get(k)) {
                let _ = w.events.try_send(WatchEvent::Lagged);
            }
        }
        _ => {}
    }
}
