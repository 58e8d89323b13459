//! Conflict policies: how a node picks the visible value among concurrent
//! writes. Every node of a cluster must run the same policy.

use super::record::Version;
use crate::version::NodeId;
use std::fmt;
use std::sync::Arc;

/// Which of two concurrent versions a resolver keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Keep the first argument.
    First,
    /// Keep the second argument.
    Second,
}

/// A user resolver: `(key, a, b) -> choice`, called only with two versions
/// that are truly concurrent (neither causally saw the other). `a` and `b`
/// arrive in canonical order (`a` has the lower HLC, ties by node id), so
/// every node makes the same calls; the function must be deterministic.
pub type ResolverFn = dyn Fn(&[u8], &Version, &Version) -> Choice + Send + Sync;

/// How concurrent writes to one key are settled.
#[derive(Clone, Default)]
pub enum ConflictPolicy {
    /// Highest hybrid-logical-clock timestamp wins; ties go to the higher
    /// node id. Losers are dropped at once.
    #[default]
    LastWriterWins,
    /// Versions written by these nodes win over concurrent versions of
    /// unlisted nodes; earlier in the list ranks higher (server wins).
    /// Among equal rank, last-writer-wins. Concurrent versions are kept as
    /// siblings until a later write supersedes them.
    PreferNodes(Vec<NodeId>),
    /// A user function picks the winner among concurrent versions, folded
    /// over them in canonical order. Concurrent versions are kept as
    /// siblings so the choice is the same on every node.
    Resolver(Arc<ResolverFn>),
}

impl ConflictPolicy {
    /// A policy calling `f` for concurrent writes.
    pub fn resolver(f: impl Fn(&[u8], &Version, &Version) -> Choice + Send + Sync + 'static) -> Self {
        ConflictPolicy::Resolver(Arc::new(f))
    }

    /// A fingerprint peers compare in the handshake: nodes with different
    /// policies would not converge. Resolvers cannot be compared by value,
    /// so all resolvers share one fingerprint.
    pub fn fingerprint(&self) -> u64 {
        match self {
            ConflictPolicy::LastWriterWins => 1,
            ConflictPolicy::PreferNodes(nodes) => {
                nodes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, n| (h ^ n.0).wrapping_mul(0x0100_0000_01b3)).max(4)
            }
            ConflictPolicy::Resolver(_) => 3,
        }
    }

    /// Whether losers can be discarded immediately. True only for policies
    /// whose order is total and agrees with causality, where a discarded
    /// loser could never win again.
    pub(crate) fn collapses(&self) -> bool {
        matches!(self, ConflictPolicy::LastWriterWins)
    }

    /// Index of the winner among `frontier` (non-empty, pairwise concurrent,
    /// in canonical order).
    pub(crate) fn pick(&self, key: &[u8], frontier: &[Version]) -> usize {
        let last = frontier.len() - 1;
        match self {
            ConflictPolicy::LastWriterWins => last,
            ConflictPolicy::PreferNodes(ranked) => {
                let rank = |v: &Version| ranked.iter().position(|n| *n == v.dot.origin).map_or(0, |p| ranked.len() - p);
                // Canonical order already breaks ties by HLC and node id.
                (0..frontier.len()).max_by_key(|&i| (rank(&frontier[i]), i)).unwrap_or(last)
            }
            ConflictPolicy::Resolver(f) => {
                let mut acc = 0;
                for i in 1..frontier.len() {
                    if f(key, &frontier[acc], &frontier[i]) == Choice::Second {
                        acc = i;
                    }
                }
                acc
            }
        }
    }
}

impl fmt::Debug for ConflictPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictPolicy::LastWriterWins => f.write_str("LastWriterWins"),
            ConflictPolicy::PreferNodes(n) => f.debug_tuple("PreferNodes").field(n).finish(),
            ConflictPolicy::Resolver(_) => f.write_str("Resolver(..)"),
        }
    }
}
