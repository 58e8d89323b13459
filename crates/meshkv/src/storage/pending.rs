//! Change-log entries of ingested records held back, so that the log tables
//! of a bootstrap are few and large (docs/ALGORITHM.md §5, "Held-back log
//! entries"). Pure bookkeeping: `apply.rs` decides when they are written.

use super::keys::{self, LOG_KEY_LEN};
use crate::version::Dot;
use std::collections::HashSet;

/// One held-back entry: the log key of a remote dot and the key it wrote.
pub(crate) type LogEntry = ([u8; LOG_KEY_LEN], fjall::Slice);

/// Entries held back are written once they take this much memory.
const HOLD_BYTES: usize = 16 << 20;

/// The held-back entries of the ingestions since the last write of them.
#[derive(Default)]
pub(crate) struct PendingLog {
    entries: Vec<LogEntry>,
    bytes: usize,
    /// First and last data keys of those ingestions: the `ingest` marker
    /// covers them until the entries are written.
    range: Option<(Vec<u8>, Vec<u8>)>,
    /// Held-back dots a later commit superseded: writing their entries
    /// would bring them back, as ingested tables hide older tombstones.
    superseded: HashSet<[u8; LOG_KEY_LEN]>,
}

impl PendingLog {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The range the `ingest` marker of an ingestion of `[first, last]`
    /// covers: that of the held-back entries too.
    pub fn marker_range(&self, first: &[u8], last: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match &self.range {
            Some((a, b)) => (a.as_slice().min(first).to_vec(), b.as_slice().max(last).to_vec()),
            None => (first.to_vec(), last.to_vec()),
        }
    }

    /// Holds back the entries of an ingestion of data keys `[first, last]`.
    pub fn hold(&mut self, first: &[u8], last: &[u8], entries: Vec<LogEntry>) {
        if entries.is_empty() {
            return;
        }
        self.range = Some(self.marker_range(first, last));
        self.bytes += entries.iter().map(|(_, key)| std::mem::size_of::<LogEntry>() + key.len()).sum::<usize>();
        self.entries.extend(entries);
    }

    /// Notes that `dot` is no longer current.
    pub fn supersede(&mut self, dot: Dot) {
        if !self.entries.is_empty() {
            self.superseded.insert(keys::log_key(dot));
        }
    }

    /// Whether the entries should be written now, with no other reason.
    pub fn full(&self) -> bool {
        self.bytes >= HOLD_BYTES
    }

    /// Takes the entries to write, in key order, one per dot (a dot named
    /// twice, which only a misbehaving peer sends, keeps one), without the
    /// superseded ones.
    pub fn take(&mut self) -> Vec<LogEntry> {
        let superseded = std::mem::take(&mut self.superseded);
        let mut entries = std::mem::take(&mut self.entries);
        entries.retain(|(k, _)| !superseded.contains(k));
        *self = PendingLog::default();
        sorted(entries)
    }

    /// Forgets everything (the caller restored the entries another way).
    pub fn clear(&mut self) {
        *self = PendingLog::default();
    }
}

