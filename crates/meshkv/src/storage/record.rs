//! Records: what the data keyspace stores for one user key.
//!
//! A record is the set of *current versions* of a key: versions that no other
//! known write causally supersedes. Under last-writer-wins it always holds
//! exactly one version; under the sibling-keeping policies it holds the
//! concurrent frontier (at most one version per origin) and the index of the
//! version that reads return.

use crate::clock::Hlc;
use crate::version::{Dot, VersionVector};
use serde::{Deserialize, Serialize};

/// Leading byte of every encoded record; bump on incompatible change.
pub(super) const RECORD_FORMAT: u8 = 1;

/// One write of one key: its identity, timestamp, causal context and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Origin and sequence number of the write.
    pub dot: Dot,
    /// Hybrid logical clock at the origin when written.
    pub hlc: Hlc,
    /// Causal context: every write of this key the origin had seen when it
    /// wrote this one. A version whose dot is covered here is superseded.
    pub deps: VersionVector,
    /// The value, or `None` for a delete (tombstone).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

impl Version {
    /// Whether `self` causally supersedes `other`.
    pub fn supersedes(&self, other: &Version) -> bool {
        self.deps.contains(other.dot)
    }

    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Canonical order used wherever nodes must agree on an order: by HLC,
    /// then origin, then seq.
    pub(crate) fn order_key(&self) -> (Hlc, crate::version::NodeId, u64) {
        (self.hlc, self.dot.origin, self.dot.seq)
    }
}

/// The stored state of one key. Deserializing refuses a record without
/// versions or whose winner is not one of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RecordFields")]
pub struct Record {
    /// Current versions, pairwise concurrent, in canonical order.
    versions: Vec<Version>,
    /// Index of the version that reads return.
    winner: u32,
}

/// [`Record`]'s fields as encoded, before they are checked.
#[derive(Deserialize)]
struct RecordFields {
    versions: Vec<Version>,
    winner: u32,
}

impl TryFrom<RecordFields> for Record {
    type Error = &'static str;

    fn try_from(f: RecordFields) -> Result<Self, Self::Error> {
        check_shape(f.versions.len(), f.winner)?;
        Ok(Record { versions: f.versions, winner: f.winner })
    }
}

/// Whether `versions` versions with winner index `winner` can be a record.
pub(super) fn check_shape(versions: usize, winner: u32) -> Result<(), &'static str> {
    if versions == 0 {
        return Err("a record without versions");
    }
    if winner as usize >= versions {
        return Err("a record whose winner is not one of its versions");
    }
    Ok(())
}

impl Record {
    /// A record holding one version.
    pub fn single(version: Version) -> Self {
        Record { versions: vec![version], winner: 0 }
    }

    /// Builds a record from concurrent versions (sorted here) and the dot of
    /// the winner. Returns `None` if `versions` is empty or lacks `winner`.
    pub(crate) fn from_frontier(mut versions: Vec<Version>, winner: Dot) -> Option<Self> {
        versions.sort_by_key(Version::order_key);
        let idx = versions.iter().position(|v| v.dot == winner)?;
        Some(Record { versions, winner: idx as u32 })
    }

    /// The version reads return.
    pub fn winner(&self) -> &Version {
        &self.versions[self.winner as usize]
    }

    /// All current versions: more than one only while concurrent writes
    /// are kept as siblings.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// Moves the versions out.
    pub(crate) fn into_versions(self) -> Vec<Version> {
        self.versions
    }

    /// The value reads return (`None` if the winner is a tombstone).
    pub fn value(&self) -> Option<&[u8]> {
        self.winner().value.as_deref()
    }

    /// Moves the winning value out.
    pub fn into_value(mut self) -> Option<Vec<u8>> {
        let w = self.winner as usize;
        self.versions.swap_remove(w).value
    }

    /// Dots of all current versions (one change-log entry each).
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.versions.iter().map(|v| v.dot)
    }

    /// Whether `dot` is one of the current versions.
    pub fn has_dot(&self, dot: Dot) -> bool {
        self.versions.iter().any(|v| v.dot == dot)
    }

    /// The causal context a new local write of this key must carry: every
    /// current version and everything they superseded.
    pub fn context(&self) -> VersionVector {
        let mut ctx = VersionVector::new();
        for v in &self.versions {
            ctx.join(&v.deps);
            ctx.raise(v.dot.origin, v.dot.seq);
        }
        ctx
    }

    /// Highest HLC among the versions.
    pub fn max_hlc(&self) -> Hlc {
        self.versions.iter().map(|v| v.hlc).max().unwrap_or_default()
    }

    /// Approximate encoded size in bytes, for batching decisions.
    pub fn encoded_len_hint(&self) -> usize {
        self.versions.iter().map(|v| 24 + v.deps.len() * 10 + v.value.as_ref().map_or(0, Vec::len)).sum()
    }

    /// Encodes for storage and the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint() + 8);
        self.encode_into(&mut out);
        out
    }

    /// Encodes into `out` (cleared first), reusing its allocation.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(RECORD_FORMAT);
        // Serializing plain structs into a Vec cannot fail.
        let buf = postcard::to_extend(self, std::mem::take(out)).unwrap_or_else(|_| unreachable!("in-memory encode"));
        *out = buf;
    }

    /// Decodes bytes produced by [`Record::encode`]; `None` if they are not a
    /// well-formed record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&format, body) = bytes.split_first()?;
        if format != RECORD_FORMAT {
            return None;
        }
        postcard::from_bytes(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NodeId;

    fn v(origin: u64, seq: u64, value: Option<&[u8]>) -> Version {
        Version {
            dot: Dot::new(NodeId(origin), seq),
            hlc: Hlc::new(1000 + seq, 0),
            deps: [(NodeId(9), 3)].into_iter().collect(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn encode_decode_roundtrip() {
        let r = Record::from_frontier(vec![v(2, 5, Some(b"x")), v(1, 4, None)], Dot::new(NodeId(2), 5))
            .expect("winner present");
        let back = Record::decode(&r.encode()).expect("decodes");
        assert_eq!(back, r);
        assert_eq!(back.value(), Some(&b"x"[..]));
        assert_eq!(back.versions()[0].dot.seq, 4, "canonical order by hlc");
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(Record::decode(b"").is_none());
        assert!(Record::decode(b"\x09abc").is_none());
        assert!(Record::decode(&[RECORD_FORMAT, 0, 0]).is_none(), "no versions");
        let mut bytes = Record::single(v(1, 1, Some(b"v"))).encode();
        bytes.truncate(bytes.len() - 1);
        assert!(Record::decode(&bytes).is_none());
    }

    #[test]
    fn context_covers_versions_and_their_deps() {
        let r = Record::single(v(1, 7, Some(b"a")));
        let ctx = r.context();
        assert_eq!(ctx.get(NodeId(1)), 7);
        assert_eq!(ctx.get(NodeId(9)), 3);
    }
}
