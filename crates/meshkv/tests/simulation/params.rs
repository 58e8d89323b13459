//! The scenario of one run, all drawn from the seed, and the simulated clock.

use crate::BASE_WALL_MS;
use meshkv::clock::PhysicalClock;
use meshkv::protocol::LinkConfig;
use meshkv::storage::{Choice, Version};
use meshkv::{ConflictPolicy, NodeId, Options};
use rand::rngs::StdRng;
use rand::Rng;
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
            window: pick(rng, &[1, 2, 3, 4, 16]),
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
