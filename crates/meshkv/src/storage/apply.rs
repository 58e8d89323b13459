//! Applying records received from peers: the merge of SPEC invariant 4,
//! committed with the same atomicity as local writes.

use super::changelog::LogEdits;
use super::db::{Db, Inner, WriterState};
use super::encoded::EncodedRecord;
use super::error::{Error, Result};
use super::feed::{Change, Conflict, Source};
use super::keys;
use super::log::ResumePoint;
use super::merge::merge;
use super::options::KEY_LEN_CEILING;
use super::pending::LogEntry;
use super::read::decode;
use super::record::Record;
use crate::version::{Dot, NodeId, Seq, VersionVector, MAX_ORIGINS};
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
    /// Of the changed records, those written straight into new engine
    /// tables (a bulk ingestion) instead of through the memtable.
    pub ingested: usize,
}

/// Effects committed atomically with a merge, for replication.
#[derive(Clone, Debug, Default)]
pub struct ApplyContext<'a> {
    /// Raise the version vector to include this (see [`Db::apply`]).
    pub covered: Option<&'a VersionVector>,
    /// The peer the records came from; published as [`Commit::from`](super::Commit::from).
    pub from: Option<NodeId>,
    /// Store (`Some`) or clear (`None`) the catch-up resume point for a peer.
    pub resume: Option<(NodeId, Option<&'a ResumePoint>)>,
}

impl Db {
    /// Merges records received from a peer, atomically, and then raises the
    /// version vector to include `covered`.
    ///
    /// `covered` may only name writes the caller knows are all included in
    /// (or dominated by) what this call and earlier ones applied — for
    /// example the sender's version vector at the snapshot a complete
    /// catch-up was read from. Raising it on partial data breaks coverage.
    pub fn apply<I, R>(&self, records: I, covered: Option<&VersionVector>) -> Result<ApplyReport>
    where
        I: IntoIterator<Item = (Vec<u8>, R)>,
        R: Into<EncodedRecord>,
    {
        self.apply_with(records, ApplyContext { covered, ..ApplyContext::default() })
    }

