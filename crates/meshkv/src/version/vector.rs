//! Version vectors: origin → highest sequence number covered.

use super::{Dot, NodeId, Seq};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Origins a node's own version vector may name, at most: far beyond any
/// cluster's history, and it bounds what a hostile peer can make a node
/// hold (and send in every digest). Applying a peer's vector that would
/// take it past this is refused (`StorageError::TooManyOrigins`).
pub const MAX_ORIGINS: usize = 1 << 16;

/// A version vector, kept as a list sorted by origin (clusters are small, so
/// this beats a map in size and speed). Missing origins count as 0.
///
/// Decoding accepts only the canonical form — origins strictly ascending,
/// no zero entry — since lookups binary-search the list and a shuffled one
/// would make every insert quadratic. (A record's causal context is a
/// vector too, and the parse of encoded records checks the same form.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct VersionVector(Vec<(NodeId, Seq)>);

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct("VersionVector", Canonical)
    }
}

/// Decodes the canonical form (see [`VersionVector`]).
struct Canonical;

impl<'de> serde::de::Visitor<'de> for Canonical {
    type Value = VersionVector;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("(origin, seq) pairs, origins strictly ascending, seqs above 0")
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The declared length is the sender's word: reserve little up front.
        let mut out: Vec<(NodeId, Seq)> = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some((origin, s)) = seq.next_element::<(NodeId, Seq)>()? {
            if s == 0 || out.last().is_some_and(|(prev, _)| *prev >= origin) {
                return Err(serde::de::Error::invalid_value(
                    serde::de::Unexpected::Other("a non-canonical entry"),
                    &self,
                ));
            }
            out.push((origin, s));
        }
        Ok(VersionVector(out))
    }
}

impl VersionVector {
    /// The empty vector (covers nothing).
    pub fn new() -> Self {
        VersionVector(Vec::new())
    }

    /// The highest seq covered for `origin` (0 if none).
    pub fn get(&self, origin: NodeId) -> Seq {
        match self.0.binary_search_by_key(&origin, |e| e.0) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Raises the entry for `origin` to at least `seq`.
    pub fn raise(&mut self, origin: NodeId, seq: Seq) {
        if seq == 0 {
            return;
        }
        match self.0.binary_search_by_key(&origin, |e| e.0) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(seq),
            Err(i) => self.0.insert(i, (origin, seq)),
        }
    }

    /// Whether `dot` is covered (its seq is at or below this vector's entry).
    pub fn contains(&self, dot: Dot) -> bool {
        self.get(dot.origin) >= dot.seq
    }

    /// Pointwise maximum with `other` (one merge of the two sorted lists).
    pub fn join(&mut self, other: &VersionVector) {
        if self.dominates(other) {
            return;
        }
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        let mut out = Vec::with_capacity(self.0.len().max(other.0.len()));
        loop {
            let next = match (a.peek().copied(), b.peek().copied()) {
                (Some(&x), Some(&y)) if x.0 == y.0 => {
                    a.next();
                    b.next();
                    (x.0, x.1.max(y.1))
                }
                (Some(&x), Some(&y)) if x.0 < y.0 => {
                    a.next();
                    x
                }
                (_, Some(&y)) => {
                    b.next();
                    y
                }
                (Some(&x), None) => {
                    a.next();
                    x
                }
                (None, None) => break,
            };
            out.push(next);
        }
        self.0 = out;
    }

    /// Whether every entry of `other` is covered by `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|&(o, s)| self.get(o) >= s)
    }

    /// How many writes `self` covers beyond `other` (a peer's lag behind
    /// us), counting gaps; saturates.
    pub fn beyond(&self, other: &VersionVector) -> u64 {
        self.0.iter().map(|&(o, s)| s.saturating_sub(other.get(o))).fold(0, u64::saturating_add)
    }

    /// `(origin, seq)` pairs in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, Seq)> + '_ {
        self.0.iter().copied()
    }

    /// Number of origins with a non-zero entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the vector covers nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sum of all entries: how many writes the vector names, counting gaps.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|e| e.1).sum()
    }
}

impl FromIterator<(NodeId, Seq)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, Seq)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (o, s) in iter {
            vv.raise(o, s);
        }
        vv
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (o, s)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{o}:{s}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_merges_in_one_pass() {
        let (a, b, c, d) = (NodeId(1), NodeId(2), NodeId(3), NodeId(4));
        let mut x: VersionVector = [(a, 3), (c, 1)].into_iter().collect();
        x.join(&[(a, 1), (b, 4), (c, 2), (d, 9)].into_iter().collect());
        assert_eq!(x.iter().collect::<Vec<_>>(), vec![(a, 3), (b, 4), (c, 2), (d, 9)]);
        x.join(&VersionVector::new());
        assert_eq!(x.len(), 4);
    }

    #[test]
    fn only_the_canonical_form_decodes() {
        let decode = |pairs: &[(u64, u64)]| {
            // Encoded as the list it is: the derived form of the newtype.
            let bytes = postcard::to_allocvec(pairs).expect("encode");
            postcard::from_bytes::<VersionVector>(&bytes)
        };
        let ok = decode(&[(1, 5), (2, 1), (9, 3)]).expect("canonical");
        assert_eq!(ok.get(NodeId(9)), 3);
        assert!(decode(&[(2, 1), (1, 5)]).is_err(), "descending origins");
        assert!(decode(&[(1, 1), (1, 2)]).is_err(), "an origin twice");
        assert!(decode(&[(1, 0)]).is_err(), "a zero entry");
        let vv: VersionVector = [(NodeId(3), 7), (NodeId(1), 2)].into_iter().collect();
        let round = postcard::from_bytes::<VersionVector>(&postcard::to_allocvec(&vv).expect("encode"));
        assert_eq!(round.expect("round trip"), vv);
    }

    #[test]
    fn beyond_counts_what_the_other_misses() {
        let (a, b, c) = (NodeId(1), NodeId(2), NodeId(3));
        let ours: VersionVector = [(a, 5), (b, 2)].into_iter().collect();
        let peer: VersionVector = [(a, 3), (b, 4), (c, 9)].into_iter().collect();
        assert_eq!(ours.beyond(&peer), 2, "a's 4 and 5; b and c are ahead on the peer");
        assert_eq!(ours.beyond(&VersionVector::new()), 7);
        assert_eq!(ours.beyond(&ours), 0);
    }

    #[test]
    fn raise_join_and_dominates() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut x: VersionVector = [(a, 3)].into_iter().collect();
        let y: VersionVector = [(a, 1), (b, 4)].into_iter().collect();
        assert!(!x.dominates(&y));
        x.join(&y);
        assert_eq!(x.get(a), 3);
        assert_eq!(x.get(b), 4);
        assert!(x.dominates(&y));
        assert!(x.contains(Dot::new(b, 4)) && !x.contains(Dot::new(b, 5)));
        x.raise(a, 2);
        assert_eq!(x.get(a), 3);
    }
}
