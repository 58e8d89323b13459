//! The simulated network: nodes, connections and the messages in flight.

use super::oracle::check_coverage;
use super::Sim;
use crate::params::{Policy, SimClock};
use crate::stats::{describe, observe_sent, Direction};
use meshkv::protocol::{codec, CloseReason, Link, LinkConfig, LinkEvent, Message, Mode};
use meshkv::storage::{FeedError, Subscription};
use meshkv::{Db, KeyRange, NodeId};
use rand::Rng;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Nodes and connections

pub(super) struct Node {
    pub(super) id: NodeId,
    pub(super) dir: tempfile::TempDir,
    pub(super) clock: Arc<SimClock>,
    /// Added to every skew this node's clock is given.
    pub(super) skew_base: u64,
    pub(super) db: Option<Db>,
    /// When a crashed or wiped node comes back, or a late joiner starts.
    pub(super) restart_at: u64,
    /// Whether its store was ever opened (`false`: a late joiner not yet started).
    pub(super) joined: bool,
    /// Left for good.
    pub(super) gone: bool,
    /// A copy of its directory taken at a crash, for the wipe to restore
    /// instead of starting empty.
    pub(super) backup: Option<tempfile::TempDir>,
}

/// One side of a connection: the feed subscription (taken before the link
/// was created, dropped at the handshake if the link will not send, as the
/// runtime does), the protocol state machine and the undecoded bytes received.
pub(super) struct End {
    sub: Option<Subscription>,
    pub(super) link: Link,
    rx: Vec<u8>,
}

pub(super) struct InFlight {
    at: u64,
    bytes: Vec<u8>,
    pub(super) ping: bool,
}

pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) nodes: [usize; 2],
    /// `None`: that side's process crashed; the other side has not noticed.
    pub(super) ends: [Option<End>; 2],
    /// `queues[i]` carries bytes from `ends[i]` to `ends[1 - i]`.
    pub(super) queues: [VecDeque<InFlight>; 2],
    dirs: [Direction; 2],
    /// Partitioned without a reset: nothing is delivered.
    pub(super) frozen: bool,
    /// Reset: dropped at the end of the step.
    pub(super) dead: bool,
}

impl Conn {
    pub(super) fn side_of(&self, node: usize) -> Option<usize> {
        self.nodes.iter().position(|&n| n == node)
    }

    pub(super) fn pair(&self) -> (usize, usize) {
        (self.nodes[0].min(self.nodes[1]), self.nodes[0].max(self.nodes[1]))
    }
}