    /// [`apply`](Self::apply) with replication bookkeeping committed in the
    /// same atomic batch. Records arrive encoded, as replication carries
    /// them: one that is new to this store is stored as it came.
    pub fn apply_with<I, R>(&self, records: I, ctx: ApplyContext<'_>) -> Result<ApplyReport>
    where
        I: IntoIterator<Item = (Vec<u8>, R)>,
        R: Into<EncodedRecord>,
    {
        let records: Vec<(Vec<u8>, EncodedRecord)> = records.into_iter().map(|(k, r)| (k, r.into())).collect();
        if let Some((key, _)) = records.iter().find(|(k, _)| k.len() > KEY_LEN_CEILING) {
            return Err(Error::KeyTooLarge { len: key.len(), max: KEY_LEN_CEILING });
        }
        // Strictly ascending keys (a key-order catch-up) hold no key twice,
        // and their current records can be found with one range scan.
        let ascending = records.windows(2).all(|w| w[0].0 < w[1].0);
        let covered = ctx.covered;
        let inner = &*self.inner;
        let mut w = inner.lock_writer();
        inner.finish_failed_ingestion(&mut w)?;
        let now = inner.now_ms();
        let mut report = ApplyReport::default();
        // Read under the writer lock: no commit can come in between.
        let mut olds = if ascending {
            self.read_ascending(&records)?
        } else {
            let data_keys: Vec<Vec<u8>> = records.iter().map(|(k, _)| keys::data_key(k)).collect();
            self.read_records(&data_keys)?
        };
        // What changed, in arrival order; with possible repeats, an index by
        // key lets one call carry several records for the same key.
        let mut touched: Vec<Touched> = Vec::with_capacity(records.len());
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut max_own_seq = 0;
        for (i, (key, remote)) in records.into_iter().enumerate() {
            for d in remote.dots() {
                if d.origin == inner.node_id {
                    max_own_seq = max_own_seq.max(d.seq);
                }
            }
            if !w.clock.observe(remote.max_hlc(), now) {
                tracing::warn!(key = ?String::from_utf8_lossy(&key), "remote clock far ahead; not adopting it");
            }
            let seen = if ascending { None } else { index.get(&key).copied() };
            let current = match seen {
                Some(j) => Some(touched[j].new.to_record()),
                None => olds[i].take(),
            };
            if current.is_none() && remote.is_single() {
                // The merge into nothing keeps a lone version as it is, so
                // the record is stored as it came, never decoded.
                report.changed += 1;
                if !ascending {
                    index.insert(key.clone(), touched.len());
                }
                touched.push(Touched { key, old: None, new: New::Fresh(remote), conflict: None });
                continue;
            }
            let merged = merge(&key, current.as_ref(), remote.decode(), &inner.opts.policy);
            let ws = &mut *w;
            let conflict = merged
                .conflict
                .filter(|c| ws.counted_conflicts.count(c, &ws.vv))
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
            match seen {
                Some(j) => {
                    let entry = &mut touched[j];
                    entry.new = New::Merged(new);
                    entry.conflict = conflict.or(entry.conflict.take());
                }
                None => {
                    if !ascending {
                        index.insert(key.clone(), touched.len());
                    }
                    touched.push(Touched { key, old: current, new: New::Merged(new), conflict });
                }
            }
        }
        let raise = covered.map(|c| vv_increase(&w.vv, c)).unwrap_or_default();
        if let Some(&(_, seq)) = raise.iter().find(|(o, _)| *o == inner.node_id) {
            max_own_seq = max_own_seq.max(seq);
        }
        if touched.is_empty() && raise.is_empty() && ctx.resume.is_none() {
            inner.persist_hlc(&mut w)?;
            return Ok(report);
        }
        if max_own_seq >= IMPOSSIBLE_OWN_SEQ {
            // Taking it would wrap `next_seq` and reuse seqs peers cover.
            inner.persist_hlc(&mut w)?;
            return Err(Error::ImpossibleOwnSeq { seq: max_own_seq });
        }
        // Room is kept for our own origin, which our first write adds.
        let own_missing = w.vv.get(inner.node_id) == 0 && !raise.iter().any(|(o, _)| *o == inner.node_id);
        let origins = w.vv.len() + raise.iter().filter(|(o, _)| w.vv.get(*o) == 0).count() + usize::from(own_missing);
        if origins > MAX_ORIGINS {
            // Peers would refuse our vector, and we every later message.
            inner.persist_hlc(&mut w)?;
            return Err(Error::TooManyOrigins { origins, max: MAX_ORIGINS });
        }
        if max_own_seq >= w.next_seq {
            // Our own writes came back from a peer with higher seqs than we
            // know: never reuse those seqs. Either this directory is an older
            // copy of the node (a restored backup) or another copy writes
            // under its id; own writes made meanwhile may have collided.
            tracing::warn!(
                seq = max_own_seq,
                next_seq = w.next_seq,
                "a peer holds writes of this node that this store does not: it was restored from an older \
                 copy, or another copy of this data directory runs; writes it made meanwhile may be lost \
                 (docs/ALGORITHM.md §10)"
            );
            w.next_seq = max_own_seq + 1;
            inner.reserve_seqs(&mut w, 1)?;
        }
        // Keys that hold no record (all of them, in a bootstrap) of a large
        // ascending batch go straight into tables (docs/ALGORITHM.md §5).
        let fresh = if ascending { touched.iter().filter(|t| t.old.is_none()).count() } else { 0 };
        let ingest = fresh >= inner.opts.ingest_min_records;
        if ingest {
            report.ingested = fresh;
        }
        let changes = self.commit_merged(&mut w, touched, &raise, ctx.resume, ingest)?;
        inner.remote_applied.fetch_add(report.changed as u64, Ordering::Relaxed);
        // A commit of a resume point alone shows subscribers nothing; published,
        // it would only take room in the feed and in live queues (a link that
        // overflows restarts a catch-up).
        if !changes.is_empty() || !raise.is_empty() {
            inner.publish(&mut w, Source::Remote, ctx.from, changes);
        }
        Ok(report)
    }

    /// The current records of strictly ascending user keys, found with one
    /// range scan over `[first, last]` instead of a point read per key. The
    /// scan gives up, and the remaining keys are read one by one, once it
    /// has stepped over more stored keys than a point read per key would
    /// cost (a batch sparse within a large store).
    fn read_ascending<R>(&self, records: &[(Vec<u8>, R)]) -> Result<Vec<Option<Record>>> {
        let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) else { return Ok(Vec::new()) };
        let mut budget = 2 * records.len() + 64;
        let mut scan = self.inner.data.range(keys::data_key(first)..=keys::data_key(last));
        let mut out = Vec::with_capacity(records.len());
        let mut stored: Option<(fjall::Slice, fjall::Slice)> = None;
        for (i, (key, _)) in records.iter().enumerate() {
            let found = loop {
                if stored.is_none() {
                    match scan.next() {
                        Some(guard) => stored = Some(guard.into_inner()?),
                        None => break None,
                    }
                }
                let Some((dkey, raw)) = &stored else { break None };
                match keys::user_key(dkey).cmp(key.as_slice()) {
                    std::cmp::Ordering::Less if budget > 0 => {
                        budget -= 1;
                        stored = None;
                    }
                    std::cmp::Ordering::Less => {
                        let rest: Vec<Vec<u8>> = records[i..].iter().map(|(k, _)| keys::data_key(k)).collect();
                        out.extend(self.read_records(&rest)?);
                        return Ok(out);
                    }
                    std::cmp::Ordering::Equal => break Some(decode(key, raw)?),
                    std::cmp::Ordering::Greater => break None,
                }
            };
            if found.is_some() {
                stored = None;
            }
            out.push(found);
        }
        Ok(out)
    }

