//! Local writes. Each commit stores, in one atomic engine batch: the new
//! record, its change-log entry and the removal of the entries it
//! supersedes (SPEC invariants 1 and 2). The node's own version-vector
//! entry is not written: it is recovered from the change log at open.

use super::changelog::LogEdits;
use super::db::{Db, Inner, WriterState, HLC_RESERVATION_MS, SEQ_RESERVATION};
use super::encoded::EncodedRecord;
use super::error::{Error, Result};
use super::feed::{Change, Commit, ConflictEvent, Source};
use super::keys;
use super::options::Durability;
use super::read::decode;
use super::record::{Record, Version};
use crate::clock::Hlc;
use crate::version::{Dot, NodeId};
use fjall::{OwnedWriteBatch, PersistMode, Slice};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

/// A set of puts and deletes applied atomically by [`Db::write`]. If a key
/// appears more than once, its last operation wins.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push((key.into(), Some(value.into())));
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push((key.into(), None));
        self
    }

    /// Number of operations added.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl Db {
    /// Stores `value` under `key`. Returns the write's dot.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<Dot> {
        let mut b = Batch::new();
        b.put(key, value);
        self.write_ops(b.ops).map(|d| d.unwrap_or_else(|| unreachable!("one op")))
    }

    /// Deletes `key` (stores a tombstone). Returns the write's dot.
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Result<Dot> {
        let mut b = Batch::new();
        b.delete(key);
        self.write_ops(b.ops).map(|d| d.unwrap_or_else(|| unreachable!("one op")))
    }

    /// Applies `batch` atomically. Its writes take consecutive sequence
    /// numbers; returns the dot of the last one (`None` for an empty batch).
    pub fn write(&self, batch: Batch) -> Result<Option<Dot>> {
        self.write_ops(batch.ops)
    }

    fn write_ops(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<Option<Dot>> {
        let inner = &*self.inner;
        for (k, v) in &ops {
            inner.check_key(k)?;
            if let Some(v) = v {
                inner.check_value(v)?;
            }
        }
        let ops = last_op_per_key(ops);
        if ops.is_empty() {
            return Ok(None);
        }
        let mut w = inner.lock_writer();
        inner.finish_failed_ingestion(&mut w)?;
        inner.reserve_seqs(&mut w, ops.len() as u64)?;
        let node = inner.node_id;
        let mut batch = inner.batch(ops.len() + ops.len() / 4 + 4);
        // Nobody can subscribe and snapshot in between: both take this lock.
        let publish = inner.feed.receiver_count() > 0;
        let mut changes = Vec::with_capacity(if publish { ops.len() } else { 0 });
        let now = inner.now_ms();
        let data_keys: Vec<Slice> = ops.iter().map(|(k, _)| keys::data_slice(k)).collect();
        // Added before the batch commits, so the filter never misses a
        // stored key; a key certainly new skips the read of its record.
        let present = inner.filter.add_all(ops.iter().map(|(k, _)| k.as_slice()));
        let olds = self.read_records_where(&data_keys, &present)?;
        let mut encoded = Vec::new();
        let mut log = LogEdits::new(node);
        // Noted in the held-back log entries once the batch has committed.
        let mut superseded = Vec::new();
        // Every own dot stored so far is below `next_seq`.
        let fresh = w.next_seq;
        for (((key, value), data_key), old) in ops.into_iter().zip(data_keys).zip(olds) {
            let deps = old.as_ref().map(Record::context).unwrap_or_default();
            let dot = Dot::new(node, w.next_seq);
            w.next_seq += 1;
            // Above every version it supersedes, even one too far ahead of
            // our wall clock for the clock to adopt: last-writer-wins drops
            // a loser only because whatever supersedes the winner orders
            // after it (docs/ALGORITHM.md §4, "Why losers may be dropped").
            let above = old.as_ref().map_or(Hlc::default(), |r| r.max_hlc().successor());
            let hlc = w.clock.tick(now).max(above);
            let record = Record::single(Version { dot, hlc, deps, value });
            if let Some(old) = &old {
                for d in old.dots() {
                    log.remove(d);
                    superseded.push(d);
                }
            }
            log.add(dot, &key);
            record.encode_into(&mut encoded);
            batch.insert(&inner.data, data_key, &encoded[..]);
            if publish {
                let encoded = EncodedRecord::from_parts(fjall::Slice::new(&encoded), &record);
                changes.push(Change::new(key, record, Some(encoded), None));
            }
        }
        log.write_to(&inner.log, fresh, &mut batch, |d| inner.corrupt(d))?;
        let ceiling = inner.reserve_hlc(&w, &mut batch);
        batch.commit()?;
        for d in superseded {
            w.pending_log.supersede(d);
        }
        let last = Dot::new(node, w.next_seq - 1);
        inner.local_writes.fetch_add(last.seq + 1 - fresh, std::sync::atomic::Ordering::Relaxed);
        w.vv.raise(node, last.seq);
        w.hlc_ceiling = ceiling;
        inner.publish(&mut w, Source::Local, None, changes);
        Ok(Some(last))
    }
}

