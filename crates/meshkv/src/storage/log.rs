//! Reading the compacted change log: what a peer is missing, and single
//! entries by dot.
//!
//! The log holds one entry per current version, keyed by dot, so "what has
//! this node got that a peer with version vector `vv` lacks" is, for each
//! origin `o`, the log range `(o, vv[o]+1)..=(o, MAX)`: one seek per origin
//! plus one entry per missing record.

use super::db::Db;
use super::error::{Error, Result};
use super::keys;
use super::read::Snapshot;
use super::record::Record;
use crate::version::{Dot, NodeId, VersionVector};
use fjall::Readable;

impl Db {
    /// Everything this node holds that a peer with version vector `since`
    /// may lack, read from one snapshot. See [`Snapshot::changes_since`].
    pub fn changes_since(&self, since: &VersionVector) -> Result<ChangesSince> {
        self.snapshot().changes_since(since)
    }

    /// The current record written by `dot`, scuttleup's `entry(peer, seq)`.
    /// `None` if that write is unknown here or has been superseded.
    pub fn entry(&self, origin: NodeId, seq: u64) -> Result<Option<(Vec<u8>, Record)>> {
        self.snapshot().entry(origin, seq)
    }
}

impl Snapshot {
    /// An iterator over `(key, record)` for every current record holding a
    /// version not covered by `since`, in bounded memory. After applying all
    /// of it, a peer may raise its version vector to
    /// [`ChangesSince::version_vector`].
    pub fn changes_since(self, since: &VersionVector) -> Result<ChangesSince> {
        let vv = self.version_vector()?;
        Ok(ChangesSince { snap: self, since: since.clone(), vv, iter: None, next_origin: Some(0), position: None })
    }

    /// The current record written by `dot` in this snapshot.
    pub fn entry(&self, origin: NodeId, seq: u64) -> Result<Option<(Vec<u8>, Record)>> {
        let dot = Dot::new(origin, seq);
        let Some(key) = self.snap.get(&self.db.log, keys::log_key(dot))? else {
            return Ok(None);
        };
        let record = self.get_record(&key)?;
        Ok(record.filter(|r| r.has_dot(dot)).map(|r| (key.to_vec(), r)))
    }
}

/// See [`Snapshot::changes_since`].
pub struct ChangesSince {
    snap: Snapshot,
    since: VersionVector,
    vv: VersionVector,
    iter: Option<fjall::Iter>,
    /// Smallest origin not yet scanned; `None` once all are.
    next_origin: Option<u64>,
    /// Log position (dot) of the last item returned.
    position: Option<Dot>,
}

impl ChangesSince {
    /// The sender's version vector at the snapshot: what the receiver covers
    /// once it has applied every item.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The change-log position of the last item returned: everything in the
    /// snapshot's log before it (in origin, then seq order) has been returned.
    pub fn log_position(&self) -> Option<Dot> {
        self.position
    }

    /// The version vector from which the iteration started.
    pub fn since(&self) -> &VersionVector {
        &self.since
    }

    /// The id of the last commit the snapshot includes.
    pub fn commit_id(&self) -> u64 {
        self.snap.commit_id()
    }

    /// Opens the log range of the next origin present in the log.
    fn advance_origin(&mut self) -> Result<bool> {
        let Some(from) = self.next_origin else { return Ok(false) };
        let start = keys::log_key(Dot::new(NodeId(from), 0));
        let db = &self.snap.db;
        let Some(first) = self.snap.snap.range(&db.log, start..).next() else {
            self.next_origin = None;
            return Ok(false);
        };
        let key = first.key()?;
        let dot = keys::parse_log_key(&key).ok_or_else(|| self.corrupt("malformed change-log key"))?;
        let origin = dot.origin;
        self.next_origin = origin.0.checked_add(1);
        let lo = keys::log_key(Dot::new(origin, self.since.get(origin).saturating_add(1)));
        let hi = keys::log_key(Dot::new(origin, u64::MAX));
        self.iter = Some(self.snap.snap.range(&db.log, lo..=hi));
        Ok(true)
    }

    fn corrupt(&self, detail: &str) -> Error {
        Error::Corrupt { path: self.snap.db.path.clone(), detail: detail.into() }
    }

    fn next_item(&mut self) -> Result<Option<(Vec<u8>, Record)>> {
        loop {
            let Some(iter) = self.iter.as_mut() else {
                if !self.advance_origin()? {
                    return Ok(None);
                }
                continue;
            };
            let Some(guard) = iter.next() else {
                self.iter = None;
                continue;
            };
            let (lk, key) = guard.into_inner()?;
            let dot = keys::parse_log_key(&lk).ok_or_else(|| self.corrupt("malformed change-log key"))?;
            let Some(record) = self.snap.get_record(&key)? else {
                return Err(self.corrupt("change-log entry points to a missing record"));
            };
            if !record.has_dot(dot) {
                return Err(self.corrupt("change-log entry points to a superseded record"));
            }
            // A record with several uncovered versions is sent once: at the
            // first of them in log order.
            let first_uncovered = record.dots().filter(|d| !self.since.contains(*d)).min();
            if first_uncovered == Some(dot) {
                self.position = Some(dot);
                return Ok(Some((key.to_vec(), record)));
            }
        }
    }
}

impl Iterator for ChangesSince {
    type Item = Result<(Vec<u8>, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
}
