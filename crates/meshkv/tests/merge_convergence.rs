//! Property tests of the convergent merge (SPEC invariant 4).
//!
//! Each case runs a random script on 2–4 *origin* stores: local puts,
//! deletes and batches on a small shared key set (so concurrent writes to
//! the same key are frequent), interleaved with "origin X pulls everything
//! from origin Y" steps, which make later writes on X causally follow Y's.
//! Every record version the script produces (each write right after it was
//! made, every record a pull transferred, and change-log snapshots of the
//! origins) is then delivered to 2–3 fresh *receiver* stores, each in its own
//! random order, with random duplicates and random batch splits.
//!
//! The test harness keeps its own ground truth of causality: for every write,
//! the set of writes of that key its origin had seen (transitively, through
//! pulls). Checked, for each conflict policy:
//! - every write's causal context (`Version::deps`) is exactly what the
//!   harness expects;
//! - after every step, every origin holds exactly the record the harness
//!   predicts from what it has seen;
//! - all receivers and all origins (after a full all-pairs exchange) end with
//!   identical records for every key, equal to the oracle: the causal
//!   frontier of all writes of the key, with the policy's winner (for
//!   last-writer-wins: the greatest by (HLC, origin) among the writes no
//!   other write causally dominates); `verify()` is clean on every store and
//!   scans agree;
//! - the resolver is only ever called with two writes that are concurrent
//!   according to the harness's ground truth, in canonical order.
//!
//! Opening a store costs milliseconds (more on a real disk), so a set of
//! stores is reused for a few dozen cases: every case writes its own fresh
//! keys (a per-case prefix) and starts by converging all origins, so earlier
//! cases cannot influence its outcome.

use meshkv::clock::ManualClock;
use meshkv::storage::{Choice, Version};
use meshkv::{Batch, ConflictPolicy, Db, Dot, Hlc, KeyRange, NodeId, Options, Record, ScanOptions, VersionVector};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Keys per case: few, so concurrent writes to one key are frequent.
const KEYS: usize = 4;
const MAX_ORIGINS: usize = 4;
const MAX_RECEIVERS: usize = 3;
/// Cases run on one set of stores before it is replaced by fresh ones.
const CASES_PER_STORE_SET: u32 = 32;

type Outcome<T = ()> = Result<T, TestCaseError>;

trait OrFail<T> {
    fn or_fail(self, what: &str) -> Outcome<T>;
}

