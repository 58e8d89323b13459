//! An in-memory filter over the keys that hold a record.
//!
//! Every write reads the key's current record first (its dots are removed
//! from the change log in the same batch, its causal context becomes the new
//! version's dependencies). For a key that was never written that read finds
//! nothing, yet it costs a walk of the engine's memtables — as much as the
//! insert itself. The filter answers "certainly absent" for most such keys,
//! so the read is skipped (docs/ALGORITHM.md §4, "The key filter").
//!
//! Correctness rests on one property: the filter holds a superset of the keys
//! in the data keyspace. Writers add every key they create before its batch
//! commits, under the writer lock; a store opened with data is scanned in the
//! background from a snapshot taken at open, and until that scan has added
//! every key the filter answers "maybe" for all of them. Keys are never
//! removed (tombstones stay records). A false "maybe" only costs the read.
//!
//! The filter grows by generations (a scalable Bloom filter): when one is
//! full a new one of twice its capacity is added (or of what the budget has
//! left), and a key may be present if any generation says so. Once
//! `Options::key_filter_bytes` is spent it gives up and answers "maybe" for
//! every key: writes then read every key, as without a filter.

use fastbloom::BloomFilter;
use foldhash::quality::FixedState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Target false-positive rate of each generation.
const FALSE_POSITIVE_RATE: f64 = 0.02;
/// Capacity of the first generation of a new store, in keys.
const FIRST_CAPACITY: usize = 1 << 20;
/// Smallest generation worth adding when the budget is nearly spent.
const MIN_CAPACITY: usize = 1 << 16;
/// Keys hashed per lock taken by the open-time scan.
const SCAN_CHUNK: usize = 4096;

/// A superset of the keys that hold a record; see the module documentation.
pub(crate) struct KeyFilter {
    /// Shared by every generation, so a key is hashed once, outside the lock.
    /// Seeded at random: keys chosen to collide can only cost reads.
    hasher: FixedState,
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
    /// Keys that set new bits (about the distinct keys added; a key that was
    /// a false positive when added is not counted).
    pub keys: u64,
    /// Memory held by the filter's bits.
    pub bytes: u64,
}

impl KeyFilter {
    /// A filter for a store holding no key (complete at once), or for one
    /// holding about `existing` keys that still have to be scanned.
    pub(crate) fn new(existing: Option<usize>, max_bytes: usize) -> Self {
        let seed: u128 = rand::random();
        let capacity = existing.map_or(FIRST_CAPACITY, |n| n.saturating_add(n / 4).max(FIRST_CAPACITY));
        let mut state =
            State { complete: existing.is_none(), given_up: false, generations: Vec::new(), seed, max_bytes };
        state.grow(capacity);
        KeyFilter { hasher: FixedState::with_seed(seed as u64), state: Mutex::new(state) }
    }

    /// The hash of `key` that [`FilterGuard`] takes (the same for every
    /// generation).
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Adds `keys` under one lock (each hashed before it) and tells for each
    /// whether it may have held a record before (`false` is certain).
    pub(crate) fn add_all<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<bool> {
        let hashes: Vec<u64> = keys.into_iter().map(|k| self.hash(k)).collect();
        let mut f = self.lock();
        hashes.into_iter().map(|h| f.add(h)).collect()
    }

    /// Whether each of `keys` may hold a record (`false` is certain), under
    /// one lock.
    pub(crate) fn may_contain_all<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<bool> {
        let hashes: Vec<u64> = keys.into_iter().map(|k| self.hash(k)).collect();
        let f = self.lock();
        hashes.into_iter().map(|h| f.may_contain(h)).collect()
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

/// The locked filter. Keys are given by their [`KeyFilter::hash`].
pub(crate) struct FilterGuard<'a>(MutexGuard<'a, State>);

impl FilterGuard<'_> {
    /// Whether the key hashed to `hash` may hold a record. `false` is certain.
    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        let s = &self.0;
        !s.complete || s.given_up || s.generations.iter().any(|g| g.bloom.contains_hash(hash))
    }

    /// Adds the key hashed to `hash` and tells whether it may have been there
    /// before, that is whether it may hold a record (`false` is certain). One
    /// pass instead of a query and then an insert.
    pub(crate) fn add(&mut self, hash: u64) -> bool {
        let s = &mut self.0;
        if s.given_up {
            return true;
        }
        if s.generations.last().is_none_or(|g| g.len >= g.capacity) {
            let next = s.generations.last().map_or(FIRST_CAPACITY, |g| g.capacity.saturating_mul(2));
            s.grow(next);
        }
        let Some((last, older)) = s.generations.split_last_mut() else { return true };
        // A key an older generation holds is not added again: the newest
        // one fills with new keys only.
        let present = older.iter().any(|g| g.bloom.contains_hash(hash)) || last.bloom.insert_hash(hash);
        if !present {
            last.len += 1;
        }
        !s.complete || present
    }

    /// Whether the open-time scan has finished.
    pub(crate) fn is_complete(&self) -> bool {
        self.0.complete
    }

    /// Whether the filter is over its budget (every key "maybe" for good).
    pub(crate) fn has_given_up(&self) -> bool {
        self.0.given_up
    }
}