/// `entries` sorted by log key (origin, then seq), one per key.
///
/// A bootstrap streams records in key order, so the seqs of one origin
/// arrive scattered but fill most of their range: entries are grouped by
/// origin (few distinct ones), and a dense group is put in order by placing
/// each entry at its seq's offset, in linear time. Sparse groups are sorted.
fn sorted(mut entries: Vec<LogEntry>) -> Vec<LogEntry> {
    // Log keys are big-endian (origin, seq).
    let origin = |e: &LogEntry| (u128::from_be_bytes(e.0) >> 64) as u64;
    let seq = |e: &LogEntry| u128::from_be_bytes(e.0) as u64;
    entries.sort_unstable_by_key(origin);
    let mut out = Vec::with_capacity(entries.len());
    let mut start = 0;
    while start < entries.len() {
        let o = origin(&entries[start]);
        let end = start + entries[start..].partition_point(|e| origin(e) == o);
        let group = &mut entries[start..end];
        let (min, max) = group.iter().map(seq).fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        let span = max - min;
        if span < 4 * group.len() as u64 && group.len() < u32::MAX as usize {
            // Offsets into the group by seq; `u32::MAX`: no entry.
            let mut slots = vec![u32::MAX; span as usize + 1];
            for (i, e) in group.iter().enumerate() {
                let slot = &mut slots[(seq(e) - min) as usize];
                if *slot == u32::MAX {
                    *slot = i as u32;
                }
            }
            for i in slots.into_iter().filter(|&i| i != u32::MAX) {
                let (key, value) = &mut group[i as usize];
                out.push((*key, std::mem::take(value)));
            }
        } else {
            group.sort_unstable_by_key(seq);
            for (key, value) in group.iter_mut() {
                if out.last().is_none_or(|(last, _): &LogEntry| last != key) {
                    out.push((*key, std::mem::take(value)));
                }
            }
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NodeId;

    fn entry(seq: u64, key: &str) -> LogEntry {
        (keys::log_key(Dot::new(NodeId(9), seq)), fjall::Slice::new(key.as_bytes()))
    }

    proptest::proptest! {
        /// Dense or sparse, one origin or several, repeated dots or not: the
        /// entries come out as a sort by key that keeps one per key.
        #[test]
        fn entries_are_taken_sorted_and_once(
            dots in proptest::collection::vec((0u64..4, 0u64..u64::MAX), 0..2000),
            range in 1u64..3000,
            sparse in proptest::prelude::any::<bool>(),
        ) {
            let mut p = PendingLog::default();
            let stretch = if sparse { 1_000_003 } else { 1 };
            let entries: Vec<LogEntry> =
                dots.iter().map(|&(o, s)| entry_of(o, 1 + s % range * stretch, s % range)).collect();
            let mut expected: Vec<[u8; LOG_KEY_LEN]> = entries.iter().map(|(k, _)| *k).collect();
            expected.sort_unstable();
            expected.dedup();
            p.hold(b"a", b"z", entries);
            let taken = p.take();
            proptest::prop_assert_eq!(taken.iter().map(|(k, _)| *k).collect::<Vec<_>>(), expected);
            for (k, v) in &taken {
                let seq = keys::parse_log_key(k).expect("key").seq;
                let tag = ((seq - 1) / stretch).to_be_bytes();
                proptest::prop_assert_eq!(v.as_ref(), tag.as_slice());
            }
        }
    }

    /// An entry for `(origin, seq)` whose value names `tag`.
    fn entry_of(origin: u64, seq: u64, tag: u64) -> LogEntry {
        (keys::log_key(Dot::new(NodeId(origin), seq)), fjall::Slice::new(&tag.to_be_bytes()))
    }

    #[test]
    fn superseded_entries_are_not_taken_and_the_marker_covers_every_ingestion() {
        let mut p = PendingLog::default();
        p.supersede(Dot::new(NodeId(9), 1));
        assert!(p.is_empty(), "nothing held, nothing to supersede");
        p.hold(b"kb", b"kc", vec![entry(1, "b"), entry(2, "c")]);
        p.hold(b"ka", b"ka", vec![entry(3, "a")]);
        assert_eq!(p.marker_range(b"kx", b"ky"), (b"ka".to_vec(), b"ky".to_vec()));
        assert_eq!(p.marker_range(b"kb", b"kb"), (b"ka".to_vec(), b"kc".to_vec()));
        p.supersede(Dot::new(NodeId(9), 2));
        let taken: Vec<u64> = p.take().iter().map(|(k, _)| keys::parse_log_key(k).expect("key").seq).collect();
        assert_eq!(taken, vec![1, 3]);
        assert!(p.is_empty());
        assert_eq!(p.marker_range(b"kz", b"kz"), (b"kz".to_vec(), b"kz".to_vec()));
    }
}