impl Db {
    /// Reads the current records of (data-keyspace) `keys`, skipping the
    /// keys the key filter knows hold none.
    pub(super) fn read_records<K: AsRef<[u8]> + Sync>(&self, keys: &[K]) -> Result<Vec<Option<Record>>> {
        let present = self.inner.filter.may_contain_all(keys.iter().map(|k| keys::user_key(k.as_ref())));
        self.read_records_where(keys, &present)
    }

    /// Reads the current records of (data-keyspace) `keys` where `present`
    /// says a key may hold one; the others are `None` without a read.
    fn read_records_where<K: AsRef<[u8]> + Sync>(&self, keys: &[K], present: &[bool]) -> Result<Vec<Option<Record>>> {
        let to_read: Vec<&K> = keys.iter().zip(present).filter(|(_, p)| **p).map(|(k, _)| k).collect();
        let mut found = self.read_present(&to_read)?.into_iter();
        if to_read.len() == keys.len() {
            return Ok(found.collect());
        }
        Ok(present.iter().map(|&p| if p { found.next().flatten() } else { None }).collect())
    }

    /// Point reads of `keys`, in parallel for large batches: they dominate
    /// the cost of a write of existing keys (see BENCHMARKS.md), the calling
    /// thread takes the first share.
    fn read_present<K: AsRef<[u8]> + Sync>(&self, keys: &[&K]) -> Result<Vec<Option<Record>>> {
        const PARALLEL_MIN: usize = 256;
        let read = |k: &&K| -> Result<Option<Record>> {
            let k = k.as_ref();
            let user = keys::user_key(k);
            self.inner.data.get(k)?.map(|raw| decode(user, &raw)).transpose()
        };
        static THREADS: OnceLock<usize> = OnceLock::new();
        if keys.len() < PARALLEL_MIN {
            return keys.iter().map(read).collect();
        }
        // Asking the OS reads cgroup files: do it once.
        let threads = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));
        if threads < 2 {
            return keys.iter().map(read).collect();
        }
        let chunk = keys.len().div_ceil(threads);
        std::thread::scope(|s| {
            let mut chunks = keys.chunks(chunk);
            let first = chunks.next().unwrap_or_default();
            let others: Vec<_> =
                chunks.map(|c| s.spawn(move || c.iter().map(read).collect::<Result<Vec<_>>>())).collect();
            let mut out = Vec::with_capacity(keys.len());
            for k in first {
                out.push(read(k)?);
            }
            for part in others {
                out.extend(part.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
            }
            Ok(out)
        })
    }
}

