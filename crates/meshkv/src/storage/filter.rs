//! An in-memory filter over the keys that hold a record.
//!
//! Every write reads the key's current record first (its dots are removed
//! from the change log in the same batch, its causal context becomes the new
//! version's dependencies). For a key that was never written that read finds
//! nothing, yet it costs a walk of the engine's memtables — as much as the
//! insert itself. The filter answers "certainly absent" for most such keys,
//! so the read is skipped (docs/ALGORITHM.md §2, "The key filter").
//!
//! Correctness rests on one property: the filter holds a superset of the keys
//! in the data keyspace. Writers add every key they create before its batch
//! commits, under the writer lock; a store opened with data is scanned in the
//! background from a snapshot taken at open, and until that scan has added
//! every key the filter answers "maybe" for all of them. Keys are never
//! removed (tombstones stay records). A false "maybe" only costs the read.
//!
//! The filter grows by generations (a scalable Bloom filter): when one is
//! full a new one of twice its capacity is added, and a key may be present
//! if any generation says so. Past `Options::key_filter_bytes` it gives up
//! and answers "maybe" for every key: writes then read every key, as without
//! a filter.

use fastbloom::BloomFilter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Target false-positive rate of each generation.
const FALSE_POSITIVE_RATE: f64 = 0.02;
/// Capacity of the first generation of a new store, in keys.
const FIRST_CAPACITY: usize = 1 << 20;
/// Keys hashed per lock taken by the open-time scan.
const SCAN_CHUNK: usize = 4096;

/// A superset of the keys that hold a record; see the module documentation.
pub(crate) struct KeyFilter {
    state: Mutex<State>,
}

struct State {
    /// Whether every key stored at open has been added.
    complete: bool,
    /// Past the memory budget: every key may be present.
    given_up: bool,
    generations: Vec<Generation>,
    seed: u128,
    max_bytes: usize,
}

struct Generation {
    bloom: BloomFilter,
    capacity: usize,
    len: usize,
}

/// What the filter holds, for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyFilterStats {
    /// Every key stored at open has been added (the open-time scan is done).
    pub complete: bool,
    /// Over its memory budget: the filter is off and every write reads.
    pub given_up: bool,
    /// Keys added (a key added again, or one that was a false positive,
    /// counts once).
    pub keys: u64,
    /// Memory held by the filter's bits.
    pub bytes: u64,
}

impl KeyFilter {
    /// A filter for a store holding no key (complete at once), or for one
    /// holding about `existing` keys that still have to be scanned.
    pub(crate) fn new(existing: Option<usize>, max_bytes: usize) -> Self {
        let capacity = existing.map_or(FIRST_CAPACITY, |n| n.saturating_mul(2).max(FIRST_CAPACITY));
        let mut state = State {
            complete: existing.is_none(),
            given_up: false,
            generations: Vec::new(),
            seed: rand::random(),
            max_bytes,
        };
        state.grow(capacity);
        KeyFilter { state: Mutex::new(state) }
    }

    /// Takes the filter for a batch of queries and inserts.
    pub(crate) fn lock(&self) -> FilterGuard<'_> {
        FilterGuard(self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What the filter holds now.
    pub(crate) fn stats(&self) -> KeyFilterStats {
        let s = self.lock();
        let s = &s.0;
        KeyFilterStats {
            complete: s.complete,
            given_up: s.given_up,
            keys: s.generations.iter().map(|g| g.len as u64).sum(),
            bytes: s.generations.iter().map(|g| g.bloom.num_bits() as u64 / 8).sum(),
        }
    }
}

/// The locked filter.
pub(crate) struct FilterGuard<'a>(MutexGuard<'a, State>);

impl FilterGuard<'_> {
    /// Whether `key` may hold a record. `false` is certain.
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        let s = &self.0;
        if !s.complete || s.given_up {
            return true;
        }
        let Some(first) = s.generations.first() else { return true };
        let hash = first.bloom.source_hash(key);
        s.generations.iter().any(|g| g.bloom.contains_hash(hash))
    }

    /// Adds `key` and tells whether it may have been there before, that is
    /// whether it may hold a record (`false` is certain). One pass instead of
    /// a query and then an insert.
    pub(crate) fn add(&mut self, key: &[u8]) -> bool {
        let s = &mut self.0;
        if s.given_up {
            return true;
        }
        if s.generations.last().is_none_or(|g| g.len >= g.capacity) {
            let next = s.generations.last().map_or(FIRST_CAPACITY, |g| g.capacity.saturating_mul(2));
            s.grow(next);
        }
        let Some((last, older)) = s.generations.split_last_mut() else { return true };
        let hash = last.bloom.source_hash(key);
        let in_older = older.iter().any(|g| g.bloom.contains_hash(hash));
        let in_last = last.bloom.insert_hash(hash);
        if !in_last {
            last.len += 1;
        }
        !s.complete || in_older || in_last
    }

    /// Whether the open-time scan has finished.
    pub(crate) fn is_complete(&self) -> bool {
        self.0.complete
    }
}

