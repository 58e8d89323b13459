//! Group commit: consecutive write requests of one pipelined burst gathered
//! so they can be applied by a single `Db::write`, and the dot of each
//! request worked out from the dot of the whole batch.

use crate::protocol::request::BatchOp;
use crate::version::Dot;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;

/// A group stops taking requests at this many operations (below the batch
/// size from which `Db::write` reads old records on several threads, which
/// measured slower for pipelined puts on 2 cores; see BENCHMARKS.md)...
const MAX_OPS: usize = 255;
/// ...or this many bytes of keys and values (a single larger request still
/// forms a group of its own).
const MAX_BYTES: usize = 4 << 20;

/// A write request waiting in a [`WriteGroup`].
pub(super) struct Queued {
    pub id: u64,
    pub ops: Vec<BatchOp>,
}

/// Write requests to commit together. No two of them touch the same key or
/// share a request id, so their operations, concatenated, take consecutive
/// sequence numbers in order and each request's own last dot follows from
/// the batch's last dot ([`WriteGroup::dots`]). A request that repeats a key
/// itself is only ever grouped alone.
pub(super) struct WriteGroup {
    requests: Vec<Queued>,
    /// Hashes of the keys and request ids in the group: a collision only
    /// starts a new group early.
    keys: HashSet<u64>,
    ids: HashSet<u64>,
    hasher: RandomState,
    ops: usize,
    bytes: usize,
    /// The group holds a request that repeats a key: it takes no other.
    closed: bool,
}

impl WriteGroup {
    pub fn new() -> Self {
        WriteGroup {
            requests: Vec::new(),
            keys: HashSet::new(),
            ids: HashSet::new(),
            hasher: RandomState::new(),
            ops: 0,
            bytes: 0,
            closed: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Adds request `id` if it can join the group; otherwise hands it back
    /// (commit the group, then add it to the empty group, which always
    /// takes it).
    pub fn offer(&mut self, id: u64, ops: Vec<BatchOp>) -> Result<(), Vec<BatchOp>> {
        let bytes: usize = ops.iter().map(|op| key_of(op).len() + value_len(op)).sum();
        let hashes: Vec<u64> = ops.iter().map(|op| self.hasher.hash_one(key_of(op))).collect();
        let mut own = HashSet::with_capacity(hashes.len());
        let repeats = !hashes.iter().all(|h| own.insert(*h));
        if !self.requests.is_empty() {
            let fits = self.ops + ops.len() <= MAX_OPS && self.bytes + bytes <= MAX_BYTES;
            let shared = self.ids.contains(&id) || hashes.iter().any(|h| self.keys.contains(h));
            if self.closed || repeats || !fits || shared {
                return Err(ops);
            }
        }
        self.closed = repeats;
        self.keys.extend(hashes);
        self.ids.insert(id);
        self.ops += ops.len();
        self.bytes += bytes;
        self.requests.push(Queued { id, ops });
        Ok(())
    }

    /// Empties the group, returning its requests in arrival order.
    pub fn take(&mut self) -> Vec<Queued> {
        self.keys.clear();
        self.ids.clear();
        self.ops = 0;
        self.bytes = 0;
        self.closed = false;
        std::mem::take(&mut self.requests)
    }
}

/// The dot of each applied request of a group, given where each one's
/// operations end in the batch (`ends`, cumulative counts), the batch's
/// length and the dot `Db::write` returned for it. A lone request gets
/// `last` itself (it may repeat keys, which the store collapses).
pub(super) fn dots(ends: &[usize], len: usize, last: Dot) -> impl Iterator<Item = Dot> + '_ {
    let lone = ends.len() == 1;
    ends.iter().map(move |&end| if lone { last } else { Dot::new(last.origin, last.seq - (len - end) as u64) })
}

fn key_of(op: &BatchOp) -> &[u8] {
    match op {
        BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
    }
}

fn value_len(op: &BatchOp) -> usize {
    match op {
        BatchOp::Put { value, .. } => value.len(),
        BatchOp::Delete { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NodeId;

    fn put(key: &str) -> BatchOp {
        BatchOp::Put { key: key.into(), value: b"v".to_vec() }
    }

    #[test]
    fn a_repeated_key_or_id_starts_a_new_group() {
        let mut g = WriteGroup::new();
        assert!(g.offer(1, vec![put("a"), put("b")]).is_ok());
        assert!(g.offer(2, vec![put("c")]).is_ok());
        assert!(g.offer(3, vec![put("b")]).is_err(), "key b is in the group");
        assert!(g.offer(2, vec![put("d")]).is_err(), "id 2 is in the group");
        assert!(g.offer(4, vec![put("e"), put("e")]).is_err(), "repeats its own key");
        assert_eq!(g.take().iter().map(|q| q.id).collect::<Vec<_>>(), [1, 2]);
        assert!(g.offer(4, vec![put("e"), put("e")]).is_ok(), "an empty group takes anything");
        assert!(g.offer(5, vec![put("f")]).is_err(), "a request repeating a key stays alone");
    }

    #[test]
    fn a_group_is_bounded() {
        let mut g = WriteGroup::new();
        let big = |n: usize| (0..n).map(|i| put(&format!("k{n}/{i}"))).collect::<Vec<_>>();
        assert!(g.offer(1, big(MAX_OPS + 5)).is_ok(), "one oversized request forms its own group");
        assert!(g.offer(2, big(1)).is_err());
        g.take();
        assert!(g.offer(3, big(MAX_OPS - 1)).is_ok());
        assert!(g.offer(4, big(1)).is_ok());
        assert!(g.offer(5, big(2)).is_err());
    }

    #[test]
    fn each_request_gets_the_dot_of_its_last_op() {
        let last = Dot::new(NodeId(9), 20);
        // Three requests of 2, 0 and 3 ops: batch positions 1-2, none, 3-5.
        let got: Vec<u64> = dots(&[2, 5], 5, last).map(|d| d.seq).collect();
        assert_eq!(got, [17, 20]);
        assert_eq!(dots(&[3], 3, last).next(), Some(last));
    }
}
