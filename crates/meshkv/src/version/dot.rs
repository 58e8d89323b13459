//! Node ids and dots: the identity of every write.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Per-origin sequence number; the first write of a node has seq 1.
pub type Seq = u64;

/// A node's random 64-bit identity, created on first open and stored in its
/// data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random id (never 0, which is reserved as "unknown").
    pub fn random() -> Self {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return NodeId(id);
            }
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(NodeId)
    }
}

/// The identity of one write: its origin node and that node's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that accepted the write.
    pub origin: NodeId,
    /// The origin's sequence number for it.
    pub seq: Seq,
}

impl Dot {
    /// Builds a dot.
    pub fn new(origin: NodeId, seq: Seq) -> Self {
        Dot { origin, seq }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}
