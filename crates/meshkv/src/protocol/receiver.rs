//! The receiving half of a link: applies catch-up and live batches and
//! raises the version vector only where coverage allows (SPEC invariant 3).

use super::link::LinkError;
use super::message::{CatchUpOrder, Item, Message, MAX_HELD_DOTS};
use crate::storage::{ApplyContext, Db, Error as StorageError, Position, ResumePoint};
use crate::version::{Dot, NodeId, VersionVector};

enum Phase {
    /// Digest sent; waiting for the catch-up to start.
    Waiting,
    /// Applying a catch-up that started from `since` at a sender snapshot
    /// with version vector `snapshot`, in `order`.
    CatchingUp { since: VersionVector, snapshot: VersionVector, order: CatchUpOrder },
    /// Applying live batches.
    Live,
}

pub(crate) struct RecvHalf {
    peer: NodeId,
    phase: Phase,
    /// Batches of a key-order catch-up received (and acknowledged) but not
    /// applied yet: applied together once they reach [`GATHER_BYTES`] or no
    /// further message is waiting.
    gathered: Gathered,
    /// Records applied (for stats and tests).
    pub received_items: u64,
    /// Catch-ups completed on this link.
    pub catch_ups: u64,
}

/// What the receiver wants the link to do after a message.
pub(crate) struct Reply {
    pub ack: Option<u64>,
    pub caught_up: bool,
}

impl RecvHalf {
    pub fn new(peer: NodeId) -> Self {
        RecvHalf { peer, phase: Phase::Waiting, gathered: Gathered::default(), received_items: 0, catch_ups: 0 }
    }

    /// How far a running catch-up is: `(records applied on this link, writes
    /// the sender's snapshot names)`; `None` when no catch-up is running.
    pub fn catch_up_progress(&self) -> Option<(u64, u64)> {
        match &self.phase {
            Phase::CatchingUp { since, snapshot, .. } => {
                // The peer names these vectors: no overflow on any values.
                let total = snapshot.iter().map(|(o, s)| s.saturating_sub(since.get(o))).fold(0, u64::saturating_add);
                Some((self.received_items, total))
            }
            _ => None,
        }
    }

    /// The digest that opens the flow towards us.
    pub fn digest(&self, db: &Db) -> crate::Result<Message> {
        let vv = db.version_vector();
        let held = db.held_above(&vv, MAX_HELD_DOTS)?;
        Ok(Message::Digest { vv, resume: db.resume_point(self.peer)?, held })
    }

    /// Handles one message. `more`: another message follows right away, so
    /// batches of a key-order catch-up may be gathered instead of applied.
    pub fn on_message(&mut self, db: &Db, msg: Message, more: bool) -> Result<Reply, LinkError> {
        let none = Reply { ack: None, caught_up: false };
        match (msg, &self.phase) {
            (Message::CatchUpStart { since, snapshot, order }, _) => {
                self.flush(db)?;
                self.phase = Phase::CatchingUp { since, snapshot, order };
                Ok(none)
            }
            (Message::CatchUp { id, items, position }, Phase::CatchingUp { order: CatchUpOrder::Key { .. }, .. }) => {
                let position = match position {
                    None => None,
                    Some(Position::Key(key)) => Some(key),
                    Some(_) => return Err(protocol("catch-up position does not match the stream's order")),
                };
                // Gathered batches must stay ascending (they are, from a
                // well-behaved sender); otherwise apply what came before.
                if self.gathered.last_key().is_some_and(|last| items.first().is_some_and(|i| i.key.as_slice() <= last))
                {
                    self.flush(db)?;
                }
                self.gathered.bytes += items.iter().map(|i| i.key.len() + i.record.len()).sum::<usize>();
                self.gathered.len += items.len();
                self.gathered.batches.push(items);
                self.gathered.position = position.or(self.gathered.position.take());
                if !more || self.gathered.bytes >= GATHER_BYTES {
                    self.flush(db)?;
                }
                Ok(Reply { ack: Some(id), caught_up: false })
            }
            (Message::CatchUp { id, items, position }, Phase::CatchingUp { since, snapshot, .. }) => {
                let resume = match position {
                    None => None,
                    Some(Position::Log(p)) => Some(ResumePoint::Log(resume_point(since, snapshot, p))),
                    Some(_) => return Err(protocol("catch-up position does not match the stream's order")),
                };
                let ctx = ApplyContext {
                    from: Some(self.peer),
                    resume: resume.as_ref().map(|r| (self.peer, Some(r))),
                    ..ApplyContext::default()
                };
                self.apply(db, items, ctx)?;
                Ok(Reply { ack: Some(id), caught_up: false })
            }
            (Message::CaughtUp { id, vv }, Phase::CatchingUp { .. }) => {
                self.flush(db)?;
                let ctx =
                    ApplyContext { covered: Some(&vv), resume: Some((self.peer, None)), ..ApplyContext::default() };
                self.apply(db, Vec::new(), ctx)?;
                self.phase = Phase::Live;
                self.catch_ups += 1;
                Ok(Reply { ack: Some(id), caught_up: true })
            }
            (Message::Live { id, items, vv }, Phase::Live) => {
                let ctx = ApplyContext { covered: Some(&vv), from: Some(self.peer), ..ApplyContext::default() };
                self.apply(db, items, ctx)?;
                Ok(Reply { ack: Some(id), caught_up: false })
            }
            (msg, _) => Err(protocol(format!("unexpected {} in this phase", msg.kind()))),
        }
    }

