//! Identity and causality: node ids, dots and version vectors.

mod dot;
mod vector;

pub use dot::{Dot, NodeId, Seq};
pub use vector::{VersionVector, MAX_ORIGINS};
