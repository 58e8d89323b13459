//! Version vectors: origin → highest sequence number covered.

use super::{Dot, NodeId, Seq};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A version vector, kept as a list sorted by origin (clusters are small, so
/// this beats a map in size and speed). Missing origins count as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(Vec<(NodeId, Seq)>);

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

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for &(origin, seq) in &other.0 {
            self.raise(origin, seq);
        }
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