/// A fresh directory for one store: under `MESHKV_SIM_DIR` if set, else on
/// tmpfs (`/dev/shm`) when there is one, else in the system temp directory.
/// The simulated crashes are process crashes, so what fsync guarantees is not
/// under test here (`crash_recovery.rs` covers it), and on a disk the fsyncs
/// of opening stores would take most of the run time.
pub(super) fn store_dir() -> tempfile::TempDir {
    let base = std::env::var_os("MESHKV_SIM_DIR").map(std::path::PathBuf::from).or_else(|| {
        let shm = Path::new("/dev/shm");
        shm.is_dir().then(|| shm.to_path_buf())
    });
    match base {
        Some(base) => tempfile::Builder::new()
            .prefix("meshkv-sim-")
            .tempdir_in(&base)
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// Copies the directory tree `from` into `to` (which exists), file by file,
/// as a backup tool would: the copies are new files.
pub(super) fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

impl Sim {
    // -- the network ------------------------------------------------------------

    pub(super) fn reconnect(&mut self) {
        let edges: Vec<(usize, usize)> = self.topology.iter().copied().collect();
        for (a, b) in edges {
            if self.conns.iter().any(|c| c.pair() == (a, b)) {
                continue;
            }
            if !self.up(a) || !self.up(b) || self.cut.contains(&(a, b)) {
                self.reconnect_at.remove(&(a, b));
                continue;
            }
            match self.reconnect_at.get(&(a, b)) {
                None => {
                    let at = self.now + self.rng.random_range(5..=200);
                    self.reconnect_at.insert((a, b), at);
                }
                Some(&at) if at <= self.now => {
                    self.reconnect_at.remove(&(a, b));
                    self.connect(a, b);
                }
                Some(_) => {}
            }
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        let (mode_a, mode_b) = self.modes[&(a, b)];
        let end = |i: usize, mode: Mode| {
            let db = self.nodes[i].db.clone().expect("up");
            // Subscribe first, so the link misses no commit after its creation.
            let sub = Some(db.subscribe(KeyRange::all()));
            let cfg = LinkConfig { mode, ..self.p.link.clone() };
            End { sub, link: Link::new(db, cfg, self.now), rx: Vec::new() }
        };
        let ends = [Some(end(a, mode_a)), Some(end(b, mode_b))];
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.push(Conn {
            id,
            nodes: [a, b],
            ends,
            queues: [VecDeque::new(), VecDeque::new()],
            dirs: [Direction::default(), Direction::default()],
            frozen: false,
            dead: false,
        });
        self.log(|| format!("conn {id}: {a} ({mode_a:?}) <-> {b} ({mode_b:?}) opened"));
    }

    /// Delivers what is due; checks coverage (I3) on the receiver after
    /// every message.
    pub(super) fn deliver(&mut self) -> usize {
        let now = self.now;
        let lww = matches!(self.p.policy, Policy::Lww);
        let mut moved = 0;
        for conn in &mut self.conns {
            if conn.frozen || conn.dead {
                continue;
            }
            for from in 0..2 {
                let to = 1 - from;
                while conn.queues[from].front().is_some_and(|m| m.at <= now) {
                    let m = conn.queues[from].pop_front().expect("front");
                    if !m.ping {
                        moved += 1;
                    }
                    // As the runtime does: the link may gather key-order
                    // batches while another message is already waiting.
                    let next_due = conn.queues[from].front().is_some_and(|m| m.at <= now);
                    let Some(end) = conn.ends[to].as_mut() else { continue };
                    end.rx.extend_from_slice(&m.bytes);
                    loop {
                        let (msg, used) = match codec::decode(&end.rx, codec::DEFAULT_MAX_FRAME) {
                            Ok(Some(frame)) => frame,
                            Ok(None) => break,
                            Err(e) => panic!("conn {}: node {} cannot decode a frame: {e}", conn.id, conn.nodes[to]),
                        };
                        end.rx.drain(..used);
                        if self.trace {
                            eprintln!(
                                "[seed {} t={now}] conn {}: {} -> {} {}",
                                self.seed,
                                conn.id,
                                conn.nodes[from],
                                conn.nodes[to],
                                describe(&msg)
                            );
                        }
                        let more = next_due || codec::frame_ready(&end.rx, codec::DEFAULT_MAX_FRAME);
                        if let Err(e) = end.link.handle_queued_message(msg, now, more) {
                            panic!("conn {}: node {} rejected a message: {e}", conn.id, conn.nodes[to]);
                        }
                        let node = conn.nodes[to];
                        if let Some(db) = &self.nodes[node].db {
                            check_coverage(node, db, &self.writes, lww);
                        }
                    }
                }
            }
        }
        moved
    }

    pub(super) fn tick(&mut self) {
        for conn in &mut self.conns {
            for end in conn.ends.iter_mut().flatten() {
                end.link.handle_tick(self.now);
            }
        }
    }

    pub(super) fn pump(&mut self, chaos: bool) {
        for conn in &mut self.conns {
            for end in conn.ends.iter_mut().flatten() {
                if chaos && self.p.pump_p < 1.0 && !self.rng.random_bool(self.p.pump_p) {
                    continue; // a slow consumer of the change feed
                }
                let Some(sub) = end.sub.as_mut() else { continue };
                loop {
                    match sub.try_recv_commit() {
                        Ok(Some(commit)) => end.link.handle_commit(commit),
                        Ok(None) => break,
                        Err(FeedError::Lagged { .. }) => {
                            self.stats.feed_lagged += 1;
                            end.link.handle_feed_lagged();
                        }
                        Err(e) => panic!("conn {}: feed failed: {e}", conn.id),
                    }
                }
            }
        }
    }

    pub(super) fn transmit(&mut self, chaos: bool) -> usize {
        let mut sent = 0;
        let mut conns = std::mem::take(&mut self.conns);
        'conns: for conn in &mut conns {
            if conn.dead {
                continue;
            }
            for from in 0..2 {
                while let Some(end) = conn.ends[from].as_mut() {
                    let msg = match end.link.poll_transmit(self.now) {
                        Ok(Some(msg)) => msg,
                        Ok(None) => break,
                        Err(e) => {
                            panic!("conn {}: node {} failed to produce a message: {e}", conn.id, conn.nodes[from])
                        }
                    };
                    observe_sent(&mut self.stats, &mut conn.dirs[from], &msg);
                    if chaos && self.p.reset_p > 0.0 && self.rng.random_bool(self.p.reset_p) {
                        // A lost message: the connection is reset right here.
                        conn.dead = true;
                        self.stats.resets += 1;
                        self.log(|| format!("conn {}: reset while sending {}", conn.id, msg.kind()));
                        continue 'conns;
                    }
                    let ping = matches!(msg, Message::Ping);
                    if !ping {
                        sent += 1;
                    }
                    self.enqueue(&mut conn.queues[from], &msg, ping);
                }
            }
        }
        self.conns = conns;
        sent
    }

    fn enqueue(&mut self, queue: &mut VecDeque<InFlight>, msg: &Message, ping: bool) {
        let mut bytes = Vec::new();
        codec::encode(msg, &mut bytes);
        let mut delay = self.rng.random_range(0..=self.p.delay_max);
        if self.rng.random_bool(self.p.spike_p) {
            delay += self.rng.random_range(50..=250);
        }
        let at = (self.now + delay).max(queue.back().map_or(0, |m| m.at));
        if bytes.len() > 1 && self.rng.random_bool(self.p.split_p) {
            let tail = bytes.split_off(self.rng.random_range(1..bytes.len()));
            let later = at + self.rng.random_range(0..=5);
            queue.push_back(InFlight { at, bytes, ping });
            queue.push_back(InFlight { at: later, bytes: tail, ping });
            self.stats.split_frames += 1;
        } else {
            queue.push_back(InFlight { at, bytes, ping });
        }
    }

    pub(super) fn events(&mut self) {
        for conn in &mut self.conns {
            for side in 0..2 {
                let Some(end) = conn.ends[side].as_mut() else { continue };
                while let Some(ev) = end.link.poll_event() {
                    match ev {
                        LinkEvent::Connected { .. } => {
                            self.stats.connects += 1;
                            if side == 0 {
                                match (end.link.sends(), end.link.receives()) {
                                    (true, true) => {}
                                    (false, false) => self.stats.no_flow_links += 1,
                                    _ => self.stats.one_way_links += 1,
                                }
                            }
                            if !end.link.sends() {
                                end.sub = None;
                            }
                        }
                        LinkEvent::CaughtUp { .. } => self.stats.catch_ups += 1,
                        LinkEvent::Closed { reason, by_peer } => {
                            match reason {
                                CloseReason::Timeout if !by_peer => self.stats.timeouts += 1,
                                CloseReason::Timeout | CloseReason::Shutdown => {}
                                other => panic!(
                                    "conn {}: link of node {} closed with {other:?} (by peer: {by_peer})",
                                    conn.id, conn.nodes[side]
                                ),
                            }
                            if self.trace {
                                eprintln!(
                                    "[seed {} t={}] conn {}: node {} closed ({reason:?}, by peer: {by_peer})",
                                    self.seed, self.now, conn.id, conn.nodes[side]
                                );
                            }
                        }
                        // Simulated nodes do not exchange peers.
                        other => panic!("conn {}: unexpected {other:?}", conn.id),
                    }
                }
            }
        }
    }
}
