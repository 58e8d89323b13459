//! The change log's stored form: one entry per current version, except
//! that this node's own writes are grouped in blocks where they can be
//! (docs/ALGORITHM.md §4, "The change log").
//!
//! * A dot has an entry of its own: key `origin ‖ seq`, value the user key.
//! * When one local commit writes all [`BLOCK_LEN`] dots of an aligned
//!   block of own seqs, they share one entry instead: key `origin ‖ first
//!   seq ‖ BLOCK_TAG`, value the block's current dots with their user
//!   keys. A batch of n puts then writes about n / `BLOCK_LEN` log entries
//!   instead of n, which was most of what a replicated put cost over a raw
//!   engine put (BENCHMARKS.md, `bench local`). A superseded dot is
//!   removed from its block by rewriting it, and no dot of a block's range
//!   ever has an entry of its own.
//!
//! Both forms sort by origin, then seq, so a range of the log is still the
//! dots of one origin in seq order.

use super::error::{Error, Result};
use super::keys::{self, LOG_KEY_LEN};
use crate::version::{Dot, NodeId, Seq};
use fjall::{Keyspace, OwnedWriteBatch, Readable};
use serde_bytes::Bytes;

/// Log-2 of [`BLOCK_LEN`].
const BLOCK_BITS: u32 = 4;
/// Own dots per block: small enough that rewriting a block on an overwrite
/// stays cheap, large enough that a batch writes few entries.
pub(crate) const BLOCK_LEN: u64 = 1 << BLOCK_BITS;
/// Last byte of a block key (which is one byte longer than a dot's).
const BLOCK_TAG: u8 = b'b';
/// Length of a block key.
const BLOCK_KEY_LEN: usize = LOG_KEY_LEN + 1;

/// The first seq of the block holding `seq`.
pub(crate) fn block_first(seq: Seq) -> Seq {
    seq & !(BLOCK_LEN - 1)
}

/// The key of the own-dot block starting at `first`.
fn block_key(origin: NodeId, first: Seq) -> [u8; BLOCK_KEY_LEN] {
    let mut k = [0u8; BLOCK_KEY_LEN];
    k[..LOG_KEY_LEN].copy_from_slice(&keys::log_key(Dot::new(origin, first)));
    k[LOG_KEY_LEN] = BLOCK_TAG;
    k
}

/// The log keys of `origin`'s entries holding seqs from `from` on (and
/// possibly a few below it, in the same block).
pub(crate) fn range(origin: NodeId, from: Seq) -> std::ops::RangeInclusive<Vec<u8>> {
    let mut end = vec![0xff; BLOCK_KEY_LEN];
    end[..8].copy_from_slice(&origin.0.to_be_bytes());
    keys::log_key(Dot::new(origin, block_first(from))).to_vec()..=end
}

/// The origin of a log key of either form.
pub(crate) fn origin_of(log_key: &[u8]) -> Option<NodeId> {
    Some(NodeId(u64::from_be_bytes(log_key.get(..8)?.try_into().ok()?)))
}

/// Offsets in a block and the user keys of its current dots, by offset.
type BlockEntries<'a> = Vec<(u8, &'a Bytes)>;

fn encode_block<'a>(entries: impl Iterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let entries: BlockEntries = entries.map(|(off, key)| (off, Bytes::new(key))).collect();
    postcard::to_stdvec(&entries).unwrap_or_else(|_| unreachable!("in-memory encode"))
}

/// Decodes a block's value; `None` unless its offsets ascend within the
/// block and it holds at least one dot.
fn decode_block(value: &[u8]) -> Option<BlockEntries<'_>> {
    let entries: BlockEntries = match postcard::take_from_bytes(value) {
        Ok((entries, [])) => entries,
        _ => return None,
    };
    let ascending = entries.windows(2).all(|w| w[0].0 < w[1].0);
    let in_block = entries.last().is_some_and(|(off, _)| u64::from(*off) < BLOCK_LEN);
    (ascending && in_block).then_some(entries)
}

