//! Reading what a peer is missing, from one snapshot, in one of two orders,
//! and single change-log entries by dot.
//!
//! * **Log order** (origin, then seq): the log holds one dot per current
//!   version, in dot order (own dots partly grouped in blocks of 16,
//!   storage/changelog.rs), so "what has this node got that a peer with
//!   version vector `vv` lacks" is, for each origin `o`, the log range from
//!   the block holding `vv[o]+1`: one seek per origin plus one dot — and
//!   one point read of its record — per missing record. Cost O(difference).
//! * **Key order**: one sequential pass over the data keyspace, returning the
//!   records that hold a version the peer lacks. Cost O(records held), but
//!   sequential: far cheaper per record than log order's random point reads
//!   when the peer lacks much of the store (a bootstrap).
//!
//! See docs/ALGORITHM.md §5 for how replication picks the order and resumes
//! an interrupted stream in either.

use super::changelog;
use super::db::Db;
use super::encoded::EncodedRecord;
use super::error::{Error, Result};
use super::keys;
use super::read::Snapshot;
use super::record::Record;
use crate::version::{Dot, NodeId, VersionVector};
use fjall::Readable;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// How far a catch-up stream got: everything before this point in the
/// stream's order has been returned (or was skipped as already held).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// Log order: the dot of the last record returned.
    Log(Dot),
    /// Key order: the user key of the last record returned.
    Key(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Where a receiver's interrupted catch-up from one sender resumes. It names
/// writes the receiver already holds or dominates, so that the sender can
/// skip them; it is a hint to the sender and never grants coverage
/// (docs/ALGORITHM.md §5, "Resumable catch-up").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResumePoint {
    /// After a log-order stream: every write this vector covers is held or
    /// dominated here.
    Log(VersionVector),
    /// After a key-order stream: every write `since` covers is held or
    /// dominated here, and so is every version of a key at or before `key`
    /// that `snapshot` covers.
    Key {
        /// The stream's starting vector.
        since: VersionVector,
        /// The last key applied.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The sender's version vector at the stream's snapshot.
        snapshot: VersionVector,
    },
}

/// Versions a key-order stream may skip for keys at or before `key`: those
/// `covered` covers (see [`ResumePoint::Key`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySkip {
    /// Last key the skip applies to (inclusive).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The versions skipped there.
    pub covered: VersionVector,
}

/// A key-order stream reads every record once, sequentially; a log-order
/// one does a random point read per record it returns, several times the
/// cost of a sequential read (BENCHMARKS.md, `bench replicate`). Key order
/// is used once the peer lacks at least a quarter of the store.
const KEY_ORDER_SHARE: u64 = 4;

impl Db {
    /// Everything this node holds that a peer with version vector `since`
    /// may lack, read from one snapshot. See [`Snapshot::changes_since`].
    pub fn changes_since(&self, since: &VersionVector) -> Result<ChangesSince> {
        self.snapshot().changes_since(since)
    }

    /// Up to `max` writes this store holds as current versions that `vv`
    /// does not cover, ascending (see [`Snapshot::held_above`]).
    pub fn held_above(&self, vv: &VersionVector, max: usize) -> Result<Vec<Dot>> {
        self.snapshot().held_above(vv, max)
    }

    /// The current record written by `dot`, scuttleup's `entry(peer, seq)`.
    /// `None` if that write is unknown here or has been superseded.
    pub fn entry(&self, origin: NodeId, seq: u64) -> Result<Option<(Vec<u8>, Record)>> {
        self.snapshot().entry(origin, seq)
    }
}

impl Snapshot {
    /// An iterator over `(key, record)` for every current record holding a
    /// version not covered by `since`, in change-log order, in bounded
    /// memory. After applying all of it, a peer may raise its version vector
    /// to [`ChangesSince::version_vector`].
    pub fn changes_since(self, since: &VersionVector) -> Result<ChangesSince> {
        let walk = Walk::Log { iter: None, next_origin: Some(0), pending: VecDeque::new() };
        ChangesSince::new(self, since, walk)
    }

    /// The same records as [`changes_since`](Self::changes_since), in key
    /// order, read with one sequential pass over the data. With `skip`, a
    /// record at or before `skip.key` is also left out when every version
    /// not covered by `since` is covered by `skip.covered`.
    pub fn changes_in_key_order(self, since: &VersionVector, skip: Option<KeySkip>) -> Result<ChangesSince> {
        let iter = self.snap.iter(&self.db.data);
        ChangesSince::new(self, since, Walk::Key { iter, skip })
    }