    /// Applies the gathered batches of a key-order catch-up, with the resume
    /// point of the last one. Until then they are neither visible nor in the
    /// resume point: a connection lost meanwhile only costs re-sending them.
    pub fn flush(&mut self, db: &Db) -> Result<(), LinkError> {
        let Phase::CatchingUp { since, snapshot, order: CatchUpOrder::Key { skip } } = &self.phase else {
            return Ok(());
        };
        if self.gathered.len == 0 && self.gathered.position.is_none() {
            return Ok(());
        }
        let Gathered { batches, len, position, .. } = std::mem::take(&mut self.gathered);
        // One move of each item, into a vector of the right size.
        let mut items = Vec::with_capacity(len);
        for batch in batches {
            items.extend(batch);
        }
        // While a resumed stream is still within the keys the stored point
        // already covers, that point says more: keep it (docs/ALGORITHM.md §5).
        let resume = position.filter(|key| skip.as_ref().is_none_or(|s| *key >= s.key)).map(|key| ResumePoint::Key {
            since: since.clone(),
            key,
            snapshot: snapshot.clone(),
        });
        let ctx = ApplyContext {
            from: Some(self.peer),
            resume: resume.as_ref().map(|r| (self.peer, Some(r))),
            ..ApplyContext::default()
        };
        self.apply(db, items, ctx)
    }

    fn apply(&mut self, db: &Db, items: Vec<Item>, ctx: ApplyContext<'_>) -> Result<(), LinkError> {
        self.received_items += items.len() as u64;
        db.apply_with(items.into_iter().map(|i| (i.key, i.record)), ctx).map(|_| ()).map_err(|e| match e {
            // Keys no store accepts: the peer's fault, not ours.
            StorageError::KeyTooLarge { .. }
            | StorageError::ValueTooLarge { .. }
            | StorageError::ImpossibleOwnSeq { .. }
            | StorageError::TooManyOrigins { .. } => protocol(e.to_string()),
            // Ours (a full disk, say): the peer did nothing wrong.
            e => LinkError::Storage(e),
        })
    }
}

fn protocol(why: impl Into<String>) -> LinkError {
    LinkError::Protocol(why.into())
}

/// Bytes of key-order catch-up batches gathered before they are applied:
/// large enough for the store to write fresh keys straight into tables.
const GATHER_BYTES: usize = 8 << 20;

/// Key-order catch-up batches not applied yet.
#[derive(Default)]
struct Gathered {
    /// The batches as they came (not yet moved into one vector).
    batches: Vec<Vec<Item>>,
    /// Items in `batches`.
    len: usize,
    bytes: usize,
    /// The stream position of the last batch.
    position: Option<Vec<u8>>,
}

impl Gathered {
    fn last_key(&self) -> Option<&[u8]> {
        self.batches.iter().rev().find_map(|b| b.last()).map(|i| i.key.as_slice())
    }
}

/// Where to resume a log-order catch-up interrupted after applying everything up to
/// log position `p`: origins before `p.origin` are done up to the snapshot,
/// `p.origin` up to `p.seq` (capped by the snapshot), later origins not started. The sender streams
/// `changes_since(resume ⊔ receiver's vv)`, which then skips exactly what
/// was already applied (see docs/ALGORITHM.md, "Resumable catch-up").
fn resume_point(since: &VersionVector, snapshot: &VersionVector, p: Dot) -> VersionVector {
    let mut r = since.clone();
    for (origin, seq) in snapshot.iter() {
        if origin < p.origin {
            r.raise(origin, seq);
        }
    }
    // The sender's log can hold versions above its own vector (records it
    // received in a catch-up it has not finished). Writes of `p.origin`
    // between its vector and `p.seq` may still reach it later, so the resume
    // point never goes past what the snapshot covers.
    r.raise(p.origin, p.seq.min(snapshot.get(p.origin)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_point_covers_finished_origins_only() {
        let (a, b, c) = (NodeId(1), NodeId(2), NodeId(3));
        let since: VersionVector = [(a, 1), (c, 2)].into_iter().collect();
        let snap: VersionVector = [(a, 10), (b, 20), (c, 30)].into_iter().collect();
        let r = resume_point(&since, &snap, Dot::new(b, 7));
        assert_eq!((r.get(a), r.get(b), r.get(c)), (10, 7, 2));
        // A position above the snapshot's own vector is not trusted.
        let r = resume_point(&since, &snap, Dot::new(b, 25));
        assert_eq!(r.get(b), 20);
    }
}
