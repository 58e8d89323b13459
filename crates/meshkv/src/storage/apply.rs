//! Applying records received from peers: the merge of SPEC invariant 4,
//! committed with the same atomicity as local writes.

use super::db::{Db, Inner, WriterState};
use super::error::{Error, Result};
use super::feed::{Change, Conflict, Source};
use super::keys;
use super::merge::merge;
use super::options::KEY_LEN_CEILING;
use super::record::Record;
use crate::version::{Dot, NodeId, VersionVector};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// What [`Db::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Records that changed local state.
    pub changed: usize,
    /// Records that were already known (duplicates or older).
    pub unchanged: usize,
    /// Conflicts detected (concurrent versions settled by the policy).
    pub conflicts: usize,
}

/// Effects committed atomically with a merge, for replication.
#[derive(Clone, Debug, Default)]
pub struct ApplyContext<'a> {
    /// Raise the version vector to include this (see [`Db::apply`]).
    pub covered: Option<&'a VersionVector>,
    /// The peer the records came from; published as [`Commit::from`](super::Commit::from).
    pub from: Option<NodeId>,
    /// Store (`Some`) or clear (`None`) the catch-up resume point for a peer.
    pub resume: Option<(NodeId, Option<&'a VersionVector>)>,
}

impl Db {
    /// Merges records received from a peer, atomically, and then raises the
    /// version vector to include `covered`.
    ///
    /// `covered` may only name writes the caller knows are all included in
    /// (or dominated by) what this call and earlier ones applied — for
    /// example the sender's version vector at the snapshot a complete
    /// catch-up was read from. Raising it on partial data breaks coverage.
    pub fn apply<I>(&self, records: I, covered: Option<&VersionVector>) -> Result<ApplyReport>
    where
        I: IntoIterator<Item = (Vec<u8>, Record)>,
    {
        self.apply_with(records, ApplyContext { covered, ..ApplyContext::default() })
    }