impl<T> OrFail<T> for meshkv::Result<T> {
    fn or_fail(self, what: &str) -> Outcome<T> {
        self.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PolicyKind {
    LastWriterWins,
    /// `PreferNodes` ranking origin 0.
    PreferFirstOrigin,
    /// A resolver keeping the greater `(value, dot)`.
    Resolver,
}

#[derive(Clone, Debug)]
enum Step {
    /// A local write on `origin`: a single put/delete, or a batch. Each op
    /// is (key index, value; `None` deletes).
    Write { origin: usize, ops: Vec<(usize, Option<u8>)> },
    /// `to` applies everything `from` has that `to` lacks (a complete
    /// catch-up), optionally raising its version vector to `from`'s.
    Pull { to: usize, from: usize, covered: bool },
    /// Capture every record `origin` changed in this case (goes to the
    /// receivers' delivery pool).
    Snapshot { origin: usize },
    /// Advance the shared wall clock.
    Tick { ms: u64 },
}

#[derive(Clone, Debug)]
struct Scenario {
    origins: usize,
    receivers: usize,
    steps: Vec<Step>,
    /// One seed per receiver for its delivery order, duplicates and batches.
    delivery_seeds: Vec<u64>,
}

fn step(n: usize) -> impl Strategy<Value = Step> {
    let op = (0..KEYS, prop::option::weighted(0.8, 0u8..4));
    prop_oneof![
        6 => (0..n, vec(op, 1..=3)).prop_map(|(origin, ops)| Step::Write { origin, ops }),
        4 => (0..n, 1..n, any::<bool>())
            .prop_map(move |(to, offset, covered)| Step::Pull { to, from: (to + offset) % n, covered }),
        1 => (0..n).prop_map(|origin| Step::Snapshot { origin }),
        1 => (1u64..=3).prop_map(|ms| Step::Tick { ms }),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (2..=MAX_ORIGINS, 2..=MAX_RECEIVERS)
        .prop_flat_map(|(n, m)| (Just(n), Just(m), vec(step(n), 1..40), vec(any::<u64>(), m)))
        .prop_map(|(origins, receivers, steps, delivery_seeds)| Scenario { origins, receivers, steps, delivery_seeds })
}

fn value_bytes(v: u8) -> Vec<u8> {
    format!("v{v}").into_bytes()
}

/// Canonical order of versions: HLC, then origin, then seq.
fn order_key(v: &Version) -> (Hlc, NodeId, u64) {
    (v.hlc, v.dot.origin, v.dot.seq)
}

/// One write, as the harness knows it.
struct WriteInfo {
    origin: usize,
    key: usize,
    /// The version as stored right after the write.
    version: Version,
    /// Ground truth: every write of this key the origin had seen (directly or
    /// through pulls, transitively) when it made this one.
    seen: BTreeSet<usize>,
    /// The writes `version.deps` must cover. Equal to `seen`, except under
    /// last-writer-wins, where a dropped loser is no longer part of the
    /// context: there it is the held winner and its own context.
    ctx: BTreeSet<usize>,
}

/// Ground truth of one case.
struct Truth {
    kind: PolicyKind,
    ranked: Option<NodeId>,
    writes: Vec<WriteInfo>,
    by_dot: HashMap<Dot, usize>,
    /// `seen[origin][key]`: the writes of `key` that `origin` has seen.
    seen: Vec<Vec<BTreeSet<usize>>>,
}

/// Expected record: version ids in canonical order, and the winner's id.
type Expected = Option<(Vec<usize>, usize)>;

impl Truth {
    fn order(&self, id: usize) -> (Hlc, NodeId, u64) {
        order_key(&self.writes[id].version)
    }

    fn name(&self, dot: Dot) -> String {
        match self.by_dot.get(&dot) {
            Some(&id) => format!("w{id}(origin {}, {})", self.writes[id].origin, dot),
            None => format!("unknown write {dot}"),
        }
    }

    fn names<'a>(&self, dots: impl IntoIterator<Item = &'a Dot>) -> String {
        dots.into_iter().map(|d| self.name(*d)).collect::<Vec<_>>().join(", ")
    }

    /// Whether `a` causally precedes `b` (ground truth).
    fn precedes(&self, a: usize, b: usize) -> bool {
        self.writes[b].seen.contains(&a)
    }

    /// The writes of `set` no other write of `set` causally dominates, in
    /// canonical order.
    fn frontier(&self, set: &BTreeSet<usize>) -> Vec<usize> {
        let mut f: Vec<usize> = set.iter().copied().filter(|&a| !set.iter().any(|&b| self.precedes(a, b))).collect();
        f.sort_by_key(|&i| self.order(i));
        f
    }

    /// The record a store that has seen exactly the writes `set` of one key
    /// must hold.
    fn expected(&self, set: &BTreeSet<usize>) -> Outcome<Expected> {
        if set.is_empty() {
            return Ok(None);
        }
        let frontier = self.frontier(set);
        match self.kind {
            PolicyKind::LastWriterWins => {
                // Oracle: among the writes nothing dominates, the greatest by
                // (HLC, origin). The HLC must respect causality, so that is
                // also the greatest of all.
                let winner = *frontier.iter().max_by_key(|&&i| self.order(i)).expect("non-empty");
                let overall = *set.iter().max_by_key(|&&i| self.order(i)).expect("non-empty");
                prop_assert_eq!(
                    winner,
                    overall,
                    "HLC does not respect causality: {} is causally dominated but has the greatest HLC",
                    self.name(self.writes[overall].version.dot)
                );
                Ok(Some((vec![winner], winner)))
            }
            PolicyKind::PreferFirstOrigin => {
                let rank = |i: usize| u8::from(Some(self.writes[i].version.dot.origin) == self.ranked);
                let winner = *frontier.iter().max_by_key(|&&i| (rank(i), self.order(i))).expect("non-empty");
                Ok(Some((frontier, winner)))
            }
            PolicyKind::Resolver => {
                let winner = *frontier
                    .iter()
                    .max_by_key(|&&i| (self.writes[i].version.value.clone(), self.writes[i].version.dot))
                    .expect("non-empty");
                Ok(Some((frontier, winner)))
            }
        }
    }

    /// Checks a stored record against the expectation.
    fn check_record(&self, what: &str, got: Option<&Record>, want: &Expected) -> Outcome {
        match (got, want) {
            (None, None) => Ok(()),
            (Some(r), None) => {
                let dots: Vec<Dot> = r.dots().collect();
                Err(TestCaseError::fail(format!("{what}: expected no record, found {}", self.names(&dots))))
            }
            (None, Some((ids, _))) => {
                let dots: Vec<Dot> = ids.iter().map(|&i| self.writes[i].version.dot).collect();
                Err(TestCaseError::fail(format!("{what}: record missing, expected {}", self.names(&dots))))
            }
            (Some(r), Some((ids, winner))) => {
                let got: Vec<Dot> = r.dots().collect();
                let want: Vec<Dot> = ids.iter().map(|&i| self.writes[i].version.dot).collect();
                prop_assert!(
                    got == want,
                    "{}: record holds [{}], expected [{}]",
                    what,
                    self.names(&got),
                    self.names(&want)
                );
                for (v, &i) in r.versions().iter().zip(ids) {
                    prop_assert!(
                        *v == self.writes[i].version,
                        "{}: version {} differs from the write: {:?} vs {:?}",
                        what,
                        self.name(v.dot),
                        v,
                        self.writes[i].version
                    );
                }
                let want_winner = self.writes[*winner].version.dot;
                prop_assert!(
                    r.winner().dot == want_winner,
                    "{}: winner is {}, expected {} among [{}]",
                    what,
                    self.name(r.winner().dot),
                    self.name(want_winner),
                    self.names(&want)
                );
                Ok(())
            }
        }
    }

    fn vv_of(&self, set: &BTreeSet<usize>) -> VersionVector {
        set.iter().map(|&i| (self.writes[i].version.dot.origin, self.writes[i].version.dot.seq)).collect()
    }
}

/// A resolver call: key and the two versions, as passed.
type Call = (Vec<u8>, Version, Version);

struct Stores {
    // Declared before the directory so they are closed before it is removed.
    origins: Vec<Db>,
    receivers: Vec<Db>,
    ranked: Option<NodeId>,
    used: u32,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Default)]
struct Stats {
    cases: u64,
    writes: u64,
    pulls: u64,
    delivered: u64,
    /// Writes that causally follow a write of another origin.
    causal_cross_origin: u64,
    /// Cases where some key ended with concurrent writes.
    cases_with_concurrency: u64,
    /// Keys whose final frontier held more than one write.
    concurrent_keys: u64,
    resolver_calls: u64,
    /// Writes whose HLC equals that of another origin's write of the key.
    hlc_ties: u64,
    /// Conflicts the receivers counted while the pool was delivered.
    receiver_conflicts: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.cases += o.cases;
        self.writes += o.writes;
        self.pulls += o.pulls;
        self.delivered += o.delivered;
        self.causal_cross_origin += o.causal_cross_origin;
        self.cases_with_concurrency += o.cases_with_concurrency;
        self.concurrent_keys += o.concurrent_keys;
        self.resolver_calls += o.resolver_calls;
        self.hlc_ties += o.hlc_ties;
        self.receiver_conflicts += o.receiver_conflicts;
    }
}

