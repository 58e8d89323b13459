//! The sending half of a link: a catch-up from one snapshot, then a gapless
//! live stream of commits, under a window of unacknowledged batches.

use super::message::{CatchUpOrder, Item, Message};
use crate::storage::{ChangesSince, Commit, Db, KeySkip, ResumePoint};
use crate::version::{Dot, NodeId, VersionVector};
use std::collections::VecDeque;
use std::sync::Arc;

/// Limits that keep one link's memory bounded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendLimits {
    /// Unacknowledged batches in flight.
    pub window: u64,
    /// Soft cap on the encoded size of one batch.
    pub batch_bytes: usize,
    /// Cap on records per batch.
    pub batch_items: usize,
    /// Feed commits queued while the window is full; beyond this (or
    /// [`MAX_QUEUED_BYTES`]) the link falls back to a new catch-up.
    pub queue: usize,
}

/// Bytes of keys and records the live queue may hold: a few huge commits
/// must not pin unbounded memory while the peer is slow.
const MAX_QUEUED_BYTES: usize = 64 << 20;

enum Phase {
    /// Waiting for the peer's digest.
    Idle,
    /// Streaming a snapshot.
    CatchingUp(Box<ChangesSince>),
    /// Forwarding commits.
    Live,
}

pub(crate) struct SendHalf {
    peer: NodeId,
    limits: SendLimits,
    phase: Phase,
    next_id: u64,
    acked: u64,
    /// Commits at or below this id are contained in the current snapshot.
    snapshot_commit: u64,
    queue: VecDeque<Arc<Commit>>,
    /// Changes of the queue's first commit already sent: a commit larger
    /// than a batch goes in parts.
    front_sent: usize,
    /// About how many bytes the queued commits hold.
    queued_bytes: usize,
    /// The queue overflowed: the live stream has a gap.
    lagged: bool,
    /// The version vector the peer covers once it has applied everything
    /// sent so far.
    peer_vv: VersionVector,
    /// Writes the peer's last digest named as held above its vector: it
    /// keeps them, so later catch-ups leave them out too.
    peer_held: Vec<Dot>,
    /// Records sent (for stats and tests).
    pub sent_items: u64,
}

impl SendHalf {
    pub fn new(peer: NodeId, limits: SendLimits) -> Self {
        SendHalf {
            peer,
            limits,
            phase: Phase::Idle,
            next_id: 1,
            acked: 0,
            snapshot_commit: 0,
            queue: VecDeque::new(),
            front_sent: 0,
            queued_bytes: 0,
            lagged: false,
            peer_vv: VersionVector::new(),
            peer_held: Vec::new(),
            sent_items: 0,
        }
    }

    /// What the peer will cover once it has applied everything sent.
    pub fn peer_vv(&self) -> &VersionVector {
        &self.peer_vv
    }

