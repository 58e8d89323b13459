//! Integrity check of the invariants that tie records, change log and
//! version vector together (SPEC invariants 1 and 2).

use super::changelog;
use super::db::Db;
use super::error::Result;
use super::keys;
use super::read::decode;
use crate::version::{Dot, Seq};
use fjall::Readable;

/// What [`Db::verify`] found. An intact store has no `problems`.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Records (keys) in the data keyspace, tombstones included.
    pub records: u64,
    /// Dots in the change log: one per current version in an intact store
    /// (own dots may share an entry, see `log_blocks`).
    pub log_entries: u64,
    /// Entries among them holding a block of this node's own dots.
    pub log_blocks: u64,
    /// Highest sequence number of this node found in any record.
    pub max_own_seq: Seq,
    /// Human-readable descriptions of every violation found.
    pub problems: Vec<String>,
}

impl IntegrityReport {
    /// Whether no violation was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Db {
    /// Scans the whole store (from one snapshot) and checks that every
    /// current version has exactly its change-log entry, that every log
    /// entry points to a current version, that the key filter holds every
    /// stored key (once its open-time scan is done), and that the version vector and
    /// the sequence reservation cover this node's own writes. Reads
    /// everything: meant for tests, tools and operators, not hot paths.
    pub fn verify(&self) -> Result<IntegrityReport> {
        let snapshot = self.snapshot();
        let inner = &snapshot.db;
        let snap = &snapshot.snap;
        let mut report = IntegrityReport::default();
        let filter_complete = inner.filter.lock().is_complete();
        let mut versions = 0u64;
        // Their log dots cannot be counted against their versions.
        let mut undecodable = false;
        for guard in snap.iter(&inner.data) {
            let (dkey, raw) = guard.into_inner()?;
            let key = keys::user_key(&dkey);
            report.records += 1;
            if filter_complete && !inner.filter.may_contain_all([key])[0] {
                report.problems.push(format!("key filter misses stored key {key:?}"));
            }
            let record = match decode(key, &raw) {
                Ok(r) => r,
                Err(e) => {
                    report.problems.push(e.to_string());
                    undecodable = true;
                    continue;
                }
            };
            versions += record.versions().len() as u64;
            for (i, v) in record.versions().iter().enumerate() {
                if v.dot.origin == inner.node_id {
                    report.max_own_seq = report.max_own_seq.max(v.dot.seq);
                }
                match changelog::lookup(snap, &inner.log, inner.node_id, v.dot, |d| inner.corrupt(d)) {
                    Ok(Some(k)) if k == key => {}
                    Ok(Some(_)) => report.problems.push(format!("log entry {} points to another key", v.dot)),
                    Ok(None) => report.problems.push(format!("record {key:?} version {} has no log entry", v.dot)),
                    Err(e) => report.problems.push(format!("log entry of {}: {e}", v.dot)),
                }
                if record.versions().iter().skip(i + 1).any(|w| w.supersedes(v) || v.supersedes(w)) {
                    report.problems.push(format!("record {key:?} keeps causally ordered versions"));
                }
            }
        }
        for guard in snap.iter(&inner.log) {
            let (lk, value) = guard.into_inner()?;
            let Some(dots) = changelog::decode_entry(&lk, &value) else {
                report.problems.push(format!("malformed log entry {lk:?}"));
                continue;
            };
            report.log_blocks += u64::from(lk.len() != keys::LOG_KEY_LEN);
            for (dot, key) in dots {
                report.log_entries += 1;
                if dot.origin != inner.node_id && lk.len() != keys::LOG_KEY_LEN {
                    report.problems.push(format!("log entry {dot} of another node is in a block"));
                }
                let current = snapshot.get_record(key)?.is_some_and(|r| r.has_dot(dot));
                if !current {
                    report.problems.push(format!("log entry {dot} points to a missing or superseded record"));
                }
            }
        }
        if report.log_entries != versions && !undecodable {
            let n = report.log_entries;
            report.problems.push(format!("the log holds {n} dots for {versions} current versions"));
        }
        let vv = snapshot.version_vector()?;
        let own = Dot::new(inner.node_id, report.max_own_seq);
        if !vv.contains(own) {
            report.problems.push(format!("version vector {vv} does not cover own write {own}"));
        }
        let reserved = snap.get(&inner.meta, keys::META_SEQ_RESERVED)?.and_then(|v| keys::parse_u64(&v)).unwrap_or(0);
        if reserved < report.max_own_seq {
            report.problems.push(format!("seq reservation {reserved} is below own write {own}"));
        }
        Ok(report)
    }
}