struct Fixture {
    kind: PolicyKind,
    /// Shared by all stores of a property and driven by the script: it
    /// stands still unless a `Tick` step moves it, so HLC timestamps of
    /// different origins often tie and the tie-break by node id matters.
    clock: Arc<ManualClock>,
    calls: Arc<Mutex<Vec<Call>>>,
    stores: RefCell<Option<Stores>>,
    case: Cell<u64>,
    stats: RefCell<Stats>,
}

fn pull(to: &Db, from: &Db, covered: bool) -> Outcome<Vec<(Vec<u8>, Record)>> {
    let changes = from.changes_since(&to.version_vector()).or_fail("changes_since")?;
    let vv = changes.version_vector().clone();
    let records: Vec<(Vec<u8>, Record)> = changes.collect::<meshkv::Result<_>>().or_fail("changes_since item")?;
    let report = to.apply(records.clone(), covered.then_some(&vv)).or_fail("apply (pull)")?;
    prop_assert_eq!(report.changed + report.unchanged, records.len(), "apply report does not add up");
    Ok(records)
}

/// Two rounds of everyone pulling from everyone: afterwards all of `dbs`
/// have seen every write any of them had.
fn exchange(dbs: &[Db]) -> Outcome {
    for _ in 0..2 {
        for x in dbs {
            for y in dbs {
                if x.node_id() != y.node_id() {
                    pull(x, y, true)?;
                }
            }
        }
    }
    Ok(())
}