    /// Whether the initial catch-up finished and the stream is live.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live)
    }

    /// The peer asked for what it lacks.
    pub fn on_digest(
        &mut self,
        db: &Db,
        vv: VersionVector,
        resume: Option<ResumePoint>,
        held: Vec<Dot>,
    ) -> crate::Result<Message> {
        self.peer_held = held;
        let mut since = vv;
        let mut skip = None;
        match resume {
            Some(ResumePoint::Log(r)) => since.join(&r),
            Some(ResumePoint::Key { since: s, key, snapshot }) => {
                since.join(&s);
                skip = Some(KeySkip { key, covered: snapshot });
            }
            None => {}
        }
        self.start_catch_up(db, since, skip)
    }

    /// Starts a catch-up from a new snapshot, in the order
    /// [`Snapshot::catch_up`](crate::storage::Snapshot::catch_up) picks.
    fn start_catch_up(&mut self, db: &Db, since: VersionVector, skip: Option<KeySkip>) -> crate::Result<Message> {
        let changes = db.snapshot().catch_up(&since, skip.clone())?.excluding(self.peer_held.clone());
        // The receiver stores resume points that claim parts of this
        // snapshot done; a power loss here must not take back a write that
        // dominates one the stream skips (docs/ALGORITHM.md §5).
        db.sync()?;
        let order = if changes.is_key_order() { CatchUpOrder::Key { skip } } else { CatchUpOrder::Log };
        self.snapshot_commit = changes.commit_id();
        let snapshot = changes.version_vector().clone();
        self.queue.retain(|c| c.id > self.snapshot_commit);
        self.queued_bytes = self.queue.iter().map(|c| commit_bytes(c)).sum();
        self.front_sent = 0;
        self.lagged = false;
        self.phase = Phase::CatchingUp(Box::new(changes));
        Ok(Message::CatchUpStart { since, snapshot, order })
    }

    pub fn on_commit(&mut self, commit: Arc<Commit>) {
        if matches!(self.phase, Phase::Idle) {
            // The first snapshot, taken later, will contain it.
            return;
        }
        if commit.id <= self.snapshot_commit || self.lagged {
            return;
        }
        let bytes = commit_bytes(&commit);
        if self.queue.len() >= self.limits.queue || self.queued_bytes + bytes > MAX_QUEUED_BYTES {
            self.on_feed_lagged();
            return;
        }
        self.queued_bytes += bytes;
        self.queue.push_back(commit);
    }

    /// The feed itself dropped commits for this link.
    pub fn on_feed_lagged(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
        self.front_sent = 0;
        self.lagged = true;
    }

    pub fn on_ack(&mut self, id: u64) {
        self.acked = self.acked.max(id.min(self.next_id - 1));
    }

    /// The next message to send, if the window allows and there is data.
    pub fn poll(&mut self, db: &Db) -> crate::Result<Option<Message>> {
        if self.next_id - self.acked > self.limits.window {
            return Ok(None);
        }
        match &mut self.phase {
            Phase::Idle => Ok(None),
            Phase::CatchingUp(changes) => {
                let mut items = Vec::new();
                let mut bytes = 0;
                while items.len() < self.limits.batch_items && bytes < self.limits.batch_bytes {
                    let Some((key, record)) = changes.next_encoded()? else { break };
                    bytes += key.len() + record.len();
                    items.push(Item { key, record });
                }
                if items.is_empty() {
                    let vv = changes.version_vector().clone();
                    self.phase = Phase::Live;
                    self.peer_vv.join(&vv);
                    return Ok(Some(Message::CaughtUp { id: self.take_id(), vv }));
                }
                ensure_durable(db, &items)?;
                self.sent_items += items.len() as u64;
                let position = changes.stream_position();
                Ok(Some(Message::CatchUp { id: self.take_id(), items, position }))
            }
            Phase::Live => {
                if self.lagged {
                    let since = self.peer_vv.clone();
                    return self.start_catch_up(db, since, None).map(Some);
                }
                let batch = self.live_batch();
                if let Some(Message::Live { items, .. }) = &batch {
                    ensure_durable(db, items)?;
                }
                Ok(batch)
            }
        }
    }

    /// Coalesces queued commits into one batch. A commit that does not fit
    /// one batch by itself goes in several: only the last carries its
    /// vector, so the peer covers it once it holds all of it.
    fn live_batch(&mut self) -> Option<Message> {
        let (max_items, max_bytes) = (self.limits.batch_items, self.limits.batch_bytes);
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut vv = None;
        while let Some(commit) = self.queue.front() {
            let rest = commit.changes.len() - self.front_sent;
            if !items.is_empty() && (items.len() + rest > max_items || bytes >= max_bytes) {
                break;
            }
            let commit = Arc::clone(commit);
            let mut next = self.front_sent;
            while let Some(change) = commit.changes.get(next) {
                if !items.is_empty() && (items.len() >= max_items || bytes >= max_bytes) {
                    break;
                }
                next += 1;
                // The peer has its own writes (or what superseded them).
                if change.dots().all(|d| d.origin == self.peer) {
                    continue;
                }
                let record = change.to_encoded();
                bytes += change.key.len() + record.len();
                items.push(Item { key: change.key.clone(), record });
            }
            if next < commit.changes.len() {
                self.front_sent = next;
                break;
            }
            self.queue.pop_front();
            self.queued_bytes = self.queued_bytes.saturating_sub(commit_bytes(&commit));
            self.front_sent = 0;
            vv = Some(commit.vv.clone());
        }
        let Some(vv) = vv else {
            // Only part of a commit: it covers nothing new yet.
            if items.is_empty() {
                return None;
            }
            self.sent_items += items.len() as u64;
            return Some(Message::Live { id: self.take_id(), items, vv: VersionVector::new() });
        };
        if items.is_empty() && self.peer_vv.dominates(&vv) {
            return None;
        }
        self.sent_items += items.len() as u64;
        self.peer_vv.join(&vv);
        Some(Message::Live { id: self.take_id(), items, vv })
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

fn commit_bytes(commit: &Commit) -> usize {
    commit.changes.iter().map(|c| c.approx_len()).sum()
}

/// Own writes leave this node only once they are on stable storage.
fn ensure_durable(db: &Db, items: &[Item]) -> crate::Result<()> {
    let me = db.node_id();
    let own = items.iter().flat_map(|i| i.record.dots()).filter(|d| d.origin == me).map(|d| d.seq).max();
    match own {
        Some(seq) => db.ensure_durable(seq),
        None => Ok(()),
    }
}
