//! What the client's connection task keeps between frames: requests
//! awaiting replies and watches, by request id and by the node's ids.

use super::{lost, Command, Result, WatchEvent};
use crate::protocol::request::{Request, Response};
use crate::protocol::{codec, Message};
use crate::storage::KeyRange;
use std::collections::{BTreeMap, HashMap};
use tokio::sync::{mpsc, oneshot};

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Response>>,
    /// Encoded for a connection: the node may have it.
    sent: bool,
}

struct Watch {
    range: KeyRange,
    events: mpsc::Sender<WatchEvent>,
    /// Until the node has confirmed the watch.
    reply: Option<oneshot::Sender<Result<()>>>,
    /// A `Lagged` is queued and no change has fit since.
    lagging: bool,
}

impl Watch {
    /// Queues a change, keeping the buffer's last slot for `Lagged`, so a
    /// watcher that falls behind always learns that changes were dropped.
    fn deliver(&mut self, event: WatchEvent) {
        if self.events.capacity() >= 2 {
            self.lagging = false;
            let _ = self.events.try_send(event);
        } else {
            self.lag();
        }
    }

    fn lag(&mut self) {
        if !self.lagging {
            self.lagging = self.events.try_send(WatchEvent::Lagged).is_ok();
        }
    }
}

/// Requests and watches of one client, across its connections.
#[derive(Default)]
pub(super) struct InFlight {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    /// Local watch key -> watch.
    watches: HashMap<u64, Watch>,
    next_watch: u64,
    /// Request id of a watch registration -> local watch key (per connection).
    watch_requests: HashMap<u64, u64>,
    /// The node's watch id -> local watch key (per connection).
    live_watches: HashMap<u64, u64>,
    /// The node's frame limit (0 until connected).
    max_request: usize,
    /// The incarnation of the node the sent requests went to (`None`
    /// until connected).
    incarnation: Option<u64>,
}

impl InFlight {
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The node's frame limit, from this connection's handshake.
    pub(super) fn set_max_request(&mut self, limit: usize) {
        self.max_request = limit;
    }

    /// Encodes a request into `out` unless its frame would exceed the
    /// node's limit (the node would drop the connection, and a re-send
    /// would meet the same fate): then `false`, and `out` is unchanged.
    fn encode(&self, msg: &Message, out: &mut Vec<u8>) -> bool {
        Self::encode_within(self.max_request, msg, out)
    }