    fn commit_merged(
        &self,
        w: &mut WriterState,
        touched: Vec<Touched>,
        raise: &[(NodeId, u64)],
        resume: Option<(NodeId, Option<&ResumePoint>)>,
        ingest: bool,
    ) -> Result<Vec<Change>> {
        let inner: &Inner = &self.inner;
        // An ingestion's records go into `ingestion`, not the batch.
        let (batched, ingested) = if ingest { (0, touched.len()) } else { (touched.len(), 0) };
        let mut batch = inner.batch(batched * 3 + raise.len() + 4);
        let mut ingestion: Vec<(fjall::Slice, fjall::Slice)> = Vec::with_capacity(ingested);
        let mut changes = Vec::with_capacity(touched.len());
        let mut log = LogEdits::new(inner.node_id);
        let mut encoded = Vec::new();
        let mut removes_own = false;
        // Noted in the held-back log entries once the batch has committed:
        // a held entry written before then is hidden by the batch's removal.
        let mut superseded = Vec::new();
        // Log entries of the remote versions of ingested keys: held back,
        // then ingested as tables (docs/ALGORITHM.md §5).
        let mut log_tables: Vec<LogEntry> = Vec::with_capacity(ingested);
        // Before the batch commits, so the filter never misses a stored key.
        inner.filter.add_all(touched.iter().filter(|t| t.old.is_none()).map(|t| t.key.as_slice()));
        // Subscribers get the encoding too, which replication forwards.
        let subscribed = inner.feed.receiver_count() > 0;
        for Touched { key, old, new, conflict } in touched {
            let new = match new {
                New::Merged(new) if old.as_ref() == Some(&new) => {
                    changes.push(Change::new(key, new, None, conflict));
                    continue;
                }
                New::Merged(new) => {
                    new.encode_into(&mut encoded);
                    New::Merged(new)
                }
                fresh @ New::Fresh(_) => fresh,
            };
            let bytes: &[u8] = match &new {
                New::Merged(_) => &encoded,
                New::Fresh(e) => e.as_bytes(),
            };
            let old_dots: Vec<Dot> = old.as_ref().map(|r| r.dots().collect()).unwrap_or_default();
            for d in old_dots.iter().filter(|d| !new.dots().any(|n| n == **d)) {
                removes_own |= d.origin == inner.node_id;
                log.remove(*d);
                superseded.push(*d);
            }
            for d in new.dots().filter(|d| !old_dots.contains(d)) {
                // Own dots may belong to blocks, which only `LogEdits` handles.
                if ingest && old.is_none() && d.origin != inner.node_id {
                    log_tables.push((keys::log_key(d), fjall::Slice::new(&key)));
                } else {
                    log.add(d, &key);
                }
            }
            // Into engine slices: a record that came encoded is one already.
            if ingest && old.is_none() {
                let value = match &new {
                    New::Fresh(e) => e.slice().clone(),
                    New::Merged(_) => fjall::Slice::new(bytes),
                };
                ingestion.push((keys::data_slice(&key), value));
            } else {
                batch.insert(&inner.data, keys::data_slice(&key), bytes);
            }
            changes.push(match new {
                New::Merged(r) => {
                    let forwarded = subscribed.then(|| EncodedRecord::from_parts(fjall::Slice::new(&encoded), &r));
                    Change::new(key, r, forwarded, conflict)
                }
                New::Fresh(e) => Change::encoded(key, e),
            });
        }
        inner.ingest(w, ingestion, log_tables, !raise.is_empty(), &mut batch)?;
        // Merges never form blocks; own dots that come back join existing ones.
        log.write_to(&inner.log, Seq::MAX, &mut batch, |d| inner.corrupt(d))?;
        if removes_own {
            // The newest own write may be leaving the log, from which open
            // recovers this node's own entry: persist the entry instead.
            let own = w.vv.get(inner.node_id);
            batch.insert(&inner.meta, keys::vv_key(inner.node_id), keys::u64_value(own).to_vec());
        }
        for &(origin, seq) in raise {
            batch.insert(&inner.meta, keys::vv_key(origin), keys::u64_value(seq).to_vec());
        }
        match resume {
            Some((peer, Some(point))) => batch.insert(&inner.meta, keys::resume_key(peer), encode_resume(point)),
            Some((peer, None)) => batch.remove(&inner.meta, keys::resume_key(peer)),
            None => {}
        }
        let ceiling = inner.reserve_hlc(w, &mut batch);
        batch.commit()?;
        w.unfinished_ingestion = false;
        for d in superseded {
            w.pending_log.supersede(d);
        }
        w.hlc_ceiling = ceiling;
        for &(origin, seq) in raise {
            w.vv.raise(origin, seq);
        }
        Ok(changes)
    }

