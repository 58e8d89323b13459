//! The merge of a remote record into the local one: a join on the lattice
//! of version sets, so applying records is idempotent, commutative and
//! associative (SPEC invariant 4).
//!
//! 1. Take the union of both version sets (dedup by dot).
//! 2. Drop every version some other version's causal context covers:
//!    causally newer always wins, and the policy is never asked.
//! 3. What is left is pairwise concurrent. Last-writer-wins keeps only the
//!    greatest; the other policies keep all of them as siblings and pick the
//!    visible one with a deterministic function of the set.
//!
//! The result depends only on the set of writes seen, never on the order or
//! number of deliveries.

use super::policy::ConflictPolicy;
use super::record::{Record, Version};
use crate::version::{Dot, VersionVector};
use std::collections::HashSet;

/// What merging one remote record did.
#[derive(Debug)]
pub(crate) struct Merged {
    /// The new record, or `None` when the local record is unchanged.
    pub record: Option<Record>,
    /// Set when this merge met versions concurrent with each other, at least
    /// one of them new to this node.
    pub conflict: Option<ConflictDots>,
}

/// The versions involved in a detected conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConflictDots {
    pub winner: Dot,
    pub losers: Vec<Dot>,
    /// Concurrent versions that this node had not held before.
    pub incoming: Vec<Dot>,
}

/// Joins `remote` into `local` under `policy`.
pub(crate) fn merge(key: &[u8], local: Option<&Record>, remote: Record, policy: &ConflictPolicy) -> Merged {
    let held = local.map_or(0, |l| l.versions().len());
    let mut all: Vec<Version> = local.map(|l| l.versions().to_vec()).unwrap_or_default();
    for v in remote.into_versions() {
        if !all.iter().any(|w| w.dot == v.dot) {
            all.push(v);
        }
    }
    if local.is_some() && all.len() == held {
        return Merged { record: None, conflict: None };
    }
    let frontier: Vec<Version> =
        all.iter().filter(|v| !all.iter().any(|w| w.dot != v.dot && w.supersedes(v))).cloned().collect();
    if frontier.is_empty() {
        // Versions that each claim to have seen another, in a cycle: no
        // history of real writes does that. Keep what is stored.
        return Merged { record: None, conflict: None };
    }
    let Some(local) = local else {
        return Merged { record: Some(normalize(key, frontier, policy)), conflict: None };
    };
    let dots: Vec<Dot> = frontier.iter().map(|v| v.dot).collect();
    let incoming: Vec<Dot> = dots.iter().copied().filter(|d| !local.has_dot(*d)).collect();
    let merged = normalize(key, frontier, policy);
    let conflict = (!incoming.is_empty() && dots.len() > 1).then(|| {
        let winner = merged.winner().dot;
        ConflictDots { winner, losers: dots.into_iter().filter(|d| *d != winner).collect(), incoming }
    });
    let record = (merged != *local).then_some(merged);
    Merged { record, conflict }
}

/// Concurrent versions already counted in a conflict that the node's
/// vector does not cover yet. Under last-writer-wins a losing version
/// leaves no trace in the record, so one delivered again before a
/// catch-up completes (two peers pushing the same record) would otherwise
/// count as a second conflict; once covered, the vector tells instead.
#[derive(Debug, Default)]
pub(crate) struct CountedConflicts {
    dots: HashSet<Dot>,
}

/// Dots remembered at most; past it the covered ones are dropped, and if
/// that is not enough, all of them (a repeat may then count again).
const COUNTED_CONFLICTS_MAX: usize = 4096;

impl CountedConflicts {
    /// Whether `conflict` brings a version neither covered by `vv` nor
    /// counted before; if so, remembers its new versions.
    pub fn count(&mut self, conflict: &ConflictDots, vv: &VersionVector) -> bool {
        let fresh = |d: &Dot| !vv.contains(*d) && !self.dots.contains(d);
        if !conflict.incoming.iter().any(fresh) {
            return false;
        }
        if self.dots.len() + conflict.incoming.len() > COUNTED_CONFLICTS_MAX {
            self.dots.retain(|d| !vv.contains(*d));
            if self.dots.len() + conflict.incoming.len() > COUNTED_CONFLICTS_MAX {
                self.dots.clear();
            }
        }
        self.dots.extend(conflict.incoming.iter().filter(|d| !vv.contains(**d)));
        true
    }
}