    /// What a peer with version vector `since` lacks, in the cheaper order
    /// (docs/ALGORITHM.md §5, "Two orders"): key order when `skip` is given
    /// (the peer resumes a key-order stream) or when the writes the peer
    /// lacks are at least a `1 / KEY_ORDER_SHARE` share of the records held,
    /// log order otherwise.
    pub fn catch_up(self, since: &VersionVector, skip: Option<KeySkip>) -> Result<ChangesSince> {
        // The writes the peer lacks, counted from the vectors: superseded
        // writes count too, so this bounds the records to send from above.
        let missing: u64 = self.version_vector()?.iter().map(|(o, s)| s.saturating_sub(since.get(o))).sum();
        // Counts overwritten entries not yet compacted away too.
        let records = self.db.data.approximate_len() as u64;
        if skip.is_some() || (missing > 0 && missing.saturating_mul(KEY_ORDER_SHARE) >= records) {
            self.changes_in_key_order(since, skip)
        } else {
            self.changes_since(since)
        }
    }

    /// Up to `max` writes held as current versions that `vv` does not
    /// cover, ascending: one log seek per origin present, then the log
    /// above `vv`. A replica's vector normally covers all it holds; what it
    /// does not is a catch-up in progress, or writes of a lost origin above
    /// a gap, which no vector can ever cover. Like every reader of the
    /// log, it sees the entries an ingestion held back.
    pub fn held_above(&self, vv: &VersionVector, max: usize) -> Result<Vec<Dot>> {
        let db = &self.db;
        let mut held = Vec::new();
        let mut next_origin = Some(0u64);
        while let (Some(from), true) = (next_origin, held.len() < max) {
            let start = changelog::range(NodeId(from), 0).into_inner().0;
            let Some(first) = self.snap.range(&db.log, start..).next() else { break };
            let key = first.key()?;
            let origin = changelog::origin_of(&key).ok_or_else(|| db.corrupt("malformed change-log key"))?;
            next_origin = origin.0.checked_add(1);
            let above = vv.get(origin).saturating_add(1);
            for guard in self.snap.range(&db.log, changelog::range(origin, above)) {
                let (lk, value) = guard.into_inner()?;
                let dots =
                    changelog::decode_entry(&lk, &value).ok_or_else(|| db.corrupt("malformed change-log entry"))?;
                // A block can start below `above`.
                held.extend(dots.into_iter().map(|(d, _)| d).filter(|d| !vv.contains(*d)));
                if held.len() >= max {
                    break;
                }
            }
        }
        held.truncate(max);
        Ok(held)
    }

    /// The current record written by `dot` in this snapshot.
    pub fn entry(&self, origin: NodeId, seq: u64) -> Result<Option<(Vec<u8>, Record)>> {
        let dot = Dot::new(origin, seq);
        let Some(key) = changelog::lookup(&self.snap, &self.db.log, self.db.node_id, dot, |d| self.db.corrupt(d))?
        else {
            return Ok(None);
        };
        let record = self.get_record(&key)?;
        Ok(record.filter(|r| r.has_dot(dot)).map(|r| (key.to_vec(), r)))
    }
}

enum Walk {
    /// Per origin, the log range above `since`.
    Log {
        iter: Option<fjall::Iter>,
        /// Smallest origin not yet scanned; `None` once all are.
        next_origin: Option<u64>,
        /// Dots (and keys) of the current log entry not yet returned.
        pending: VecDeque<(Dot, Vec<u8>)>,
    },
    /// The whole data keyspace.
    Key { iter: fjall::Iter, skip: Option<KeySkip> },
}

/// See [`Snapshot::changes_since`] and [`Snapshot::changes_in_key_order`].
pub struct ChangesSince {
    snap: Snapshot,
    since: VersionVector,
    /// Writes the peer holds above `since`, sorted: covered too.
    held: Vec<Dot>,
    vv: VersionVector,
    walk: Walk,
    /// Log order: dot of the last item returned.
    last_dot: Option<Dot>,
    /// Key order: user key of the last item returned (`None`: none yet),
    /// a buffer reused for every item.
    last_key: Option<Vec<u8>>,
}

impl ChangesSince {
    fn new(snap: Snapshot, since: &VersionVector, walk: Walk) -> Result<Self> {
        let vv = snap.version_vector()?;
        Ok(ChangesSince { snap, since: since.clone(), held: Vec::new(), vv, walk, last_dot: None, last_key: None })
    }

    /// Also leaves out records whose versions not covered by `since` are
    /// all among `held`: writes the peer holds above its vector (see
    /// [`Snapshot::held_above`]). Call before the first item.
    pub fn excluding(mut self, mut held: Vec<Dot>) -> Self {
        held.sort_unstable();
        held.dedup();
        self.held = held;
        self
    }

    /// The sender's version vector at the snapshot: what the receiver covers
    /// once it has applied every item.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// Where the stream stands after the last item returned (`None` before
    /// the first): everything before it in the stream's order has been
    /// returned or skipped.
    pub fn stream_position(&self) -> Option<Position> {
        match self.walk {
            Walk::Log { .. } => self.last_dot.map(Position::Log),
            Walk::Key { .. } => self.last_key.clone().map(Position::Key),
        }
    }

    /// Whether the records come in key order.
    pub fn is_key_order(&self) -> bool {
        matches!(self.walk, Walk::Key { .. })
    }

