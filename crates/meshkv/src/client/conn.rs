//! The client's connection task: owns the socket, matches replies to
//! requests by id, reconnects, and re-sends what may be re-sent.

use super::inflight::InFlight;
use super::{lost, ClientOptions, Command, Result};
use crate::net::{self, BusyPoll, EstablishError, FrameReader, FrameWriter};
use crate::protocol::request::{ErrorCode, RemoteError};
use crate::protocol::{codec, CloseReason, Hello, Message, Mode, Role, MAGIC, PROTOCOL_VERSION};
use crate::secure::{Security, Side};
use crate::version::NodeId;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A connected, handshaken connection.
pub(crate) struct Connected {
    reader: FrameReader,
    writer: FrameWriter,
    /// The largest frame the node accepts.
    max_request: usize,
    /// The node's incarnation (see [`Hello::incarnation`]).
    incarnation: u64,
}

/// Requests are taken from callers only while less than this many bytes
/// wait to be written (backpressure on a slow connection).
const MAX_UNSENT: usize = 1 << 20;
/// Commands taken from callers per write, at most.
const MAX_BURST: usize = 256;

impl Connected {
    /// The largest frame the node accepts.
    pub(crate) fn max_request(&self) -> usize {
        self.max_request
    }
}

/// Opens a connection, authenticates (with a secret) and performs the
/// client handshake.
pub(crate) async fn connect(addr: SocketAddr, id: NodeId, opts: &ClientOptions) -> Result<Connected> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| RemoteError::new(ErrorCode::ConnectionLost, format!("cannot connect to {addr}: {e}")))?;
        let security = Security { secret: opts.secret.clone(), ..Security::default() };
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
            max_frame: opts.max_frame as u64,
            incarnation: 0,
        };
        writer.send(&Message::Hello(hello)).await.map_err(|_| lost())?;
        match reader.next().await {
            Some(Ok(Message::Hello(h))) if h.magic == MAGIC && h.version == PROTOCOL_VERSION => {
                let max_request = match usize::try_from(h.max_frame) {
                    Ok(0) => codec::DEFAULT_MAX_FRAME,
                    Ok(n) => n,
                    Err(_) => usize::MAX,
                };
                Ok(Connected { reader, writer, max_request, incarnation: h.incarnation })
            }
            // A node of another version: a newer one states its version
            // ahead of its refusal (`version_refusal`), in a `Hello` this
            // build decodes or, with fields it does not know, names as such.
            Some(Ok(Message::Hello(h))) if h.magic == MAGIC => Err(other_version(h.version)),
            Some(Ok(Message::Close { reason })) => Err(refused(reason)),
            Some(Ok(other)) => {
                Err(RemoteError::new(ErrorCode::BadRequest, format!("unexpected {} in handshake", other.kind())))
            }
            Some(Err(e)) => Err(match e.other_version() {
                Some(theirs) => other_version(theirs),
                None => RemoteError::new(ErrorCode::BadRequest, format!("malformed frame from node: {e}")),
            }),
            None => Err(lost()),
        }
    };
    tokio::time::timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| RemoteError::new(ErrorCode::ConnectionLost, format!("timed out connecting to {addr}")))?
}

/// The node speaks protocol version `theirs`, not ours.
fn other_version(theirs: u16) -> RemoteError {
    let msg = format!(
        "the node speaks protocol version {theirs}, this client {PROTOCOL_VERSION}: use a client of the node's version"
    );
    RemoteError::new(ErrorCode::BadRequest, msg)
}

fn refused(reason: CloseReason) -> RemoteError {
    match reason {
        // An older node, or one that does not say its version.
        CloseReason::VersionMismatch => {
            let msg = format!(
                "the node does not speak this client's protocol version {PROTOCOL_VERSION}: use a client of the \
                 node's version"
            );
            RemoteError::new(ErrorCode::BadRequest, msg)
        }
        CloseReason::WrongCluster => RemoteError::new(ErrorCode::Unauthorized, "the node belongs to another cluster"),
        CloseReason::Overloaded => {
            RemoteError::new(ErrorCode::ConnectionLost, "the node is at its connection limit; try again later")
        }
        other => RemoteError::new(ErrorCode::ConnectionLost, format!("the node closed the connection: {other:?}")),
    }
}

pub(crate) async fn run(
    addr: SocketAddr,
    id: NodeId,
    opts: ClientOptions,
    first: Connected,
    mut commands: mpsc::Receiver<Command>,
    max_request: Arc<AtomicUsize>,
) {
    let mut state = InFlight::default();
    let mut conn = Some(first);
    let mut backoff = opts.reconnect_min;
    loop {
        let Some(Connected { mut reader, mut writer, max_request: limit, incarnation }) = conn.take() else {
            // Not connected: wait for work (without retry) or reconnect.
            if !opts.retry && !state.has_pending() {
                match commands.recv().await {
                    // Sent (with the rest) once connected.
                    Some(cmd) => state.accept_unsent(cmd),
                    None => return,
                }
            } else if commands.is_closed() {
                // Every `Client` is gone, so no caller waits (a caller holds
                // one): stop redialing.
                return;
            }
            match connect(addr, id, &opts).await {
                Ok(c) => {
                    backoff = opts.reconnect_min;
                    conn = Some(c);
                }
                Err(e) => {
                    if !opts.retry {
                        state.fail_all(&e);
                    } else if e.code != ErrorCode::ConnectionLost {
                        // Refused for good: what was asked for meanwhile fails too.
                        while let Ok(cmd) = commands.try_recv() {
                            state.accept_unsent(cmd);
                        }
                        state.refuse(&e);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            continue;
        };
        max_request.store(limit, Ordering::Relaxed);
        state.set_max_request(limit);
        let mut out = Vec::new();
        state.resend(incarnation, &mut out);
        // A ping goes out when nothing was sent for `every`; the timer is
        // re-armed when it fires, not on every request.
        let every = opts.keepalive.max(Duration::from_millis(10));
        let keepalive = tokio::time::sleep(every);
        tokio::pin!(keepalive);
        let mut last_sent = tokio::time::Instant::now();
        let mut busy_poll = BusyPoll::new(opts.busy_poll);
        loop {
            state.unwatch_dropped(&mut out);
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
            if state.has_pending() && writer.pending() == 0 {
                busy_poll.wait(&mut reader).await;
            }
            // Dispatch whatever complete frames are buffered. A frame that
            // cannot be decoded leaves the stream out of step: drop the
            // connection (and reconnect) rather than guess.
            let mut broken = false;
            while let Some(frame) = reader.try_next() {
                match frame {
                    Ok(msg) => state.on_message(msg, &mut out),
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
                        state.accept(cmd, &mut out);
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
                    Some(Ok(msg)) => state.on_message(msg, &mut out),
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
        state.lose_connection(opts.retry);
    }
}
