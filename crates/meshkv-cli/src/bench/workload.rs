//! The keys and values written by the benchmarks.
//!
//! Key `i` is 16 bytes: `splitmix64(i)` big-endian ‖ `i` big-endian. The
//! hashed prefix scatters consecutive writes over the key space (so the
//! memtable and the sorted runs see random inserts, not appends) while the
//! counter suffix keeps every key unique. Values are pseudo-random bytes (so
//! block compression cannot shrink them), different for every key. Both are
//! generated before timing starts and are the same for every implementation.

/// Length of every benchmark key.
pub const KEY_LEN: usize = 16;

/// Human-readable description of the key sequence (for reports).
pub const KEY_PATTERN: &str = "16 bytes: splitmix64(i) big-endian ++ i big-endian (hash-scattered, unique, fresh keys)";

/// `n` pre-generated key/value pairs.
pub struct Workload {
    keys: Vec<[u8; KEY_LEN]>,
    values: Vec<u8>,
    value_size: usize,
}

impl Workload {
    /// Generates `n` entries with values of `value_size` bytes.
    pub fn new(n: usize, value_size: usize) -> Self {
        let mut keys = Vec::with_capacity(n);
        let mut values = Vec::with_capacity(n * value_size);
        for i in 0..n as u64 {
            keys.push(key_at(i));
            push_value(i, value_size, &mut values);
        }
        Workload { keys, values, value_size }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Key `i`.
    pub fn key(&self, i: usize) -> &[u8] {
        &self.keys[i]
    }

    /// Value `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }

    /// The index ranges of consecutive batches of `batch_size` entries (the
    /// last one may be shorter).
    pub fn batches(&self, batch_size: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let n = self.len();
        (0..n).step_by(batch_size.max(1)).map(move |start| start..(start + batch_size).min(n))
    }
}

/// Key `i` of the sequence (see the module documentation).
pub fn key_at(i: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&splitmix64(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// Appends value `i` of the sequence (`value_size` pseudo-random bytes) to `out`.
pub fn push_value(i: u64, value_size: usize, out: &mut Vec<u8>) {
    let mut state = splitmix64(i ^ 0x5eed_0fba_5eba_1100);
    let mut left = value_size;
    while left > 0 {
        state = splitmix64(state);
        let take = left.min(8);
        out.extend_from_slice(&state.to_le_bytes()[..take]);
        left -= take;
    }
}

/// The splitmix64 finalizer: a cheap, well-mixing bijection on `u64`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_are_unique_and_values_sized() {
        let w = Workload::new(1000, 100);
        let keys: HashSet<&[u8]> = (0..w.len()).map(|i| w.key(i)).collect();
        assert_eq!(keys.len(), 1000);
        assert!((0..w.len()).all(|i| w.value(i).len() == 100));
        assert_ne!(w.value(0), w.value(1));
        assert_eq!(w.batches(300).map(|r| r.len()).collect::<Vec<_>>(), vec![300, 300, 300, 100]);
    }

    #[test]
    fn odd_value_sizes() {
        let w = Workload::new(3, 13);
        assert!((0..3).all(|i| w.value(i).len() == 13));
        let w = Workload::new(2, 0);
        assert!(w.value(1).is_empty());
    }

    #[test]
    fn streamed_entries_match_the_workload() {
        let w = Workload::new(5, 37);
        let mut v = Vec::new();
        push_value(3, 37, &mut v);
        assert_eq!(w.key(3), key_at(3));
        assert_eq!(w.value(3), &v[..]);
    }
}