/// Delivers `pool` to `db` in a seeded random order, with duplicates, in
/// random batches. Returns the number of records applied.
fn deliver(db: &Db, pool: &[(Vec<u8>, Record)], seed: u64) -> Outcome<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut items = Vec::with_capacity(pool.len() * 2);
    for item in pool {
        let copies = if rng.random_bool(0.3) { rng.random_range(2..=3) } else { 1 };
        items.extend(std::iter::repeat_n(item, copies).cloned());
    }
    items.shuffle(&mut rng);
    let total = items.len();
    let mut rest = &items[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(8));
        let (chunk, tail) = rest.split_at(n);
        let report = db.apply(chunk.to_vec(), None).or_fail("apply (delivery)")?;
        prop_assert_eq!(report.changed + report.unchanged, n, "apply report does not add up");
        rest = tail;
    }
    Ok(total)
}

/// Keeps the last operation per key, in order (what `Db::write` does).
fn last_op_per_key(ops: &[(usize, Option<u8>)]) -> Vec<(usize, Option<u8>)> {
    let mut out: Vec<(usize, Option<u8>)> = Vec::new();
    for &(k, v) in ops {
        out.retain(|&(k2, _)| k2 != k);
        out.push((k, v));
    }
    out
}

impl Fixture {
    fn new(kind: PolicyKind) -> Self {
        Fixture {
            kind,
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            calls: Arc::new(Mutex::new(Vec::new())),
            stores: RefCell::new(None),
            case: Cell::new(0),
            stats: RefCell::new(Stats::default()),
        }
    }

    fn options(&self, policy: ConflictPolicy) -> Options {
        let mut opts = Options::default().policy(policy);
        opts.clock = self.clock.clone();
        opts
    }

