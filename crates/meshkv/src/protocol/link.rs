//! One connection between two nodes as a state machine: handshake, then a
//! sending half and/or a receiving half depending on both sides' modes,
//! plus keep-alives and timeouts. Fed by the runtime, never does IO.

use super::codec::CodecError;
use super::message::{
    version_refusal, CloseReason, Hello, Message, Mode, Role, MAGIC, MAX_SHARED_PEERS, PROTOCOL_VERSION,
};
use super::receiver::RecvHalf;
use super::sender::{SendHalf, SendLimits};
use crate::storage::{Commit, Db};
use crate::version::NodeId;
use std::collections::VecDeque;
use std::sync::Arc;

/// Settings of a link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Cluster name; peers with another name are refused.
    pub cluster: String,
    /// What this side wants on the link.
    pub mode: Mode,
    /// Unacknowledged batches in flight (default 64).
    pub window: u64,
    /// Soft cap on one batch's size in bytes (default 256 KiB).
    pub batch_bytes: usize,
    /// Cap on records per batch (default 4096).
    pub batch_items: usize,
    /// Feed commits queued while the window is full before falling back to a
    /// new catch-up (default 1024; at most 64 MiB of them).
    pub queue: usize,
    /// Send a ping after this much silence, ms (default 5 000; at most a
    /// third of `idle_timeout_ms` is used).
    pub ping_ms: u64,
    /// Close after hearing nothing for this long, ms (default 30 000). The
    /// peer pings by its own settings, so give every node the same value
    /// (or keep it above three of the peers' ping intervals).
    pub idle_timeout_ms: u64,
    /// Close if the handshake is not done within this, ms (default 10 000).
    pub handshake_timeout_ms: u64,
}

impl LinkConfig {
    /// How long a link stays silent before pinging: `ping_ms`, shortened so
    /// that a peer with our idle timeout hears from us three times within it.
    pub fn ping_interval_ms(&self) -> u64 {
        self.ping_ms.min(self.idle_timeout_ms / 3).max(1)
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            cluster: "meshkv".into(),
            mode: Mode::Sync,
            window: 64,
            batch_bytes: 256 * 1024,
            batch_items: 4096,
            queue: 1024,
            ping_ms: 5_000,
            idle_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Something the runtime may want to report.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// The handshake succeeded.
    Connected {
        /// The peer's node id.
        peer: NodeId,
    },
    /// We received and applied a complete catch-up from the peer.
    CaughtUp {
        /// The peer's node id.
        peer: NodeId,
    },
    /// The peer told where it listens and which peers it knows (peer
    /// exchange); the runtime decides what to dial.
    Peers {
        /// Where the peer accepts connections, if it listens (an
        /// unspecified IP: the one its connection comes from).
        listen: Option<std::net::SocketAddr>,
        /// Listen addresses of the peer's other peers.
        known: Vec<std::net::SocketAddr>,
    },
    /// The link is closed; the runtime should drop the connection.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Whether the peer closed it (`false`: we did).
        by_peer: bool,
    },
}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer broke the protocol; the link is closed, nothing from the
    /// offending message was applied.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The local store failed; the link is closed.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::Error),
}

enum State {
    Handshake,
    Open,
    Closed,
}

/// The protocol state of one connection.
pub struct Link {
    db: Db,
    cfg: LinkConfig,
    state: State,
    peer: Option<NodeId>,
    send: Option<SendHalf>,
    recv: Option<RecvHalf>,
    outbox: VecDeque<Message>,
    events: VecDeque<LinkEvent>,
    started_ms: u64,
    last_heard_ms: u64,
    last_sent_ms: u64,
}