impl Inner {
    pub(crate) fn check_key(&self, k: &[u8]) -> Result<()> {
        let max = self.opts.max_key_len;
        if k.len() > max {
            return Err(Error::KeyTooLarge { len: k.len(), max });
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, v: &[u8]) -> Result<()> {
        let max = self.opts.max_value_len;
        if v.len() > max {
            return Err(Error::ValueTooLarge { len: v.len(), max });
        }
        Ok(())
    }

    /// An engine batch with the configured durability.
    pub(crate) fn batch(&self, capacity: usize) -> OwnedWriteBatch {
        let mode = match self.opts.durability {
            Durability::Buffered => Some(PersistMode::Buffer),
            Durability::Sync => Some(PersistMode::SyncData),
        };
        OwnedWriteBatch::with_capacity(self.engine.clone(), capacity).durability(mode)
    }

    /// Makes sure `n` more sequence numbers are durably reserved before any
    /// of them can become visible.
    pub(crate) fn reserve_seqs(&self, w: &mut WriterState, n: u64) -> Result<()> {
        let needed = w.next_seq + n - 1;
        if needed <= w.reserved {
            return Ok(());
        }
        let reserved = needed + SEQ_RESERVATION;
        let mut b = OwnedWriteBatch::with_capacity(self.engine.clone(), 1).durability(Some(PersistMode::SyncData));
        b.insert(&self.meta, keys::META_SEQ_RESERVED, keys::u64_value(reserved).to_vec());
        b.commit()?;
        w.reserved = reserved;
        Ok(())
    }

    /// Adds the HLC ceiling to `batch` if the clock has passed the persisted
    /// one, so no timestamp in the batch can be above what a restart starts
    /// from. Returns the ceiling to record once the batch has committed.
    pub(crate) fn reserve_hlc(&self, w: &WriterState, batch: &mut OwnedWriteBatch) -> Hlc {
        let last = w.clock.last();
        if last <= w.hlc_ceiling {
            return w.hlc_ceiling;
        }
        let ceiling = Hlc::new(last.wall_ms() + HLC_RESERVATION_MS, 0).max(last);
        batch.insert(&self.meta, keys::META_HLC, keys::u64_value(ceiling.0));
        ceiling
    }

    /// Persists the HLC ceiling on its own if the clock passed it without a
    /// commit (an apply that changed nothing still adopted timestamps), so
    /// a restart cannot take the clock back below them.
    pub(crate) fn persist_hlc(&self, w: &mut WriterState) -> Result<()> {
        if w.clock.last() <= w.hlc_ceiling {
            return Ok(());
        }
        let mut batch = self.batch(1);
        let ceiling = self.reserve_hlc(w, &mut batch);
        batch.commit()?;
        w.hlc_ceiling = ceiling;
        Ok(())
    }

    /// Publishes a commit on the change feed (under the writer lock, so feed
    /// order is commit order).
    pub(crate) fn publish(&self, w: &mut WriterState, source: Source, from: Option<NodeId>, changes: Vec<Change>) {
        w.commit_id += 1;
        if self.conflict_feed.receiver_count() > 0 {
            for c in &changes {
                if let Some(conflict) = &c.conflict {
                    let event = ConflictEvent { key: c.key.clone(), conflict: conflict.clone() };
                    // An error only means nobody is subscribed any more.
                    let _ = self.conflict_feed.send(Arc::new(event));
                }
            }
        }
        if self.feed.receiver_count() == 0 {
            return;
        }
        let commit = Commit { id: w.commit_id, source, from, changes, vv: w.vv.clone() };
        // An error only means nobody is subscribed any more.
        let _ = self.feed.send(Arc::new(commit));
    }
}

/// Keeps only the last operation for each key, preserving order.
fn last_op_per_key(ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    if ops.len() < 2 {
        return ops;
    }
    let mut seen = HashSet::with_capacity(ops.len());
    let keep: Vec<bool> = ops.iter().rev().map(|(k, _)| seen.insert(k.as_slice())).collect();
    let mut keep = keep.into_iter().rev();
    ops.into_iter().filter(|_| keep.next().unwrap_or(false)).collect()
}