    fn open_stores(&self) -> Outcome<Stores> {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(format!("tempdir: {e}")))?;
        let first = dir.path().join("origin0");
        let mut ranked = None;
        let policy = match self.kind {
            PolicyKind::LastWriterWins => ConflictPolicy::LastWriterWins,
            PolicyKind::PreferFirstOrigin => {
                // The node id is made on first open; reopen with the policy.
                let id = Db::open(&first, self.options(ConflictPolicy::LastWriterWins)).or_fail("open")?.node_id();
                ranked = Some(id);
                ConflictPolicy::PreferNodes(vec![id])
            }
            PolicyKind::Resolver => {
                let calls = Arc::clone(&self.calls);
                ConflictPolicy::resolver(move |key, a, b| {
                    calls.lock().unwrap_or_else(|p| p.into_inner()).push((key.to_vec(), a.clone(), b.clone()));
                    // Deterministic: the greater value wins, ties on dot.
                    if (&b.value, b.dot) > (&a.value, a.dot) {
                        Choice::Second
                    } else {
                        Choice::First
                    }
                })
            }
        };
        let open = |name: String| Db::open(dir.path().join(name), self.options(policy.clone())).or_fail("open");
        let origins = (0..MAX_ORIGINS).map(|i| open(format!("origin{i}"))).collect::<Outcome<Vec<_>>>()?;
        let receivers = (0..MAX_RECEIVERS).map(|i| open(format!("receiver{i}"))).collect::<Outcome<Vec<_>>>()?;
        if let Some(id) = ranked {
            prop_assert_eq!(origins[0].node_id(), id);
        }
        Ok(Stores { origins, receivers, ranked, used: 0, _dir: dir })
    }

    fn run_case(&self, sc: &Scenario) -> Outcome {
        let mut slot = self.stores.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.used >= CASES_PER_STORE_SET) {
            *slot = None;
            *slot = Some(self.open_stores()?);
        }
        let stores = slot.as_mut().expect("just opened");
        stores.used += 1;
        let case = self.case.get();
        self.case.set(case + 1);
        self.clock.advance(1_000);

        // Converge all origins (an earlier failing case may have left them
        // apart), so nothing from earlier cases travels during this one.
        exchange(&stores.origins)?;
        let mut start_vv = VersionVector::new();
        for o in &stores.origins {
            start_vv.join(&o.version_vector());
        }
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();

        let prefix = format!("case{case:06}/");
        let keys: Vec<Vec<u8>> = (0..KEYS).map(|k| format!("{prefix}k{k}").into_bytes()).collect();
        let key_index = |key: &[u8]| keys.iter().position(|k| k == key);
        let origins = &stores.origins[..sc.origins];
        let receivers = &stores.receivers[..sc.receivers];
        let mut truth = Truth {
            kind: self.kind,
            ranked: stores.ranked,
            writes: Vec::new(),
            by_dot: HashMap::new(),
            seen: vec![vec![BTreeSet::new(); KEYS]; sc.origins],
        };
        let mut pool: Vec<(Vec<u8>, Record)> = Vec::new();
        let mut stats = Stats::default();

        for (si, step) in sc.steps.iter().enumerate() {
            match step {
                Step::Write { origin, ops } => {
                    let db = &origins[*origin];
                    let last = if let [(k, v)] = ops[..] {
                        match v {
                            Some(v) => db.put(keys[k].clone(), value_bytes(v)),
                            None => db.delete(keys[k].clone()),
                        }
                        .or_fail("put/delete")?
                    } else {
                        let mut batch = Batch::new();
                        for &(k, v) in ops {
                            match v {
                                Some(v) => batch.put(keys[k].clone(), value_bytes(v)),
                                None => batch.delete(keys[k].clone()),
                            };
                        }
                        db.write(batch).or_fail("write")?.expect("non-empty batch")
                    };
                    let effective = last_op_per_key(ops);
                    for (j, &(k, v)) in effective.iter().enumerate() {
                        let rec = db.get_record(&keys[k]).or_fail("get_record")?;
                        let rec = rec.ok_or_else(|| TestCaseError::fail(format!("step {si}: write not stored")))?;
                        prop_assert_eq!(rec.versions().len(), 1, "step {}: a local write leaves one version", si);
                        let version = rec.winner().clone();
                        let want_dot = Dot::new(db.node_id(), last.seq - (effective.len() - 1 - j) as u64);
                        prop_assert_eq!(version.dot, want_dot, "step {}: dots of a batch", si);
                        prop_assert_eq!(&version.value, &v.map(value_bytes), "step {}: stored value", si);
                        let seen = truth.seen[*origin][k].clone();
                        let ctx = match self.kind {
                            PolicyKind::LastWriterWins => match seen.iter().max_by_key(|&&i| truth.order(i)) {
                                Some(&held) => {
                                    let mut c = truth.writes[held].ctx.clone();
                                    c.insert(held);
                                    c
                                }
                                None => BTreeSet::new(),
                            },
                            _ => seen.clone(),
                        };
                        let id = truth.writes.len();
                        let want_deps = truth.vv_of(&ctx);
                        prop_assert!(
                            version.deps == want_deps,
                            "step {}: causal context of w{} on origin {} is {}, expected {} (writes [{}])",
                            si,
                            id,
                            origin,
                            version.deps,
                            want_deps,
                            ctx.iter().map(|i| format!("w{i}")).collect::<Vec<_>>().join(", ")
                        );
                        if self.kind != PolicyKind::LastWriterWins {
                            for (i, u) in truth.writes.iter().enumerate().filter(|(_, u)| u.key == k) {
                                prop_assert_eq!(
                                    version.deps.contains(u.version.dot),
                                    seen.contains(&i),
                                    "step {}: does w{} supersede w{}?",
                                    si,
                                    id,
                                    i
                                );
                            }
                        }
                        if seen.iter().any(|&i| truth.writes[i].origin != *origin) {
                            stats.causal_cross_origin += 1;
                        }
                        truth.by_dot.insert(version.dot, id);
                        truth.writes.push(WriteInfo { origin: *origin, key: k, version, seen, ctx });
                        truth.seen[*origin][k].insert(id);
                        pool.push((keys[k].clone(), rec));
                        stats.writes += 1;
                    }
                }
                Step::Pull { to, from, covered } => {
                    let records = pull(&origins[*to], &origins[*from], *covered)?;
                    for (key, rec) in records {
                        prop_assert!(
                            key_index(&key).is_some(),
                            "step {}: a pull sent {:?}, not written in this case",
                            si,
                            String::from_utf8_lossy(&key)
                        );
                        pool.push((key, rec));
                    }
                    for k in 0..KEYS {
                        let theirs = truth.seen[*from][k].clone();
                        truth.seen[*to][k].extend(theirs);
                    }
                    stats.pulls += 1;
                }
                Step::Snapshot { origin } => {
                    let changes = origins[*origin].changes_since(&start_vv).or_fail("changes_since")?;
                    for item in changes {
                        let (key, rec) = item.or_fail("changes_since item")?;
                        prop_assert!(key_index(&key).is_some(), "step {}: snapshot holds an old key", si);
                        pool.push((key, rec));
                    }
                }
                Step::Tick { ms } => {
                    self.clock.advance(*ms);
                }
            }
            // Every origin holds exactly what it has seen, merged.
            for (o, db) in origins.iter().enumerate() {
                for (k, key) in keys.iter().enumerate() {
                    let want = truth.expected(&truth.seen[o][k])?;
                    let got = db.get_record(key).or_fail("get_record")?;
                    truth.check_record(&format!("after step {si}, origin {o}, key k{k}"), got.as_ref(), &want)?;
                }
            }
        }

        // Final state of every origin goes to the pool too.
        for db in origins {
            for item in db.changes_since(&start_vv).or_fail("changes_since")? {
                pool.push(item.or_fail("changes_since item")?);
            }
        }
        // A deterministic pool order (given the script), then one random
        // delivery per receiver.
        pool.sort_by_cached_key(|(key, rec)| {
            (key.clone(), rec.dots().map(|d| truth.by_dot.get(&d).copied()).collect::<Vec<_>>())
        });
        for (db, &seed) in receivers.iter().zip(&sc.delivery_seeds) {
            let conflicts_before = db.conflict_count();
            stats.delivered += deliver(db, &pool, seed)? as u64;
            stats.receiver_conflicts += db.conflict_count() - conflicts_before;
        }
        exchange(origins)?;

        let all: Vec<BTreeSet<usize>> =
            (0..KEYS).map(|k| (0..truth.writes.len()).filter(|&i| truth.writes[i].key == k).collect()).collect();
        let stores_named: Vec<(String, &Db)> = origins
            .iter()
            .enumerate()
            .map(|(i, db)| (format!("origin {i} after exchange"), db))
            .chain(receivers.iter().enumerate().map(|(i, db)| (format!("receiver {i}"), db)))
            .collect();
        let mut visible = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            let want = truth.expected(&all[k])?;
            let frontier = truth.frontier(&all[k]);
            if frontier.len() > 1 {
                stats.concurrent_keys += 1;
            }
            if let Some((_, w)) = &want {
                if let Some(v) = &truth.writes[*w].version.value {
                    visible.push((key.clone(), v.clone()));
                }
            }
            let mut first: Option<(String, Option<Record>)> = None;
            for (name, db) in &stores_named {
                let got = db.get_record(key).or_fail("get_record")?;
                truth.check_record(&format!("final, {name}, key k{k}"), got.as_ref(), &want)?;
                match &first {
                    None => first = Some((name.clone(), got)),
                    Some((first_name, first_rec)) => prop_assert!(
                        *first_rec == got,
                        "key k{}: {} holds {:?} but {} holds {:?}",
                        k,
                        first_name,
                        first_rec,
                        name,
                        got
                    ),
                }
            }
        }
        for (name, db) in &stores_named {
            let report = db.verify().or_fail("verify")?;
            prop_assert!(report.is_ok(), "{}: verify() found problems: {:?}", name, report.problems);
            let scanned: Vec<(Vec<u8>, Vec<u8>)> = db
                .scan(ScanOptions::range(KeyRange::prefix(prefix.clone())))
                .map(|e| e.map(|e| (e.key, e.value)))
                .collect::<meshkv::Result<_>>()
                .or_fail("scan")?;
            prop_assert_eq!(&scanned, &visible, "{}: scan", name);
        }

        // The resolver only ever saw concurrent writes, in canonical order.
        let calls = std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()));
        for (key, a, b) in &calls {
            let (Some(&ia), Some(&ib)) = (truth.by_dot.get(&a.dot), truth.by_dot.get(&b.dot)) else {
                return Err(TestCaseError::fail(format!("resolver called with unknown writes {} / {}", a.dot, b.dot)));
            };
            let k = key_index(key);
            prop_assert!(
                k == Some(truth.writes[ia].key) && k == Some(truth.writes[ib].key),
                "resolver called for key {:?} with writes {} and {} of other keys",
                String::from_utf8_lossy(key),
                truth.name(a.dot),
                truth.name(b.dot)
            );
            prop_assert!(
                !truth.precedes(ia, ib) && !truth.precedes(ib, ia),
                "resolver called with causally ordered writes {} and {} (key k{:?})",
                truth.name(a.dot),
                truth.name(b.dot),
                k
            );
            prop_assert!(
                *a == truth.writes[ia].version && *b == truth.writes[ib].version,
                "resolver got altered versions"
            );
            prop_assert!(
                order_key(a) < order_key(b),
                "resolver arguments not in canonical order: {} then {}",
                truth.name(a.dot),
                truth.name(b.dot)
            );
        }

        stats.cases = 1;
        stats.cases_with_concurrency = u64::from(stats.concurrent_keys > 0);
        stats.resolver_calls = calls.len() as u64;
        stats.hlc_ties = truth
            .writes
            .iter()
            .filter(|w| {
                truth.writes.iter().any(|u| u.key == w.key && u.origin != w.origin && u.version.hlc == w.version.hlc)
            })
            .count() as u64;
        self.stats.borrow_mut().add(&stats);
        Ok(())
    }
}

