//! Reads: point lookups, range iteration and consistent snapshots.

use super::db::{Db, Inner};
use super::error::{Error, Result};
use super::keys;
use super::range::KeyRange;
use super::record::Record;
use crate::version::VersionVector;
use fjall::Readable;
use std::sync::Arc;

/// What to iterate and how. `ScanOptions::default()` walks every live key in
/// ascending order, returning keys and values.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanOptions {
    /// Which keys.
    pub range: KeyRange,
    /// Stop after this many entries.
    pub limit: Option<usize>,
    /// Descending key order.
    pub reverse: bool,
    /// Return keys (otherwise [`Entry::key`] is empty).
    pub keys: bool,
    /// Return values (otherwise [`Entry::value`] is empty).
    pub values: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions { range: KeyRange::all(), limit: None, reverse: false, keys: true, values: true }
    }
}

impl ScanOptions {
    /// Iterates `range`.
    pub fn range(range: KeyRange) -> Self {
        ScanOptions { range, ..ScanOptions::default() }
    }
}

/// A live key and its value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The key (empty when keys were not requested).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value (empty when values were not requested).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// A consistent read-only view of the store at one instant. Holding it keeps
/// old data from being compacted away, so keep it short-lived.
pub struct Snapshot {
    pub(crate) db: Arc<Inner>,
    pub(crate) snap: fjall::Snapshot,
    pub(crate) commit_id: u64,
    pub(crate) vv: VersionVector,
}

impl Db {
    /// The value of `key`, or `None` if absent or deleted.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.get_record(key)?.and_then(Record::into_value))
    }

    /// The full record of `key` (including tombstones and siblings).
    pub fn get_record(&self, key: impl AsRef<[u8]>) -> Result<Option<Record>> {
        let key = key.as_ref();
        if keys::unstorable(key) {
            return Ok(None);
        }
        self.inner.data.get(keys::data_key(key))?.map(|v| decode(key, &v)).transpose()
    }

    /// Iterates live entries, each read from one consistent point in time.
    pub fn scan(&self, opts: ScanOptions) -> Scan {
        let bounds = keys::data_bounds(opts.range.bounds());
        let iter = (!KeyRange::is_empty_range(&bounds.0, &bounds.1)).then(|| self.inner.data.range(bounds));
        Scan::new(iter, opts)
    }

    /// A consistent snapshot of data, change log and version vector.
    pub fn snapshot(&self) -> Snapshot {
        // Taken under the writer lock so `commit_id` names exactly the
        // commits the snapshot contains.
        let mut w = self.inner.lock_writer();
        // A snapshot sees the whole change log (I2). Should writing the
        // held-back entries fail, the next commit completes them; the
        // vector covers none of their dots meanwhile.
        if let Err(e) = self.inner.write_held_log(&mut w) {
            tracing::warn!(error = %e, "could not write held-back change-log entries");
        }
        Snapshot {
            db: Arc::clone(&self.inner),
            snap: self.inner.engine.snapshot(),
            commit_id: w.commit_id,
            vv: w.vv.clone(),
        }
    }
}

impl Snapshot {
    /// The value of `key` in this snapshot.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.get_record(key)?.and_then(Record::into_value))
    }

    /// The record of `key` in this snapshot.
    pub fn get_record(&self, key: impl AsRef<[u8]>) -> Result<Option<Record>> {
        let key = key.as_ref();
        if keys::unstorable(key) {
            return Ok(None);
        }
        self.snap.get(&self.db.data, keys::data_key(key))?.map(|v| decode(key, &v)).transpose()
    }

    /// Iterates live entries of this snapshot.
    pub fn scan(&self, opts: ScanOptions) -> Scan {
        let bounds = keys::data_bounds(opts.range.bounds());
        let iter = (!KeyRange::is_empty_range(&bounds.0, &bounds.1)).then(|| self.snap.range(&self.db.data, bounds));
        Scan::new(iter, opts)
    }

    /// The version vector as of this snapshot.
    pub fn version_vector(&self) -> Result<VersionVector> {
        Ok(self.vv.clone())
    }

    /// The id of the last commit included (see [`Commit::id`](super::Commit::id)).
    pub fn commit_id(&self) -> u64 {
        self.commit_id
    }
}

pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<Record> {
    Record::decode(bytes).ok_or_else(|| Error::CorruptRecord { key: key.to_vec() })
}

/// Iterator over live entries; see [`Db::scan`].
pub struct Scan {
    iter: Option<fjall::Iter>,
    opts: ScanOptions,
    remaining: usize,
}

impl Scan {
    fn new(iter: Option<fjall::Iter>, opts: ScanOptions) -> Self {
        let remaining = opts.limit.unwrap_or(usize::MAX);
        Scan { iter, opts, remaining }
    }
}

impl Iterator for Scan {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.remaining > 0 {
            let iter = self.iter.as_mut()?;
            let guard = if self.opts.reverse { iter.next_back() } else { iter.next() }?;
            let (dkey, raw) = match guard.into_inner() {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let key = keys::user_key(&dkey);
            let record = match decode(key, &raw) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            let Some(value) = record.into_value() else { continue };
            self.remaining -= 1;
            return Some(Ok(Entry {
                key: if self.opts.keys { key.to_vec() } else { Vec::new() },
                value: if self.opts.values { value } else { Vec::new() },
            }));
        }
        None
    }
}
