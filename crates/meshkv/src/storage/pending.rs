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

    /// Takes the entries to write, without the superseded ones.
    pub fn take(&mut self) -> Vec<LogEntry> {
        let superseded = std::mem::take(&mut self.superseded);
        let mut entries = std::mem::take(&mut self.entries);
        entries.retain(|(k, _)| !superseded.contains(k));
        *self = PendingLog::default();
        entries
    }

    /// Forgets everything (the caller restored the entries another way).
    pub fn clear(&mut self) {
        *self = PendingLog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NodeId;

    fn entry(seq: u64, key: &str) -> LogEntry {
        (keys::log_key(Dot::new(NodeId(9), seq)), fjall::Slice::new(key.as_bytes()))
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