/// Reduces a non-empty set of pairwise-concurrent versions to a record.
fn normalize(key: &[u8], mut frontier: Vec<Version>, policy: &ConflictPolicy) -> Record {
    frontier.sort_by_key(Version::order_key);
    if policy.collapses() || frontier.len() == 1 {
        let last = frontier.pop().unwrap_or_else(|| unreachable!("frontier is never empty"));
        return Record::single(last);
    }
    let winner = frontier[policy.pick(key, &frontier)].dot;
    Record::from_frontier(frontier, winner).unwrap_or_else(|| unreachable!("winner taken from frontier"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use crate::storage::policy::Choice;
    use crate::version::{NodeId, VersionVector};

    fn ver(origin: u64, seq: u64, hlc: u64, deps: &[(u64, u64)], val: &str) -> Version {
        Version {
            dot: Dot::new(NodeId(origin), seq),
            hlc: Hlc(hlc),
            deps: deps.iter().map(|&(o, s)| (NodeId(o), s)).collect::<VersionVector>(),
            value: Some(val.as_bytes().to_vec()),
        }
    }

    #[test]
    fn causally_newer_wins_without_conflict() {
        let old = Record::single(ver(1, 1, 50, &[], "old"));
        let new = Record::single(ver(2, 1, 10, &[(1, 1)], "new"));
        let m = merge(b"k", Some(&old), new, &ConflictPolicy::LastWriterWins);
        assert_eq!(m.record.expect("changed").value(), Some(&b"new"[..]));
        assert!(m.conflict.is_none());
        let back =
            merge(b"k", Some(&Record::single(ver(2, 1, 10, &[(1, 1)], "new"))), old, &ConflictPolicy::LastWriterWins);
        assert!(back.record.is_none() && back.conflict.is_none(), "older never replaces newer");
    }

    #[test]
    fn concurrent_lww_picks_higher_hlc_and_reports() {
        let a = Record::single(ver(1, 1, 20, &[], "a"));
        let b = Record::single(ver(2, 1, 30, &[], "b"));
        let m = merge(b"k", Some(&a), b.clone(), &ConflictPolicy::LastWriterWins);
        let rec = m.record.expect("changed");
        assert_eq!(rec.value(), Some(&b"b"[..]));
        let c = m.conflict.expect("conflict");
        assert_eq!(c.winner, Dot::new(NodeId(2), 1));
        assert_eq!(c.losers, vec![Dot::new(NodeId(1), 1)]);
        let m2 = merge(b"k", Some(&b), a, &ConflictPolicy::LastWriterWins);
        assert!(m2.record.is_none(), "same outcome from the other side");
        assert!(m2.conflict.is_some());
    }

    /// Versions that claim to have seen each other (only a faulty or hostile
    /// peer sends them) leave the stored record as it is instead of
    /// emptying it; duplicates and superseded versions of a record for a new
    /// key are dropped as for a key that holds one.
    #[test]
    fn malformed_remote_records_never_empty_a_record() {
        let local = Record::single(ver(1, 1, 20, &[(2, 1)], "local"));
        let cyclic = Record::single(ver(2, 1, 30, &[(1, 1)], "remote"));
        for policy in [ConflictPolicy::LastWriterWins, ConflictPolicy::resolver(|_, _, _| Choice::First)] {
            let m = merge(b"k", Some(&local), cyclic.clone(), &policy);
            assert!(m.record.is_none() && m.conflict.is_none());
        }
        let a = ver(1, 1, 20, &[], "a");
        let newer = ver(2, 1, 30, &[(1, 1)], "newer");
        let frontier = Record::from_frontier(vec![a.clone(), newer.clone(), a], Dot::new(NodeId(2), 1));
        let keep = ConflictPolicy::resolver(|_, _, _| Choice::First);
        let fresh = merge(b"k", None, frontier.expect("winner present"), &keep).record.expect("stored");
        assert_eq!(fresh.versions(), &[newer][..]);
    }

    #[test]
    fn resolver_sees_only_concurrent_pairs_and_siblings_are_kept() {
        let policy =
            ConflictPolicy::resolver(
                |_, a, _b| {
                    if a.value.as_deref() == Some(b"keep") {
                        Choice::First
                    } else {
                        Choice::Second
                    }
                },
            );
        let a = Record::single(ver(1, 1, 20, &[], "keep"));
        let b = Record::single(ver(2, 1, 30, &[], "other"));
        let rec = merge(b"k", Some(&a), b, &policy).record.expect("changed");
        assert_eq!(rec.versions().len(), 2);
        assert_eq!(rec.value(), Some(&b"keep"[..]));
    }

    #[test]
    fn a_conflict_counts_once_until_its_versions_are_covered() {
        let (a, b) = (Dot::new(NodeId(1), 1), Dot::new(NodeId(2), 1));
        let conflict = ConflictDots { winner: a, losers: vec![b], incoming: vec![b] };
        let mut counted = CountedConflicts::default();
        let mut vv = VersionVector::new();
        assert!(counted.count(&conflict, &vv));
        assert!(!counted.count(&conflict, &vv), "counted twice");
        vv.raise(NodeId(2), 1);
        assert!(!counted.count(&conflict, &vv), "covered");
        // Past the bound, covered dots make room first.
        for seq in 2..2 + COUNTED_CONFLICTS_MAX as u64 {
            let d = Dot::new(NodeId(3), seq);
            assert!(counted.count(&ConflictDots { winner: a, losers: vec![d], incoming: vec![d] }, &vv));
        }
        assert!(counted.dots.len() <= COUNTED_CONFLICTS_MAX);
    }
}