    /// [`apply`](Self::apply) with replication bookkeeping committed in the
    /// same atomic batch.
    pub fn apply_with<I>(&self, records: I, ctx: ApplyContext<'_>) -> Result<ApplyReport>
    where
        I: IntoIterator<Item = (Vec<u8>, Record)>,
    {
        let covered = ctx.covered;
        let inner = &*self.inner;
        let mut w = inner.lock_writer();
        let now = inner.now_ms();
        let mut report = ApplyReport::default();
        // Key -> (record before this call, record now). Lets one call carry
        // several records for the same key.
        let mut touched: HashMap<Vec<u8>, (Option<Record>, Record, Option<Conflict>)> = HashMap::new();
        let mut order = Vec::new();
        let mut max_own_seq = 0;
        for (key, remote) in records {
            if key.len() > KEY_LEN_CEILING {
                return Err(Error::KeyTooLarge { len: key.len(), max: KEY_LEN_CEILING });
            }
            for v in remote.versions() {
                if v.dot.origin == inner.node_id {
                    max_own_seq = max_own_seq.max(v.dot.seq);
                }
            }
            if !w.clock.observe(remote.max_hlc(), now) {
                tracing::warn!(key = ?String::from_utf8_lossy(&key), "remote clock far ahead; not adopting it");
            }
            let current = match touched.get(&key) {
                Some((_, cur, _)) => Some(cur.clone()),
                None => self.get_record(&key)?,
            };
            let merged = merge(&key, current.as_ref(), &remote, &inner.opts.policy);
            let conflict = merged
                .conflict
                .filter(|c| c.incoming.iter().any(|d| !w.vv.contains(*d)))
                .map(|c| Conflict { winner: c.winner, losers: c.losers });
            if conflict.is_some() {
                report.conflicts += 1;
                inner.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            // A conflict the local version won changes nothing on disk but is
            // still published, so the feed reports every conflict.
            let new = match (merged.record, &conflict, &current) {
                (Some(new), _, _) => {
                    report.changed += 1;
                    new
                }
                (None, Some(_), Some(cur)) => {
                    report.unchanged += 1;
                    cur.clone()
                }
                _ => {
                    report.unchanged += 1;
                    continue;
                }
            };
            match touched.get_mut(&key) {
                Some(entry) => {
                    entry.1 = new;
                    entry.2 = conflict.or(entry.2.take());
                }
                None => {
                    order.push(key.clone());
                    touched.insert(key, (current, new, conflict));
                }
            }
        }
        let raise = covered.map(|c| vv_increase(&w.vv, c)).unwrap_or_default();
        if let Some(&(_, seq)) = raise.iter().find(|(o, _)| *o == inner.node_id) {
            max_own_seq = max_own_seq.max(seq);
        }
        if touched.is_empty() && raise.is_empty() && ctx.resume.is_none() {
            return Ok(report);
        }
        if max_own_seq >= w.next_seq {
            // Our own writes came back from a peer with higher seqs than we
            // know (e.g. the directory was restored from an old backup):
            // never reuse those seqs.
            w.next_seq = max_own_seq + 1;
            inner.reserve_seqs(&mut w, 1)?;
        }
        let changes = self.commit_merged(&mut w, order, touched, &raise, ctx.resume)?;
        inner.publish(&mut w, Source::Remote, ctx.from, changes);
        Ok(report)
    }

    fn commit_merged(
        &self,
        w: &mut WriterState,
        order: Vec<Vec<u8>>,
        mut touched: HashMap<Vec<u8>, (Option<Record>, Record, Option<Conflict>)>,
        raise: &[(NodeId, u64)],
        resume: Option<(NodeId, Option<&VersionVector>)>,
    ) -> Result<Vec<Change>> {
        let inner: &Inner = &self.inner;
        let mut batch = inner.batch(order.len() * 3 + raise.len());
        let mut changes = Vec::with_capacity(order.len());
        for key in order {
            let Some((old, new, conflict)) = touched.remove(&key) else { continue };
            if old.as_ref() == Some(&new) {
                changes.push(Change { key, record: new, conflict });
                continue;
            }
            let old_dots: Vec<Dot> = old.as_ref().map(|r| r.dots().collect()).unwrap_or_default();
            for d in old_dots.iter().filter(|d| !new.has_dot(**d)) {
                batch.remove(&inner.log, keys::log_key(*d).to_vec());
            }
            for d in new.dots().filter(|d| !old_dots.contains(d)) {
                batch.insert(&inner.log, keys::log_key(d).to_vec(), key.clone());
            }
            batch.insert(&inner.data, keys::data_key(&key), new.encode());
            changes.push(Change { key, record: new, conflict });
        }
        for &(origin, seq) in raise {
            batch.insert(&inner.meta, keys::vv_key(origin), keys::u64_value(seq).to_vec());
        }
        match resume {
            Some((peer, Some(vv))) => batch.insert(&inner.meta, keys::resume_key(peer), encode_vv(vv)),
            Some((peer, None)) => batch.remove(&inner.meta, keys::resume_key(peer)),
            None => {}
        }
        batch.insert(&inner.meta, keys::META_HLC, keys::u64_value(w.clock.last().0).to_vec());
        batch.commit()?;
        for &(origin, seq) in raise {
            w.vv.raise(origin, seq);
        }
        Ok(changes)
    }

    /// The stored point from which an interrupted catch-up from `peer`
    /// resumes (see [`ApplyContext::resume`]).
    pub fn resume_point(&self, peer: NodeId) -> Result<Option<VersionVector>> {
        let Some(raw) = self.inner.meta.get(keys::resume_key(peer))? else { return Ok(None) };
        postcard::from_bytes(&raw).map(Some).map_err(|_| Error::Corrupt {
            path: self.inner.path.clone(),
            detail: format!("resume point for {peer} is malformed"),
        })
    }

    /// Total conflicts detected since this store was opened.
    pub fn conflict_count(&self) -> u64 {
        self.inner.conflicts.load(Ordering::Relaxed)
    }
}

fn encode_vv(vv: &VersionVector) -> Vec<u8> {
    postcard::to_stdvec(vv).unwrap_or_else(|_| unreachable!("in-memory encode"))
}

/// Entries of `new` that are above `current`.
fn vv_increase(current: &VersionVector, new: &VersionVector) -> Vec<(NodeId, u64)> {
    new.iter().filter(|&(o, s)| s > current.get(o)).collect()
}