    /// The version vector from which the iteration started.
    pub fn since(&self) -> &VersionVector {
        &self.since
    }

    /// The id of the last commit the snapshot includes.
    pub fn commit_id(&self) -> u64 {
        self.snap.commit_id()
    }

    fn corrupt(&self, detail: &str) -> Error {
        self.snap.db.corrupt(detail)
    }

    /// Opens the log range of the next origin present in the log.
    fn advance_origin(&mut self) -> Result<bool> {
        let Walk::Log { iter, next_origin, .. } = &mut self.walk else { return Ok(false) };
        let Some(from) = *next_origin else { return Ok(false) };
        let start = changelog::range(NodeId(from), 0).into_inner().0;
        let db = &self.snap.db;
        let Some(first) = self.snap.snap.range(&db.log, start..).next() else {
            *next_origin = None;
            return Ok(false);
        };
        let key = first.key()?;
        let Some(origin) = changelog::origin_of(&key) else { return Err(self.corrupt("malformed change-log key")) };
        *next_origin = origin.0.checked_add(1);
        let from = self.since.get(origin).saturating_add(1);
        *iter = Some(self.snap.snap.range(&db.log, changelog::range(origin, from)));
        Ok(true)
    }

    /// The next item, its record as stored (checked well formed, not
    /// decoded): a catch-up passes it on as it is.
    pub fn next_encoded(&mut self) -> Result<Option<(Vec<u8>, EncodedRecord)>> {
        match self.walk {
            Walk::Log { .. } => self.next_in_log_order(),
            Walk::Key { .. } => self.next_in_key_order(),
        }
    }

    fn next_in_log_order(&mut self) -> Result<Option<(Vec<u8>, EncodedRecord)>> {
        loop {
            let Walk::Log { iter, pending, .. } = &mut self.walk else { return Ok(None) };
            let Some((dot, key)) = pending.pop_front() else {
                let Some(it) = iter.as_mut() else {
                    if !self.advance_origin()? {
                        return Ok(None);
                    }
                    continue;
                };
                let Some(guard) = it.next() else {
                    *iter = None;
                    continue;
                };
                let (lk, value) = guard.into_inner()?;
                let Some(dots) = changelog::decode_entry(&lk, &value) else {
                    return Err(self.snap.db.corrupt("malformed change-log entry"));
                };
                // A block can start below the range's first seq.
                let (since, held) = (&self.since, &self.held);
                pending
                    .extend(dots.into_iter().filter(|(d, _)| !peer_has(since, held, *d)).map(|(d, k)| (d, k.to_vec())));
                continue;
            };
            let db = &self.snap.db;
            let Some(raw) = self.snap.snap.get(&db.data, keys::data_key(&key))? else {
                return Err(self.corrupt("change-log entry points to a missing record"));
            };
            let record = parse(&key, &raw)?;
            if !record.dots().any(|d| d == dot) {
                return Err(self.corrupt("change-log entry points to a superseded record"));
            }
            // A record with several uncovered versions is sent once: at the
            // first of them in log order.
            let first_uncovered = record.dots().filter(|d| !peer_has(&self.since, &self.held, *d)).min();
            if first_uncovered == Some(dot) {
                self.last_dot = Some(dot);
                return Ok(Some((key, record)));
            }
        }
    }

    fn next_in_key_order(&mut self) -> Result<Option<(Vec<u8>, EncodedRecord)>> {
        let Walk::Key { iter, skip } = &mut self.walk else { return Ok(None) };
        let (since, held) = (&self.since, &self.held);
        for guard in iter.by_ref() {
            let (dkey, raw) = guard.into_inner()?;
            let key = keys::user_key(&dkey);
            let record = parse(key, &raw)?;
            let skipped = skip.as_ref().filter(|s| key <= s.key.as_slice()).map(|s| &s.covered);
            let wanted = record.dots().any(|d| !peer_has(since, held, d) && !skipped.is_some_and(|c| c.contains(d)));
            if wanted {
                let last = self.last_key.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(key);
                return Ok(Some((key.to_vec(), record)));
            }
        }
        Ok(None)
    }
}

/// Whether a peer with vector `since` that holds `held` (sorted) has `d`.
fn peer_has(since: &VersionVector, held: &[Dot], d: Dot) -> bool {
    since.contains(d) || (!held.is_empty() && held.binary_search(&d).is_ok())
}

/// The stored record of user key `key`, checked well formed.
fn parse(key: &[u8], raw: &fjall::Slice) -> Result<EncodedRecord> {
    EncodedRecord::parse_slice(raw.clone()).ok_or_else(|| Error::CorruptRecord { key: key.to_vec() })
}

/// Items with their records decoded.
impl Iterator for ChangesSince {
    type Item = Result<(Vec<u8>, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_encoded().map(|next| next.map(|(key, record)| (key, record.decode()))).transpose()
    }
}