/// The dots of one stored log entry with their user keys, in seq order;
/// `None` if the entry is malformed.
pub(crate) fn decode_entry<'a>(log_key: &[u8], value: &'a [u8]) -> Option<Vec<(Dot, &'a [u8])>> {
    match log_key.len() {
        LOG_KEY_LEN => Some(vec![(keys::parse_log_key(log_key)?, value)]),
        BLOCK_KEY_LEN if log_key[LOG_KEY_LEN] == BLOCK_TAG => {
            let first = keys::parse_log_key(&log_key[..LOG_KEY_LEN])?;
            if block_first(first.seq) != first.seq {
                return None;
            }
            let entries = decode_block(value)?;
            Some(
                entries
                    .into_iter()
                    .map(|(off, key)| (Dot::new(first.origin, first.seq + u64::from(off)), &**key))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// The user key whose current version is `dot`, if `dot` is in the log.
/// `own` is the store's node id (it decides the entry's form).
pub(crate) fn lookup(
    r: &impl Readable,
    log: &Keyspace,
    own: NodeId,
    dot: Dot,
    corrupt: impl Fn(&str) -> Error,
) -> Result<Option<Vec<u8>>> {
    if dot.origin != own {
        return Ok(r.get(log, keys::log_key(dot))?.map(|k| k.to_vec()));
    }
    if let Some(raw) = r.get(log, block_key(own, block_first(dot.seq)))? {
        let entries = decode_block(&raw).ok_or_else(|| corrupt("malformed change-log block"))?;
        let off = (dot.seq - block_first(dot.seq)) as u8;
        if let Some((_, k)) = entries.iter().find(|(o, _)| *o == off) {
            return Ok(Some(k.to_vec()));
        }
    }
    Ok(r.get(log, keys::log_key(dot))?.map(|k| k.to_vec()))
}

/// The highest seq of `origin` in the log (0 if none).
pub(crate) fn last_seq(log: &Keyspace, origin: NodeId, corrupt: impl Fn(&str) -> Error) -> Result<Seq> {
    let Some(guard) = log.range(range(origin, 0)).next_back() else { return Ok(0) };
    let (k, v) = guard.into_inner()?;
    let dots = decode_entry(&k, &v).ok_or_else(|| corrupt("malformed change-log entry"))?;
    Ok(dots.last().map_or(0, |(d, _)| d.seq))
}

/// Change-log edits of one commit: adds and removals of dots, turned into
/// engine writes by [`LogEdits::write_to`].
pub(crate) struct LogEdits {
    own: NodeId,
    /// The added keys, back to back.
    keys: Vec<u8>,
    edits: Vec<Edit>,
}

/// Add `dot` (with its key's range in `LogEdits::keys`) or remove it.
#[derive(Clone, Copy)]
struct Edit {
    dot: Dot,
    key: Option<(usize, usize)>,
}

impl LogEdits {
    /// No edits, for a store whose node id is `own`.
    pub fn new(own: NodeId) -> Self {
        LogEdits { own, keys: Vec::new(), edits: Vec::new() }
    }

    /// Makes `dot` the current version of `key`.
    pub fn add(&mut self, dot: Dot, key: &[u8]) {
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        self.edits.push(Edit { dot, key: Some((start, self.keys.len())) });
    }

    /// Removes `dot` (superseded).
    pub fn remove(&mut self, dot: Dot) {
        self.edits.push(Edit { dot, key: None });
    }

    /// Adds the edits to `batch` (the last edit of a dot wins). Every own
    /// dot stored so far must be below `fresh`: then all [`BLOCK_LEN`] dots
    /// of an aligned block at or above it, added here, are stored as one
    /// block. Only a block entirely below `fresh` can exist: an own dot of
    /// its range (removed, or added again by a merge) is looked for in it
    /// first, as of now (the caller holds the writer lock, so nothing
    /// changes the log meanwhile); other dots have entries of their own.
    pub fn write_to(
        mut self,
        log: &Keyspace,
        fresh: Seq,
        batch: &mut OwnedWriteBatch,
        corrupt: impl Fn(&str) -> Error,
    ) -> Result<()> {
        // Stable: edits of one dot keep their order. In key order, too:
        // the engine's memtable is a skip list, whose inserts in ascending
        // order revisit the same cached nodes.
        self.edits.sort_by_key(|e| e.dot);
        let mut edits = Vec::with_capacity(self.edits.len());
        for (i, e) in self.edits.iter().enumerate() {
            if self.edits.get(i + 1).is_none_or(|next| next.dot != e.dot) {
                edits.push(*e);
            }
        }
        let key = |r: (usize, usize)| &self.keys[r.0..r.1];
        let mut rest = &edits[..];
        while let Some(e) = rest.first() {
            let first = block_first(e.dot.seq);
            let n = rest.iter().take_while(|x| x.dot.origin == e.dot.origin && block_first(x.dot.seq) == first).count();
            let (group, after) = rest.split_at(n);
            rest = after;
            let own = e.dot.origin == self.own;
            if own && first >= fresh && n as u64 == BLOCK_LEN && group.iter().all(|x| x.key.is_some()) {
                let entries = group.iter().filter_map(|x| Some(((x.dot.seq - first) as u8, key(x.key?))));
                batch.insert(log, &block_key(self.own, first)[..], encode_block(entries));
                continue;
            }
            // No overflow: `first` is aligned.
            let may_exist = own && first + (BLOCK_LEN - 1) < fresh;
            let bkey = block_key(self.own, first);
            let mut block: Option<Vec<(u8, Vec<u8>)>> = None;
            if may_exist {
                if let Some(raw) = log.get(bkey)? {
                    let entries = decode_block(&raw).ok_or_else(|| corrupt("malformed change-log block"))?;
                    block = Some(entries.into_iter().map(|(off, k)| (off, k.to_vec())).collect());
                }
            }
            let mut changed = false;
            for x in group {
                let off = (x.dot.seq - first) as u8;
                let at = block.as_ref().map(|b| b.binary_search_by_key(&off, |e| e.0));
                match (block.as_mut(), at, x.key) {
                    (Some(b), Some(Ok(i)), None) => {
                        b.remove(i);
                        changed = true;
                    }
                    // A dot of an existing block's range lives in the block:
                    // an own write a peer sends back (say, after a restore
                    // from an old backup) joins it, keeping the log in seq order.
                    (Some(b), Some(Ok(i)), Some(r)) => {
                        b[i].1 = key(r).to_vec();
                        changed = true;
                    }
                    (Some(b), Some(Err(i)), Some(r)) => {
                        b.insert(i, (off, key(r).to_vec()));
                        changed = true;
                    }
                    (_, _, None) => batch.remove(log, &keys::log_key(x.dot)[..]),
                    (_, _, Some(r)) => batch.insert(log, &keys::log_key(x.dot)[..], key(r)),
                }
            }
            match block {
                Some(b) if changed && b.is_empty() => batch.remove(log, &bkey[..]),
                Some(b) if changed => {
                    batch.insert(log, &bkey[..], encode_block(b.iter().map(|(o, k)| (*o, k.as_slice()))))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_roundtrip_and_sort_with_their_origin() {
        let own = NodeId(7);
        let k = block_key(own, 32);
        let v = encode_block([(0u8, &b"a"[..]), (5, b""), (15, b"\xff")].into_iter());
        let dots = decode_entry(&k, &v).expect("decodes");
        assert_eq!(
            dots,
            vec![(Dot::new(own, 32), &b"a"[..]), (Dot::new(own, 37), &b""[..]), (Dot::new(own, 47), &b"\xff"[..])]
        );
        let single = keys::log_key(Dot::new(NodeId(3), 9));
        assert_eq!(decode_entry(&single, b"key"), Some(vec![(Dot::new(NodeId(3), 9), &b"key"[..])]));
        assert!(
            range(own, 33).contains(&k.to_vec()) && range(own, 0).contains(&keys::log_key(Dot::new(own, 0)).to_vec())
        );
        assert!(range(NodeId(6), 0).end() < range(own, 0).start());
        assert_eq!(origin_of(&k), Some(own));
    }

    #[test]
    fn malformed_entries_do_not_decode() {
        let own = NodeId(7);
        let unaligned = {
            let mut k = block_key(own, 32);
            k[15] = 33;
            k
        };
        let v = encode_block([(1u8, &b"a"[..])].into_iter());
        assert!(decode_entry(&unaligned, &v).is_none());
        let k = block_key(own, 32);
        assert!(decode_entry(&k, &encode_block([(3u8, &b"a"[..]), (2, b"b")].into_iter())).is_none());
        assert!(decode_entry(&k, &encode_block([(16u8, &b"a"[..])].into_iter())).is_none());
        assert!(decode_entry(&k, &encode_block(std::iter::empty())).is_none());
        assert!(decode_entry(&k, b"\x01").is_none());
        assert!(decode_entry(b"short", b"x").is_none());
    }
}