impl State {
    /// Adds a generation for `capacity` keys, or for as many as the memory
    /// budget has left; gives up when that is too few to be worth it.
    fn grow(&mut self, capacity: usize) {
        let held: usize = self.generations.iter().map(|g| g.bloom.num_bits() / 8).sum();
        let left_bits = self.max_bytes.saturating_sub(held).saturating_mul(8);
        let mut capacity = capacity;
        while capacity >= MIN_CAPACITY && fastbloom::optimal_size(capacity, FALSE_POSITIVE_RATE) > left_bits {
            capacity /= 2;
        }
        if capacity < MIN_CAPACITY {
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
        let bits = fastbloom::optimal_size(capacity, FALSE_POSITIVE_RATE);
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
            let mut hashes = Vec::with_capacity(SCAN_CHUNK);
            let mut scanned = 0u64;
            let mut iter = snapshot.iter(&data);
            loop {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                hashes.clear();
                for guard in iter.by_ref().take(SCAN_CHUNK) {
                    match guard.key() {
                        Ok(k) => hashes.push(filter.hash(user_key(&k))),
                        Err(e) => {
                            // The filter stays incomplete: every write reads.
                            tracing::warn!(error = %e, "key filter scan failed; writes keep reading every key");
                            return;
                        }
                    }
                }
                let mut f = filter.lock();
                if f.has_given_up() {
                    return;
                }
                for &h in &hashes {
                    f.add(h);
                }
                scanned += hashes.len() as u64;
                if hashes.len() < SCAN_CHUNK {
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

    fn add_all(filter: &KeyFilter, keys: impl Iterator<Item = u64>) {
        let mut f = filter.lock();
        for i in keys {
            f.add(filter.hash(&i.to_be_bytes()));
        }
    }

    fn holds_all(filter: &KeyFilter, keys: impl Iterator<Item = u64>) -> bool {
        let f = filter.lock();
        keys.into_iter().all(|i| f.may_contain(filter.hash(&i.to_be_bytes())))
    }

    #[test]
    fn holds_every_inserted_key_across_generations() {
        let filter = KeyFilter::new(None, usize::MAX);
        let n = FIRST_CAPACITY as u64 * 3 + 5;
        add_all(&filter, 0..n);
        assert!(holds_all(&filter, 0..n));
        let f = filter.lock();
        let absent = (n..n + 100_000).filter(|i| f.may_contain(filter.hash(&i.to_be_bytes()))).count();
        // Three generations, each at most 2 % when full.
        assert!(absent < 6_500, "{absent} false positives in 100 000");
        drop(f);
        let stats = filter.stats();
        assert!(stats.keys <= n && stats.keys > n * 95 / 100, "{stats:?}");
        // Adding them again fills no generation.
        add_all(&filter, 0..n);
        assert_eq!(filter.stats(), stats);
    }

    #[test]
    fn keys_added_during_the_scan_are_held_once_it_completes() {
        let filter = KeyFilter::new(Some(10), usize::MAX);
        let mut f = filter.lock();
        assert!(f.may_contain(filter.hash(b"never written")), "incomplete: every key may be present");
        assert!(f.add(filter.hash(b"written during the scan")), "incomplete: every key may be present");
        f.0.complete = true;
        assert!(f.may_contain(filter.hash(b"written during the scan")));
        assert!(!f.add(filter.hash(b"a new key")));
    }

    #[test]
    fn a_spent_budget_means_maybe_for_every_key() {
        let tiny = KeyFilter::new(None, 1024);
        assert!(tiny.stats().given_up);
        assert!(tiny.lock().add(tiny.hash(b"a")));
        assert!(tiny.lock().may_contain(tiny.hash(b"never written")));

        // Room for the first generation and half of the second.
        let bytes = |n| fastbloom::optimal_size(n, FALSE_POSITIVE_RATE) / 8;
        let budget = bytes(FIRST_CAPACITY) + bytes(FIRST_CAPACITY);
        let filter = KeyFilter::new(None, budget);
        add_all(&filter, 0..FIRST_CAPACITY as u64 * 3 / 2);
        let stats = filter.stats();
        assert!(!stats.given_up && stats.bytes <= budget as u64, "{stats:?}");
        add_all(&filter, 0..FIRST_CAPACITY as u64 * 3);
        assert!(filter.stats().given_up);
        assert!(holds_all(&filter, 0..FIRST_CAPACITY as u64 * 3));
        assert!(filter.lock().may_contain(filter.hash(b"never written")));
    }
}