fn run_property(kind: PolicyKind, cases: u32) {
    let started = Instant::now();
    let fixture = Fixture::new(kind);
    let config = Config { cases, source_file: Some(file!()), ..Config::default() };
    let mut runner = TestRunner::new(config);
    match runner.run(&scenario(), |sc| fixture.run_case(&sc)) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => panic!("{kind:?}: {why}\nminimal failing input: {input:#?}"),
        Err(e) => panic!("{kind:?}: {e}"),
    }
    let stats = fixture.stats.borrow();
    eprintln!("{kind:?}: {stats:?} in {:.1?}", started.elapsed());
    // The properties are only meaningful if the scripts produce both
    // concurrency and causal chains across origins.
    assert!(stats.cases >= u64::from(cases));
    assert!(stats.cases_with_concurrency * 4 >= stats.cases, "too few cases with concurrent writes: {stats:?}");
    assert!(stats.causal_cross_origin * 10 >= stats.writes, "too few causally dependent writes: {stats:?}");
    if kind == PolicyKind::Resolver {
        assert!(stats.resolver_calls > 0, "the resolver was never called: {stats:?}");
    }
}

#[test]
fn last_writer_wins_converges_to_oracle_winner() {
    run_property(PolicyKind::LastWriterWins, 500);
}

#[test]
fn prefer_nodes_converges() {
    run_property(PolicyKind::PreferFirstOrigin, 300);
}

#[test]
fn resolver_converges_and_sees_only_concurrent_writes() {
    run_property(PolicyKind::Resolver, 300);
}