impl Link {
    /// A new link on a fresh connection; queues our `Hello`.
    pub fn new(db: Db, cfg: LinkConfig, now_ms: u64) -> Self {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster: cfg.cluster.clone(),
            node: db.node_id(),
            role: Role::Peer,
            mode: cfg.mode,
            policy: db.options().policy.fingerprint(),
            max_frame: 0,
            incarnation: 0,
        };
        let mut link = Link {
            db,
            cfg,
            state: State::Handshake,
            peer: None,
            send: None,
            recv: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            started_ms: now_ms,
            last_heard_ms: now_ms,
            last_sent_ms: now_ms,
        };
        link.outbox.push_back(Message::Hello(hello));
        link
    }

    /// The peer's node id, once the handshake is done.
    pub fn peer(&self) -> Option<NodeId> {
        self.peer
    }

    /// Whether the link is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether our writes go to the peer on this link (decided by the
    /// handshake; `false` before it). A link that does not send needs no
    /// commits from the change feed.
    pub fn sends(&self) -> bool {
        self.send.is_some()
    }

    /// Whether the peer's writes come to us on this link (decided by the
    /// handshake; `false` before it).
    pub fn receives(&self) -> bool {
        self.recv.is_some()
    }

    /// Whether our sending half finished its first catch-up (or we do not send).
    pub fn is_sender_live(&self) -> bool {
        self.send.as_ref().is_none_or(SendHalf::is_live)
    }

    /// Progress of a catch-up we are receiving: `(records applied, writes
    /// the sender's snapshot names beyond what we had)`. The second number
    /// counts superseded writes too, so it is an upper bound.
    pub fn catch_up_progress(&self) -> Option<(u64, u64)> {
        self.recv.as_ref().and_then(RecvHalf::catch_up_progress)
    }

    /// Records sent and received on this link.
    pub fn item_counts(&self) -> (u64, u64) {
        (self.send.as_ref().map_or(0, |s| s.sent_items), self.recv.as_ref().map_or(0, |r| r.received_items))
    }

    /// Writes this node covers that the peer is not yet known to cover:
    /// what our sending half has still to send (0 if we do not send).
    pub fn lag(&self, ours: &crate::VersionVector) -> u64 {
        self.peer_vv().map_or(0, |peer| ours.beyond(peer))
    }

    /// What our sending half knows the peer to cover (`None` if we do not
    /// send).
    pub fn peer_vv(&self) -> Option<&crate::VersionVector> {
        self.send.as_ref().map(|send| send.peer_vv())
    }

    /// Handles one message from the peer.
    pub fn handle_message(&mut self, msg: Message, now_ms: u64) -> Result<(), LinkError> {
        self.handle_queued_message(msg, now_ms, false)
    }

    /// [`handle_message`](Self::handle_message) for a runtime that knows
    /// whether another message is already waiting (`more`). While one is, the
    /// link may defer applying the batches of a key-order catch-up (up to a
    /// bound) to apply them together: the store then writes the keys it does
    /// not hold straight into tables.
    pub fn handle_queued_message(&mut self, msg: Message, now_ms: u64, more: bool) -> Result<(), LinkError> {
        if self.is_closed() {
            return Ok(());
        }
        self.last_heard_ms = now_ms;
        let mut result = self.dispatch(msg, more);
        if let (Ok(()), false, Some(recv)) = (&result, more, self.recv.as_mut()) {
            result = recv.flush(&self.db);
        }
        if let Err(e) = &result {
            let reason = match e {
                LinkError::Protocol(_) => CloseReason::ProtocolError,
                LinkError::Storage(_) => CloseReason::StorageError,
            };
            self.close(reason);
        }
        result
    }

    fn dispatch(&mut self, msg: Message, more: bool) -> Result<(), LinkError> {
        match (&self.state, msg) {
            (_, Message::Close { reason }) => {
                self.state = State::Closed;
                self.events.push_back(LinkEvent::Closed { reason, by_peer: true });
                Ok(())
            }
            (State::Handshake, Message::Hello(hello)) => self.on_hello(hello),
            (State::Handshake, other) => Err(LinkError::Protocol(format!("{} before hello", other.kind()))),
            (State::Open, Message::Hello(_)) => Err(LinkError::Protocol("second hello".into())),
            (State::Open, Message::Ping) => Ok(()),
            (State::Open, Message::Digest { vv, resume, held }) => {
                let send = self.send.as_mut().ok_or_else(|| LinkError::Protocol("digest to a non-sender".into()))?;
                let start = send.on_digest(&self.db, vv, resume, held)?;
                self.outbox.push_back(start);
                Ok(())
            }
            (State::Open, Message::Peers { listen, known }) => {
                // Decoding refused longer lists already.
                debug_assert!(known.len() <= MAX_SHARED_PEERS);
                self.events.push_back(LinkEvent::Peers { listen, known });
                Ok(())
            }
            (State::Open, Message::Ack { id }) => {
                let send = self.send.as_mut().ok_or_else(|| LinkError::Protocol("ack to a non-sender".into()))?;
                send.on_ack(id);
                Ok(())
            }
            (State::Open, msg) => {
                let peer = self.peer.unwrap_or(NodeId(0));
                let recv = self
                    .recv
                    .as_mut()
                    .ok_or_else(|| LinkError::Protocol(format!("{} to a non-receiver", msg.kind())))?;
                let reply = recv.on_message(&self.db, msg, more)?;
                if let Some(id) = reply.ack {
                    self.outbox.push_back(Message::Ack { id });
                }
                if reply.caught_up {
                    self.events.push_back(LinkEvent::CaughtUp { peer });
                }
                Ok(())
            }
            (State::Closed, _) => Ok(()),
        }
    }

    fn on_hello(&mut self, hello: Hello) -> Result<(), LinkError> {
        let refuse = |me: &mut Link, reason: CloseReason, why: String| {
            me.close(reason);
            Err(LinkError::Protocol(why))
        };
        if hello.magic != MAGIC {
            return refuse(self, CloseReason::ProtocolError, "bad magic".into());
        }
        if hello.version != PROTOCOL_VERSION {
            self.close(CloseReason::VersionMismatch);
            // `close` queued the Close alone; a newer side gets our version
            // ahead of it.
            self.outbox = version_refusal(hello.version).into();
            let why = CodecError::OtherVersion { theirs: hello.version, ours: PROTOCOL_VERSION };
            return Err(LinkError::Protocol(why.to_string()));
        }
        if hello.cluster != self.cfg.cluster {
            return refuse(self, CloseReason::WrongCluster, format!("cluster {:?}", hello.cluster));
        }
        if hello.node == self.db.node_id() {
            return refuse(self, CloseReason::SelfConnection, "connected to itself".into());
        }
        if hello.policy != self.db.options().policy.fingerprint() {
            return refuse(self, CloseReason::PolicyMismatch, "different conflict policy".into());
        }
        if hello.role != Role::Peer {
            return refuse(self, CloseReason::ProtocolError, "not a peer".into());
        }
        let peer = hello.node;
        self.peer = Some(peer);
        self.state = State::Open;
        self.events.push_back(LinkEvent::Connected { peer });
        if self.cfg.mode.sends() && hello.mode.receives() {
            let limits = SendLimits {
                window: self.cfg.window.max(1),
                batch_bytes: self.cfg.batch_bytes.max(1),
                batch_items: self.cfg.batch_items.max(1),
                queue: self.cfg.queue,
            };
            self.send = Some(SendHalf::new(peer, limits));
        }
        if self.cfg.mode.receives() && hello.mode.sends() {
            let recv = RecvHalf::new(peer);
            self.outbox.push_back(recv.digest(&self.db)?);
            self.recv = Some(recv);
        }
        Ok(())
    }

    /// Hands the link a commit from the local change feed. The runtime must
    /// subscribe before creating the link and pass every commit in order.
    pub fn handle_commit(&mut self, commit: Arc<Commit>) {
        if let Some(send) = self.send.as_mut() {
            send.on_commit(commit);
        }
    }

    /// The feed dropped commits before they reached this link.
    pub fn handle_feed_lagged(&mut self) {
        if let Some(send) = self.send.as_mut() {
            send.on_feed_lagged();
        }
    }

    /// Queues a peer-exchange message: where we accept peers and the
    /// listen addresses of our other peers (the first [`MAX_SHARED_PEERS`]).
    /// Ignored until the handshake is done.
    pub fn share_peers(&mut self, listen: Option<std::net::SocketAddr>, mut known: Vec<std::net::SocketAddr>) {
        if matches!(self.state, State::Open) {
            known.truncate(MAX_SHARED_PEERS);
            self.outbox.push_back(Message::Peers { listen, known });
        }
    }

    /// Advances timers: keep-alives and timeouts.
    pub fn handle_tick(&mut self, now_ms: u64) {
        if self.is_closed() {
            return;
        }
        let handshake_late = matches!(self.state, State::Handshake)
            && now_ms.saturating_sub(self.started_ms) > self.cfg.handshake_timeout_ms;
        if handshake_late || now_ms.saturating_sub(self.last_heard_ms) > self.cfg.idle_timeout_ms {
            self.close(CloseReason::Timeout);
            return;
        }
        // One ping waiting is enough (the socket may be stalled).
        let ping_queued = self.outbox.iter().any(|m| matches!(m, Message::Ping));
        if matches!(self.state, State::Open)
            && !ping_queued
            && now_ms.saturating_sub(self.last_sent_ms) >= self.cfg.ping_interval_ms()
        {
            self.outbox.push_back(Message::Ping);
        }
    }

    /// The next message to send, if any. Produces catch-up and live batches
    /// as the window allows.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Result<Option<Message>, LinkError> {
        if self.outbox.is_empty() && matches!(self.state, State::Open) {
            if let Some(send) = self.send.as_mut() {
                match send.poll(&self.db) {
                    Ok(Some(msg)) => self.outbox.push_back(msg),
                    Ok(None) => {}
                    Err(e) => {
                        self.close(CloseReason::StorageError);
                        return Err(e.into());
                    }
                }
            }
        }
        let msg = self.outbox.pop_front();
        if msg.is_some() {
            self.last_sent_ms = now_ms;
        }
        Ok(msg)
    }

    /// The next event for the runtime, if any.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Closes the link, queueing a `Close` for the peer.
    pub fn close(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.state = State::Closed;
        self.outbox.clear();
        self.outbox.push_back(Message::Close { reason });
        self.events.push_back(LinkEvent::Closed { reason, by_peer: false });
    }
}