impl State {
    /// Adds a generation for `capacity` keys, or gives up if that would pass
    /// the memory budget.
    fn grow(&mut self, capacity: usize) {
        let bits = fastbloom::optimal_size(capacity, FALSE_POSITIVE_RATE);
        let held: usize = self.generations.iter().map(|g| g.bloom.num_bits() / 8).sum();
        if held + bits / 8 > self.max_bytes {
            if !self.given_up {
                tracing::info!(
                    budget_bytes = self.max_bytes,
                    "key filter reached its memory budget; every write now reads its key first"
                );
            }
            self.given_up = true;
            self.generations = Vec::new();
            return;
        }
        let hashes = fastbloom::optimal_hashes(bits, capacity);
        let bloom = BloomFilter::with_num_bits(bits).seed(&self.seed).hashes(hashes);
        self.generations.push(Generation { bloom, capacity, len: 0 });
    }
}

/// The background scan that adds the keys a store held at open. Stopped and
/// joined when dropped, so it never outlives the store's engine handles.
pub(crate) struct FilterScan {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FilterScan {
    /// Starts adding the data keys of `snapshot` to `filter`; `user_key`
    /// maps a stored key to the key the filter is queried with.
    pub(crate) fn start(
        filter: Arc<KeyFilter>,
        snapshot: fjall::Snapshot,
        data: fjall::Keyspace,
        user_key: fn(&[u8]) -> &[u8],
    ) -> std::io::Result<FilterScan> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("meshkv-key-filter".into()).spawn(move || {
            use fjall::Readable;
            let started = std::time::Instant::now();
            let mut keys = Vec::with_capacity(SCAN_CHUNK);
            let mut scanned = 0u64;
            let mut iter = snapshot.iter(&data);
            loop {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                keys.clear();
                for guard in iter.by_ref().take(SCAN_CHUNK) {
                    match guard.key() {
                        Ok(k) => keys.push(k),
                        Err(e) => {
                            // The filter stays incomplete: every write reads.
                            tracing::warn!(error = %e, "key filter scan failed; writes keep reading every key");
                            return;
                        }
                    }
                }
                let mut f = filter.lock();
                for k in &keys {
                    f.add(user_key(k));
                }
                scanned += keys.len() as u64;
                if keys.len() < SCAN_CHUNK {
                    f.0.complete = true;
                    drop(f);
                    tracing::debug!(keys = scanned, elapsed = ?started.elapsed(), "key filter complete");
                    return;
                }
            }
        })?;
        Ok(FilterScan { stop, thread: Some(thread) })
    }

    /// Waits until the scan has finished (or failed).
    pub(crate) fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FilterScan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_inserted_key_across_generations() {
        let filter = KeyFilter::new(None, usize::MAX);
        let mut f = filter.lock();
        let n = FIRST_CAPACITY * 3 + 5;
        for i in 0..n as u64 {
            f.add(&i.to_be_bytes());
        }
        assert!((0..n as u64).all(|i| f.may_contain(&i.to_be_bytes())));
        let absent = (n as u64..n as u64 + 100_000).filter(|i| f.may_contain(&i.to_be_bytes())).count();
        // Three generations, each at most 2 % when full.
        assert!(absent < 6_500, "{absent} false positives in 100 000");
        drop(f);
        let stats = filter.stats();
        assert!(stats.keys <= n as u64 && stats.keys > n as u64 * 95 / 100, "{stats:?}");
    }

    #[test]
    fn incomplete_or_over_budget_means_maybe() {
        let incomplete = KeyFilter::new(Some(10), usize::MAX);
        assert!(incomplete.lock().may_contain(b"never written"));
        let tiny = KeyFilter::new(None, 1024);
        assert!(tiny.stats().given_up);
        let mut f = tiny.lock();
        assert!(f.add(b"a"));
        assert!(f.may_contain(b"never written"));
    }
}
