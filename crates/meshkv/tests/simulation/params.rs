//! The scenario of one run, all drawn from the seed, and the simulated clock.

use crate::BASE_WALL_MS;
use meshkv::clock::PhysicalClock;
use meshkv::protocol::{LinkConfig, Mode};
use meshkv::storage::{Choice, Version};
use meshkv::{ConflictPolicy, NodeId, Options};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Clock

/// The simulated wall clock of one node: shared simulated time plus a skew.
pub(crate) struct SimClock {
    pub(crate) time: Arc<AtomicU64>,
    pub(crate) skew: AtomicU64,
}

impl PhysicalClock for SimClock {
    fn now_ms(&self) -> u64 {
        BASE_WALL_MS + self.time.load(Ordering::Relaxed) + self.skew.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// Scenario parameters, all drawn from the seed

#[derive(Clone, Debug)]
pub(crate) enum Policy {
    Lww,
    Prefer(Vec<NodeId>),
    Resolver,
}

/// Resolver used by the `Resolver` seeds: the greater value wins (a delete is
/// the smallest), ties to the later version. Deterministic, as required.
pub(crate) fn resolve(_key: &[u8], a: &Version, b: &Version) -> Choice {
    if a.value > b.value {
        Choice::First
    } else {
        Choice::Second
    }
}

impl Policy {
    pub(crate) fn conflict_policy(&self) -> ConflictPolicy {
        match self {
            Policy::Lww => ConflictPolicy::LastWriterWins,
            Policy::Prefer(nodes) => ConflictPolicy::PreferNodes(nodes.clone()),
            Policy::Resolver => ConflictPolicy::resolver(resolve),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Topology {
    Mesh,
    Chain,
    Star,
}

#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub(crate) nodes: usize,
    pub(crate) keys: Vec<String>,
    pub(crate) policy: Policy,
    pub(crate) topology: Topology,
    pub(crate) chaos_ms: u64,
    pub(crate) step_max: u64,
    /// Events per simulated millisecond.
    pub(crate) write_rate: f64,
    pub(crate) crash_rate: f64,
    pub(crate) partition_rate: f64,
    pub(crate) shutdown_rate: f64,
    /// Per message sent.
    pub(crate) reset_p: f64,
    pub(crate) delay_max: u64,
    pub(crate) spike_p: f64,
    pub(crate) split_p: f64,
    pub(crate) pump_p: f64,
    pub(crate) feed_capacity: usize,
    /// `Options::ingest_min_records`: every other block of eight seeds
    /// ingests key-order batches bringing two fresh keys into tables (the
    /// bootstrap path, which the default never reaches with so few keys).
    pub(crate) ingest_min_records: usize,
    /// In one seed of three, every node but node 0 runs this far ahead of
    /// it: more than the 60 s a clock agrees to adopt, so node 0 stamps
    /// its writes below timestamps it has seen (0: no such skew).
    pub(crate) far_skew_ms: u64,
    pub(crate) link: LinkConfig,
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

impl Params {
    pub(crate) fn draw(seed: u64, rng: &mut StdRng, ids: &mut Vec<NodeId>) -> Params {
        let nodes = rng.random_range(3..=5);
        ids.clear();
        while ids.len() < nodes {
            let id = NodeId(rng.random::<u64>() | 1);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut keys: Vec<String> = (0..rng.random_range(3..=7)).map(|i| format!("key{i}")).collect();
        if rng.random_bool(0.2) {
            keys[0].clear(); // the empty key is a valid key
        }
        let policy = match seed % 8 {
            0 => {
                let mut ranked = ids.clone();
                ranked.truncate(rng.random_range(1..=nodes));
                ranked.reverse();
                Policy::Prefer(ranked)
            }
            1 => Policy::Resolver,
            _ => Policy::Lww,
        };
        let topology = match rng.random_range(0..10) {
            0..=5 => Topology::Mesh,
            6 | 7 => Topology::Chain,
            _ => Topology::Star,
        };
        let small_feed = rng.random_bool(0.25);
        let link = LinkConfig {
            window: pick(rng, &[1, 2, 3, 4, 64]),
            batch_items: pick(rng, &[1, 2, 3, 5, 4096]),
            batch_bytes: pick(rng, &[16, 100, 1024, 256 * 1024]),
            queue: if rng.random_bool(0.3) { rng.random_range(1..=3) } else { 1024 },
            ping_ms: 100,
            idle_timeout_ms: 600,
            handshake_timeout_ms: 600,
            ..LinkConfig::default()
        };
        Params {
            nodes,
            keys,
            policy,
            topology,
            chaos_ms: rng.random_range(1_500..=4_000),
            step_max: rng.random_range(2..=10),
            write_rate: rng.random_range(0.01..0.05),
            crash_rate: if rng.random_bool(0.8) { rng.random_range(0.0003..0.0012) } else { 0.0 },
            partition_rate: rng.random_range(0.0005..0.002),
            reset_p: if rng.random_bool(0.7) { rng.random_range(0.0..0.01) } else { 0.0 },
            shutdown_rate: 0.0005,
            delay_max: rng.random_range(2..=30),
            spike_p: 0.02,
            split_p: 0.2,
            pump_p: if small_feed {
                rng.random_range(0.3..0.8)
            } else if rng.random_bool(0.3) {
                rng.random_range(0.6..1.0)
            } else {
                1.0
            },
            feed_capacity: if small_feed { rng.random_range(1..=4) } else { 4096 },
            ingest_min_records: if (seed / 8) % 2 == 1 { 2 } else { Options::default().ingest_min_records },
            far_skew_ms: if seed % 3 == 2 { 180_000 } else { 0 },
            link,
        }
    }
}

// ---------------------------------------------------------------------------
// Membership changes and link modes, drawn from a second generator

/// Membership changes of one run: each is the node it happens to and the
/// simulated time it is due.
#[derive(Debug)]
pub(crate) struct Membership {
    /// Starts with an empty store at this time (after the chaos: at the heal).
    pub(crate) late_join: Option<(usize, u64)>,
    /// Leaves for good: its store is never opened again.
    pub(crate) leave: Option<(usize, u64)>,
    /// Its directory is deleted; it comes back as a new store with a new id.
    pub(crate) wipe: Option<(usize, u64)>,
    /// The node to be wiped crashes, and its directory is copied, at this
    /// time (in even seeds, at half the wipe's time: no draw, so no other
    /// draw shifts); the wipe then restores that backup.
    pub(crate) backup: Option<(usize, u64)>,
}

impl Membership {
    pub(crate) fn draw(ext: &mut StdRng, p: &Params, topology: &BTreeSet<(usize, usize)>) -> Membership {
        let n = p.nodes;
        let chaos = p.chaos_ms as f64;
        let at = |ext: &mut StdRng, from: f64, to: f64| (chaos * ext.random_range(from..to)) as u64;
        let late_join = ext.random_bool(0.25).then(|| (ext.random_range(0..n), at(ext, 0.2, 1.1)));
        let joiner = late_join.map(|(j, _)| j);
        // Only a node whose absence leaves the rest of the topology connected.
        let leavers: Vec<usize> =
            (0..n).filter(|&i| Some(i) != joiner && connected(n, Some(i), topology.iter().copied())).collect();
        let leave = (ext.random_bool(0.15) && !leavers.is_empty())
            .then(|| (leavers[ext.random_range(0..leavers.len())], at(ext, 0.1, 0.7)));
        let wipeable: Vec<usize> = (0..n).filter(|&i| Some(i) != joiner && Some(i) != leave.map(|l| l.0)).collect();
        let wipe = (ext.random_bool(0.2) && !wipeable.is_empty())
            .then(|| (wipeable[ext.random_range(0..wipeable.len())], at(ext, 0.1, 0.8)));
        Membership { late_join, leave, wipe, backup: None }
    }
}

/// The modes of each topology edge `(a, b)`, `a < b`: `(a's, b's)`. In two
/// seeds of five some edges carry data one way only or not at all; the data
/// flow must stay strongly connected over every node and over every node but
/// the one that leaves, so edges are turned back to sync/sync (in a random
/// order) until it is.
pub(crate) fn draw_modes(
    ext: &mut StdRng,
    n: usize,
    topology: &BTreeSet<(usize, usize)>,
    leaver: Option<usize>,
) -> BTreeMap<(usize, usize), (Mode, Mode)> {
    const ALL: [Mode; 3] = [Mode::Sync, Mode::Push, Mode::Pull];
    let mut modes: BTreeMap<(usize, usize), (Mode, Mode)> =
        topology.iter().map(|&e| (e, (Mode::Sync, Mode::Sync))).collect();
    if !ext.random_bool(0.4) {
        return modes;
    }
    let mut mixed = Vec::new();
    for (&edge, pair) in modes.iter_mut() {
        if ext.random_bool(0.5) {
            let i = ext.random_range(1..9); // any pair but sync/sync
            *pair = (ALL[i / 3], ALL[i % 3]);
            mixed.push(edge);
        }
    }
    for i in (1..mixed.len()).rev() {
        mixed.swap(i, ext.random_range(0..=i));
    }
    let strong = |modes: &BTreeMap<(usize, usize), (Mode, Mode)>| {
        [None, leaver].iter().all(|&without| strongly_connected(n, without, &flows(modes)))
    };
    while !strong(&modes) {
        let edge = mixed.pop().expect("all sync is strongly connected");
        modes.insert(edge, (Mode::Sync, Mode::Sync));
    }
    modes
}

/// The directed edges data flows along: from X to Y iff X's mode sends and
/// Y's mode receives (ALGORITHM.md §5, "Directions and modes").
fn flows(modes: &BTreeMap<(usize, usize), (Mode, Mode)>) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (&(a, b), &(ma, mb)) in modes {
        if ma.sends() && mb.receives() {
            out.push((a, b));
        }
        if mb.sends() && ma.receives() {
            out.push((b, a));
        }
    }
    out
}

/// Nodes reachable from `from` along `edges`, never entering `without`.
fn reach(n: usize, from: usize, without: Option<usize>, edges: &[(usize, usize)]) -> Vec<bool> {
    let mut seen = vec![false; n];
    seen[from] = true;
    let mut todo = vec![from];
    while let Some(x) = todo.pop() {
        for &(a, b) in edges {
            if a == x && !seen[b] && Some(b) != without {
                seen[b] = true;
                todo.push(b);
            }
        }
    }
    seen
}

/// Whether every node but `without` reaches every other along `edges`.
fn strongly_connected(n: usize, without: Option<usize>, edges: &[(usize, usize)]) -> bool {
    let Some(root) = (0..n).find(|&i| Some(i) != without) else { return true };
    let back: Vec<(usize, usize)> = edges.iter().map(|&(a, b)| (b, a)).collect();
    let fwd = reach(n, root, without, edges);
    let bwd = reach(n, root, without, &back);
    (0..n).all(|i| Some(i) == without || (fwd[i] && bwd[i]))
}

/// Whether the undirected `edges` connect every node but `without`.
fn connected(n: usize, without: Option<usize>, edges: impl Iterator<Item = (usize, usize)>) -> bool {
    let both: Vec<(usize, usize)> = edges.flat_map(|(a, b)| [(a, b), (b, a)]).collect();
    strongly_connected(n, without, &both)
}