    fn encode_within(limit: usize, msg: &Message, out: &mut Vec<u8>) -> bool {
        let before = out.len();
        if codec::encode(msg, out) <= limit {
            return true;
        }
        out.truncate(before);
        false
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Registers a command and encodes its request into `out`.
    pub(super) fn accept(&mut self, cmd: Command, out: &mut Vec<u8>) {
        let rid = self.take_id();
        match cmd {
            Command::Call { request, reply } => {
                // Encoded before it is kept for a re-send: no copy of its keys and values.
                let msg = Message::Request { id: rid, request };
                let fits = self.encode(&msg, out);
                let Message::Request { request, .. } = msg else { unreachable!("built above") };
                if fits {
                    self.pending.insert(rid, Pending { request, reply, sent: true });
                } else {
                    let _ = reply.send(Err(too_large(self.max_request)));
                }
            }
            Command::Watch { range, events, reply } => {
                self.unwatch_dropped(out);
                self.next_watch += 1;
                let key = self.next_watch;
                codec::encode(&Message::Request { id: rid, request: Request::Watch { range: range.clone() } }, out);
                self.watch_requests.insert(rid, key);
                self.watches.insert(key, Watch { range, events, reply: Some(reply), lagging: false });
            }
        }
    }

    /// Registers a command while there is no connection; it is sent by
    /// [`resend`](Self::resend) once there is.
    pub(super) fn accept_unsent(&mut self, cmd: Command) {
        match cmd {
            Command::Call { request, reply } => {
                let rid = self.take_id();
                self.pending.insert(rid, Pending { request, reply, sent: false });
            }
            Command::Watch { range, events, reply } => {
                self.next_watch += 1;
                self.watches.insert(self.next_watch, Watch { range, events, reply: Some(reply), lagging: false });
            }
        }
    }

    /// On a new connection to the node's `incarnation`: encodes every
    /// pending request whose caller still waits, and registers the watches
    /// again. If the node restarted since they were sent (another
    /// incarnation), writes sent before fail with connection-lost instead:
    /// the node no longer remembers their replies, so a re-send could
    /// apply them twice.
    pub(super) fn resend(&mut self, incarnation: u64, out: &mut Vec<u8>) {
        self.live_watches.clear();
        self.watch_requests.clear();
        self.pending.retain(|_, p| !p.reply.is_closed());
        if self.incarnation.is_some_and(|before| before != incarnation) {
            let unknown: Vec<u64> =
                self.pending.iter().filter(|(_, p)| p.sent && p.request.is_write()).map(|(rid, _)| *rid).collect();
            for rid in unknown {
                if let Some(p) = self.pending.remove(&rid) {
                    let _ = p.reply.send(Err(restarted()));
                }
            }
        }
        self.incarnation = Some(incarnation);
        let mut too_big = Vec::new();
        for (rid, p) in &mut self.pending {
            p.sent = true;
            if !Self::encode_within(self.max_request, &Message::Request { id: *rid, request: p.request.clone() }, out) {
                too_big.push(*rid);
            }
        }
        for rid in too_big {
            if let Some(p) = self.pending.remove(&rid) {
                let _ = p.reply.send(Err(too_large(self.max_request)));
            }
        }
        self.watches.retain(|_, w| !w.events.is_closed());
        let keys: Vec<u64> = self.watches.keys().copied().collect();
        for key in keys {
            let rid = self.take_id();
            self.watch_requests.insert(rid, key);
            let w = self.watches.get_mut(&key).unwrap_or_else(|| unreachable!("listed above"));
            codec::encode(&Message::Request { id: rid, request: Request::Watch { range: w.range.clone() } }, out);
            if w.reply.is_none() {
                // Changes made while disconnected were not seen.
                w.lag();
            }
        }
    }

    /// The connection is lost: fails what may not be sent again (with
    /// `retry` off, everything, watches included).
    pub(super) fn lose_connection(&mut self, retry: bool) {
        let failed: Vec<u64> =
            self.pending.iter().filter(|(_, p)| !retry || !resendable(&p.request)).map(|(k, _)| *k).collect();
        for rid in failed {
            if let Some(p) = self.pending.remove(&rid) {
                let _ = p.reply.send(Err(lost()));
            }
        }
        if !retry {
            self.fail_watches();
        }
    }

    /// No connection could be made (with `retry` off): fails every request
    /// and watch with `error`.
    pub(super) fn fail_all(&mut self, error: &super::Error) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(error.clone()));
        }
        self.fail_watches();
    }

    /// A reconnection was refused for good (the node now speaks another
    /// protocol version, or belongs to another cluster or secret): retrying
    /// cannot help, so everything fails now with `error` instead of at its
    /// timeout, except a write already sent, which the node before may have
    /// applied: that one fails as lost.
    pub(super) fn refuse(&mut self, error: &super::Error) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let e = if p.sent && p.request.is_write() { unanswered() } else { error.clone() };
            let _ = p.reply.send(Err(e));
        }
        for (_, w) in self.watches.drain() {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    fn fail_watches(&mut self) {
        for (_, w) in self.watches.drain() {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(lost()));
            }
        }
    }

    /// Stops, on the node, the watches whose receivers were dropped, so
    /// they free their slots there.
    pub(super) fn unwatch_dropped(&mut self, out: &mut Vec<u8>) {
        if self.watches.values().all(|w| !w.events.is_closed()) {
            return;
        }
        self.watches.retain(|_, w| !w.events.is_closed());
        let gone: Vec<u64> =
            self.live_watches.iter().filter(|(_, key)| !self.watches.contains_key(key)).map(|(id, _)| *id).collect();
        for watch in gone {
            self.live_watches.remove(&watch);
            let rid = self.take_id();
            codec::encode(&Message::Request { id: rid, request: Request::Unwatch { watch } }, out);
        }
    }

    /// Dispatches a message from the node; requests it causes (closing a
    /// cursor nobody reads) go into `out`.
    pub(super) fn on_message(&mut self, msg: Message, out: &mut Vec<u8>) {
        match msg {
            Message::Reply { id, result } => {
                if let Some(key) = self.watch_requests.remove(&id) {
                    self.on_watching(key, result, out);
                } else if let Some(p) = self.pending.remove(&id) {
                    if let Err(Ok(Response::Chunk { cursor, done: false, .. })) = p.reply.send(result) {
                        // The caller gave up (timed out, or dropped its
                        // scan) before the cursor's first chunk came.
                        let rid = self.take_id();
                        codec::encode(&Message::Request { id: rid, request: Request::ScanClose { cursor } }, out);
                    }
                }
            }
            Message::Watch { watch, key, value } => {
                if let Some(w) = self.live_watches.get(&watch).and_then(|k| self.watches.get_mut(k)) {
                    w.deliver(WatchEvent::Change { key, value });
                }
            }
            Message::WatchLagged { watch, .. } => {
                if let Some(w) = self.live_watches.get(&watch).and_then(|k| self.watches.get_mut(k)) {
                    w.lag();
                }
            }
            _ => {}
        }
    }

    fn on_watching(&mut self, key: u64, result: Result<Response>, out: &mut Vec<u8>) {
        let Some(w) = self.watches.get_mut(&key) else {
            if let Ok(Response::Watching { watch }) = result {
                // Its receiver was dropped while the node set it up.
                let rid = self.take_id();
                codec::encode(&Message::Request { id: rid, request: Request::Unwatch { watch } }, out);
            }
            return;
        };
        match result {
            Ok(Response::Watching { watch }) => {
                self.live_watches.insert(watch, key);
                if let Some(reply) = w.reply.take() {
                    let _ = reply.send(Ok(()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(reply) = w.reply.take() {
                    let _ = reply.send(Err(e));
                }
                self.watches.remove(&key);
            }
        }
    }
}

/// A write sent to a node that restarted before answering.
fn restarted() -> super::Error {
    crate::protocol::request::RemoteError::new(
        crate::protocol::request::ErrorCode::ConnectionLost,
        "the node restarted before answering: the write may or may not have been applied (not re-sent)",
    )
}

fn unanswered() -> super::Error {
    crate::protocol::request::RemoteError::new(
        crate::protocol::request::ErrorCode::ConnectionLost,
        "the connection was lost before the node answered: the write may or may not have been applied",
    )
}

fn too_large(limit: usize) -> super::Error {
    crate::protocol::request::RemoteError::new(
        crate::protocol::request::ErrorCode::BadRequest,
        format!("the request exceeds the node's frame limit of {limit} bytes (nothing was sent)"),
    )
}

/// Whether a request may be sent again on a new connection.
fn resendable(r: &Request) -> bool {
    !matches!(r, Request::ScanMore { .. } | Request::ScanClose { .. } | Request::Unwatch { .. })
}
