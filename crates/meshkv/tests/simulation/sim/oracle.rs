//! The checks: the coverage invariant during the run, and after healing
//! the comparison of every node with the oracle.

use super::Sim;
use crate::params::{resolve, Policy};
use meshkv::storage::{Choice, Version};
use meshkv::{Db, Dot, Hlc, NodeId, Record, VersionVector};
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

fn order_key(v: &Version) -> (Hlc, NodeId, u64) {
    (v.hlc, v.dot.origin, v.dot.seq)
}

impl Sim {
    /// ALGORITHM.md I3: `vv[o] >= s` means every write of `o` up to `s` is
    /// held here or dominated (superseded, or beaten under LWW).
    pub(super) fn check_coverage(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(db) = &node.db {
                check_coverage(i, db, &self.writes, matches!(self.p.policy, Policy::Lww));
            }
        }
    }

    /// Whether the oracle demands write `w`: its origin's store is still
    /// there, or a remaining store held it when the origin's was lost.
    pub(super) fn demanded(&self, w: &Version) -> bool {
        !self.lost.contains(&w.dot.origin) || self.kept.contains(&w.dot)
    }

    /// The oracle: the record every node must hold for `key` after healing.
    fn expected(&self, key: &str) -> Option<(Vec<Version>, Dot)> {
        let all: Vec<&Version> =
            self.writes.get(key).map(|ws| ws.iter().filter(|w| self.demanded(w)).collect()).unwrap_or_default();
        let mut frontier: Vec<Version> = all
            .iter()
            .filter(|w| !all.iter().any(|o| o.dot != w.dot && o.deps.contains(w.dot)))
            .map(|w| (*w).clone())
            .collect();
        frontier.sort_by_key(order_key);
        let last = frontier.last()?.clone();
        match &self.p.policy {
            Policy::Lww => {
                let max = all.iter().copied().max_by_key(|v| order_key(v)).expect("non-empty");
                assert_eq!(
                    max, &last,
                    "{key:?}: the greatest write by (hlc, origin, seq) is causally superseded: the HLC disagrees \
                     with causality"
                );
                Some((vec![last.clone()], last.dot))
            }
            Policy::Prefer(ranked) => {
                let rank = |v: &Version| ranked.iter().position(|n| *n == v.dot.origin).map_or(0, |p| ranked.len() - p);
                let i = (0..frontier.len()).max_by_key(|&i| (rank(&frontier[i]), i)).expect("non-empty");
                let winner = frontier[i].dot;
                Some((frontier, winner))
            }
            Policy::Resolver => {
                let mut acc = 0;
                for i in 1..frontier.len() {
                    if resolve(key.as_bytes(), &frontier[acc], &frontier[i]) == Choice::Second {
                        acc = i;
                    }
                }
                let winner = frontier[acc].dot;
                Some((frontier, winner))
            }
        }
    }

    pub(super) fn check_converged(&self) {
        // Every node but those that left, with its index.
        let dbs: Vec<(usize, &Db)> = (self.nodes.iter().enumerate())
            .filter(|(_, n)| !n.gone)
            .map(|(i, n)| (i, n.db.as_ref().expect("all up after healing")))
            .collect();
        let mut expected_vv = VersionVector::new();
        for w in self.writes.values().flatten().filter(|w| !self.lost.contains(&w.dot.origin)) {
            expected_vv.raise(w.dot.origin, w.dot.seq);
        }
        for (&origin, &seq) in self.floor.iter().filter(|(_, &seq)| seq > 0) {
            expected_vv.raise(origin, seq);
        }
        let lww = matches!(self.p.policy, Policy::Lww);
        for &(i, db) in &dbs {
            let report = db.verify().expect("verify");
            assert!(report.is_ok(), "node {i}: verify found problems: {:?}", report.problems);
            let vv = db.version_vector();
            assert_eq!(
                vv, expected_vv,
                "node {i}: version vector differs from the writes made (and the coverage of lost origins that \
                 remained)"
            );
            check_coverage(i, db, &self.writes, lww);
        }
        let first = dbs[0].0;
        for key in &self.p.keys {
            let recs: Vec<Option<Record>> = dbs.iter().map(|(_, db)| db.get_record(key).expect("get_record")).collect();
            for (&(i, _), rec) in dbs.iter().zip(&recs).skip(1) {
                assert!(
                    rec == &recs[0],
                    "{key:?}: node {i} and node {first} hold different records:\n  node {i}: {}\n  node {first}: {}",
                    show(rec),
                    show(&recs[0])
                );
            }
            match (self.expected(key), &recs[0]) {
                (None, None) => {}
                (None, Some(r)) => {
                    panic!("{key:?}: the oracle demands no write of it but nodes hold {}", show(&Some(r.clone())))
                }
                (Some(_), None) => panic!("{key:?} was written but no node holds it"),
                (Some((versions, winner)), Some(r)) => {
                    assert!(
                        r.versions() == &versions[..] && r.winner().dot == winner,
                        "{key:?}: the nodes hold {}, the oracle expects versions {} with winner {winner}",
                        show(&recs[0]),
                        versions.iter().map(show_version).collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        // Reads agree: every node's scan yields exactly the oracle winners
        // that are not deletes.
        let mut expected_live: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for key in &self.p.keys {
            if let Some((versions, winner)) = self.expected(key) {
                let v = versions.into_iter().find(|v| v.dot == winner).expect("winner among versions");
                if let Some(value) = v.value {
                    expected_live.push((key.clone().into_bytes(), value));
                }
            }
        }
        expected_live.sort();
        for &(i, db) in &dbs {
            let live: Vec<(Vec<u8>, Vec<u8>)> =
                db.scan(Default::default()).map(|e| e.expect("scan")).map(|e| (e.key, e.value)).collect();
            assert_eq!(live, expected_live, "node {i}: scan differs from the oracle's live keys");
        }
    }

    /// A digest of the final state, to check that a seed replays exactly.
    pub(super) fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for node in self.nodes.iter().filter(|n| !n.gone) {
            let db = node.db.as_ref().expect("up");
            db.version_vector().hash(&mut h);
            for key in &self.p.keys {
                format!("{:?}", db.get_record(key).expect("get_record")).hash(&mut h);
            }
        }
        h.finish()
    }
}

/// ALGORITHM.md I3 on node `i`: `vv[o] >= s` means every write of `o` up to
/// `s` is held here or dominated (superseded, or beaten under LWW).
pub(super) fn check_coverage(i: usize, db: &Db, writes: &BTreeMap<String, Vec<Version>>, lww: bool) {
    let vv = db.version_vector();
    for (key, ws) in writes {
        let mut rec = None;
        for w in ws.iter().filter(|w| vv.contains(w.dot)) {
            let rec: &Option<Record> = rec.get_or_insert_with(|| db.get_record(key).expect("get_record"));
            let dominated = rec.as_ref().is_some_and(|r| {
                r.has_dot(w.dot)
                    || r.versions().iter().any(|v| v.deps.contains(w.dot))
                    || (lww && order_key(r.winner()) > order_key(w))
            });
            assert!(
                dominated,
                "node {i}: version vector {vv} covers write {} of {key:?}, but its record neither holds nor dominates \
                 it: {}",
                w.dot,
                show(rec)
            );
        }
    }
}

pub(super) fn show_value(value: &Option<Vec<u8>>) -> String {
    match value {
        None => "<deleted>".into(),
        Some(v) => {
            let text = String::from_utf8_lossy(v);
            let text = text.trim_end_matches('.');
            if text.len() < v.len() {
                format!("{text:?}+{} bytes", v.len() - text.len())
            } else {
                format!("{text:?}")
            }
        }
    }
}

fn show_version(v: &Version) -> String {
    format!("{{{} hlc {} deps {} = {}}}", v.dot, v.hlc, v.deps, show_value(&v.value))
}

pub(super) fn show(rec: &Option<Record>) -> String {
    match rec {
        None => "no record".into(),
        Some(r) => format!(
            "record [{}] winner {}",
            r.versions().iter().map(show_version).collect::<Vec<_>>().join(", "),
            r.winner().dot
        ),
    }
}