    /// The stored point from which an interrupted catch-up from `peer`
    /// resumes (see [`ApplyContext::resume`]). A resume point is only a hint
    /// (dropping one costs re-sending, never correctness), so one that does
    /// not decode — for example written by an older build — is logged and
    /// ignored.
    pub fn resume_point(&self, peer: NodeId) -> Result<Option<ResumePoint>> {
        let Some(raw) = self.inner.meta.get(keys::resume_key(peer))? else { return Ok(None) };
        match postcard::take_from_bytes::<ResumePoint>(&raw) {
            Ok((point, [])) => Ok(Some(point)),
            _ => {
                tracing::warn!(%peer, path = %self.inner.path.display(), "ignoring a malformed catch-up resume point");
                Ok(None)
            }
        }
    }

    /// Total conflicts detected since this store was opened.
    pub fn conflict_count(&self) -> u64 {
        self.inner.conflicts.load(Ordering::Relaxed)
    }

    /// Local writes (each put or delete of a batch) committed since this
    /// store was opened.
    pub fn local_write_count(&self) -> u64 {
        self.inner.local_writes.load(Ordering::Relaxed)
    }

    /// Records received from peers that changed this store since it was
    /// opened ([`ApplyReport::changed`], summed).
    pub fn remote_applied_count(&self) -> u64 {
        self.inner.remote_applied.load(Ordering::Relaxed)
    }
}

/// Own seqs from peers at or above this are refused: 2^62 writes are not
/// a history, and `next_seq` must never wrap.
const IMPOSSIBLE_OWN_SEQ: u64 = 1 << 62;

fn encode_resume(point: &ResumePoint) -> Vec<u8> {
    postcard::to_stdvec(point).unwrap_or_else(|_| unreachable!("in-memory encode"))
}

/// One key changed (or re-published) by an apply.
struct Touched {
    key: Vec<u8>,
    /// The record before this call.
    old: Option<Record>,
    /// The record now.
    new: New,
    conflict: Option<Conflict>,
}

/// A key's record after an apply.
enum New {
    /// A remote record for a key that held none, stored as it came.
    Fresh(EncodedRecord),
    /// The result of a merge.
    Merged(Record),
}

impl New {
    fn to_record(&self) -> Record {
        match self {
            New::Fresh(e) => e.decode(),
            New::Merged(r) => r.clone(),
        }
    }

    fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        let (fresh, merged) = match self {
            New::Fresh(e) => (Some(e.dots()), None),
            New::Merged(r) => (None, Some(r.dots())),
        };
        fresh.into_iter().flatten().chain(merged.into_iter().flatten())
    }
}

/// Entries of `new` that are above `current`.
fn vv_increase(current: &VersionVector, new: &VersionVector) -> Vec<(NodeId, u64)> {
    new.iter().filter(|&(o, s)| s > current.get(o)).collect()
}
