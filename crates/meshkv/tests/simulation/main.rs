//! Deterministic simulation of a meshkv cluster.
//!
//! 3–5 real stores (fjall, in temporary directories) replicate through the
//! very same sans-IO protocol code the TCP runtime uses
//! (`meshkv::protocol::Link`), over a simulated network driven by one seeded
//! random generator and a simulated clock:
//!
//! - **time** is simulated milliseconds; every store's wall clock is a
//!   [`SimClock`] (the shared simulated time plus a per-node skew), so HLCs
//!   are deterministic. Node ids are drawn from the seed too (`Options::new_node_id`), so a seed
//!   replays the same run.
//! - **connections** are a pair of `Link`s with one FIFO queue of bytes per
//!   direction. Every message goes through `codec::encode`/`codec::decode`,
//!   sometimes split into two pieces (partial frames). Each message gets a
//!   random delay (with occasional spikes); FIFO order is kept.
//! - **loss**: TCP is ordered and reliable within a connection, so a lost
//!   message is modelled as the connection being reset at that point: both
//!   `Link`s are dropped and everything in flight is discarded.
//! - **partitions** cut a random subset of node pairs (a random split or
//!   random pairs). A cut connection is either reset at once or goes silent
//!   (nothing is delivered; if the partition heals before the idle timeout,
//!   TCP delivers what was queued, otherwise both links time out). Cut pairs
//!   cannot reconnect until the partition heals.
//! - **crashes**: a node's `Db`, `Link`s and feed subscriptions are dropped
//!   and the store is reopened later from the same directory (what was
//!   acknowledged survives; what was in flight to it is lost). Its peers see
//!   either a reset or silence (then their idle timeout fires). The node's
//!   clock may jump on restart.
//! - **reconnects** happen after a random backoff whenever two nodes that are
//!   neighbours in the topology are up, not cut, and not connected.
//!   Topologies: full mesh, or a chain or a star (transitive delivery).
//! - **workload**: random puts, deletes and small multi-key batches on a few
//!   overlapping keys, on random live nodes. Every write's version (dot, HLC,
//!   causal context, value) is read back on its origin right after the write.
//! - **flow control**: small windows, batches and live queues (so multi-batch
//!   catch-ups, the queue-overflow re-catch-up and resumable catch-ups run),
//!   and sometimes a tiny change-feed ring with a slow consumer (the feed's
//!   own `Lagged` path).
//!
//! Throughout the run the coverage invariant (ALGORITHM.md I3) is checked on
//! the receiving node after every delivered message, and on every live node
//! periodically: a vector that covers a write the node does not hold is a
//! permanent loss in general, but a later overwrite of the key can hide it
//! from the final comparison, so it is caught where it happens. Then the run heals (no more writes,
//! faults or partitions; every node up; the topology stays connected) and is
//! driven until quiescent: every neighbour pair connected with both senders
//! live, nothing but pings in flight, nothing left to send. Then every node
//! must hold identical records and version vectors, `verify()` must be clean,
//! each version vector must be exactly "every write ever made", and each key's
//! record must equal the oracle: the frontier of all writes ever made to the
//! key (those no other write causally supersedes) resolved by the policy —
//! under last-writer-wins the single greatest write by `(hlc, origin, seq)`.
//!
//! The conflict policy is part of the seed (`seed % 8`: 0 = `PreferNodes`,
//! 1 = a `Resolver`, otherwise last-writer-wins).
//!
//! `cargo test` runs seeds 0..200 (four tests of 50, in parallel). A failing
//! seed is reported with its replay command:
//! `MESHKV_SIM_SEED=<seed> cargo test -p meshkv --test simulation`
//! (add `MESHKV_SIM_TRACE=1` and `-- --nocapture` for a step-by-step trace);
//! `MESHKV_SIM_SEEDS=<a>..<b>` runs a longer soak. Stores live on tmpfs when
//! there is one (see [`store_dir`]); `MESHKV_SIM_DIR` overrides the place.

use meshkv::clock::PhysicalClock;
use meshkv::protocol::{codec, CatchUpOrder, CloseReason, Link, LinkConfig, LinkEvent, Message};
use meshkv::storage::{Choice, FeedError, Subscription, Version};
use meshkv::{Batch, ConflictPolicy, Db, Dot, Hlc, KeyRange, NodeId, Options, Record, VersionVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Wall time of simulated time 0 (November 2023).
const BASE_WALL_MS: u64 = 1_700_000_000_000;
/// Simulated time allowed for the healed cluster to become quiescent.
const HEAL_BUDGET_MS: u64 = 120_000;

// ---------------------------------------------------------------------------
// Clock

/// The simulated wall clock of one node: shared simulated time plus a skew.
struct SimClock {
    time: Arc<AtomicU64>,
    skew: AtomicU64,
}

impl PhysicalClock for SimClock {
    fn now_ms(&self) -> u64 {
        BASE_WALL_MS + self.time.load(Ordering::Relaxed) + self.skew.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// Scenario parameters, all drawn from the seed

#[derive(Clone, Debug)]
enum Policy {
    Lww,
    Prefer(Vec<NodeId>),
    Resolver,
}

/// Resolver used by the `Resolver` seeds: the greater value wins (a delete is
/// the smallest), ties to the later version. Deterministic, as required.
fn resolve(_key: &[u8], a: &Version, b: &Version) -> Choice {
    if a.value > b.value {
        Choice::First
    } else {
        Choice::Second
    }
}

impl Policy {
    fn conflict_policy(&self) -> ConflictPolicy {
        match self {
            Policy::Lww => ConflictPolicy::LastWriterWins,
            Policy::Prefer(nodes) => ConflictPolicy::PreferNodes(nodes.clone()),
            Policy::Resolver => ConflictPolicy::resolver(resolve),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    Mesh,
    Chain,
    Star,
}

#[derive(Clone, Debug)]
struct Params {
    nodes: usize,
    keys: Vec<String>,
    policy: Policy,
    topology: Topology,
    chaos_ms: u64,
    step_max: u64,
    /// Events per simulated millisecond.
    write_rate: f64,
    crash_rate: f64,
    partition_rate: f64,
    shutdown_rate: f64,
    /// Per message sent.
    reset_p: f64,
    delay_max: u64,
    spike_p: f64,
    split_p: f64,
    pump_p: f64,
    feed_capacity: usize,
    link: LinkConfig,
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

impl Params {
    fn draw(seed: u64, rng: &mut StdRng, ids: &mut Vec<NodeId>) -> Params {
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
            link,
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics: which protocol paths ran

#[derive(Clone, Debug, Default)]
struct Stats {
    seeds: u64,
    writes: u64,
    crashes: u64,
    partitions: u64,
    silent_cuts: u64,
    resets: u64,
    shutdowns: u64,
    timeouts: u64,
    connects: u64,
    catch_ups: u64,
    multi_batch_catch_ups: u64,
    resumed_digests: u64,
    key_order_catch_ups: u64,
    log_order_catch_ups: u64,
    key_order_resumes: u64,
    lag_fallbacks: u64,
    feed_lagged: u64,
    split_frames: u64,
    conflicts: u64,
    sent: BTreeMap<&'static str, u64>,
    steps: u64,
    sim_ms: u64,
    /// Digest of the final state of one run (not summed).
    fingerprint: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.writes += o.writes;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.silent_cuts += o.silent_cuts;
        self.resets += o.resets;
        self.shutdowns += o.shutdowns;
        self.timeouts += o.timeouts;
        self.connects += o.connects;
        self.catch_ups += o.catch_ups;
        self.multi_batch_catch_ups += o.multi_batch_catch_ups;
        self.resumed_digests += o.resumed_digests;
        self.key_order_catch_ups += o.key_order_catch_ups;
        self.log_order_catch_ups += o.log_order_catch_ups;
        self.key_order_resumes += o.key_order_resumes;
        self.lag_fallbacks += o.lag_fallbacks;
        self.feed_lagged += o.feed_lagged;
        self.split_frames += o.split_frames;
        self.conflicts += o.conflicts;
        for (k, v) in &o.sent {
            *self.sent.entry(k).or_default() += v;
        }
        self.steps += o.steps;
        self.sim_ms += o.sim_ms;
    }
}

// ---------------------------------------------------------------------------
// Nodes and connections

struct Node {
    id: NodeId,
    dir: tempfile::TempDir,
    clock: Arc<SimClock>,
    db: Option<Db>,
    /// When a crashed node comes back.
    restart_at: u64,
}

/// One side of a connection: the feed subscription (taken before the link
/// was created), the protocol state machine and the undecoded bytes received.
struct End {
    sub: Subscription,
    link: Link,
    rx: Vec<u8>,
}

struct InFlight {
    at: u64,
    bytes: Vec<u8>,
    ping: bool,
}

/// Per-direction bookkeeping for statistics.
#[derive(Default)]
struct Direction {
    caught_up: bool,
    batches: u64,
}

struct Conn {
    id: u64,
    nodes: [usize; 2],
    /// `None`: that side's process crashed; the other side has not noticed.
    ends: [Option<End>; 2],
    /// `queues[i]` carries bytes from `ends[i]` to `ends[1 - i]`.
    queues: [VecDeque<InFlight>; 2],
    dirs: [Direction; 2],
    /// Partitioned without a reset: nothing is delivered.
    frozen: bool,
    /// Reset: dropped at the end of the step.
    dead: bool,
}

impl Conn {
    fn side_of(&self, node: usize) -> Option<usize> {
        self.nodes.iter().position(|&n| n == node)
    }

    fn pair(&self) -> (usize, usize) {
        (self.nodes[0].min(self.nodes[1]), self.nodes[0].max(self.nodes[1]))
    }
}

/// A fresh directory for one store: under `MESHKV_SIM_DIR` if set, else on
/// tmpfs (`/dev/shm`) when there is one, else in the system temp directory.
/// The simulated crashes are process crashes, so what fsync guarantees is not
/// under test here (`crash_recovery.rs` covers it), and on a disk the fsyncs
/// of opening stores would take most of the run time.
fn store_dir() -> tempfile::TempDir {
    let base = std::env::var_os("MESHKV_SIM_DIR").map(std::path::PathBuf::from).or_else(|| {
        let shm = Path::new("/dev/shm");
        shm.is_dir().then(|| shm.to_path_buf())
    });
    match base {
        Some(base) => tempfile::Builder::new()
            .prefix("meshkv-sim-")
            .tempdir_in(&base)
            .or_else(|_| tempfile::tempdir())
            .expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

fn order_key(v: &Version) -> (Hlc, NodeId, u64) {
    (v.hlc, v.dot.origin, v.dot.seq)
}

// ---------------------------------------------------------------------------
// The simulation

struct Sim {
    seed: u64,
    rng: StdRng,
    now: u64,
    time: Arc<AtomicU64>,
    p: Params,
    nodes: Vec<Node>,
    topology: BTreeSet<(usize, usize)>,
    cut: BTreeSet<(usize, usize)>,
    conns: Vec<Conn>,
    next_conn: u64,
    reconnect_at: BTreeMap<(usize, usize), u64>,
    /// Every write ever made, by key: the version as stored on its origin.
    writes: BTreeMap<String, Vec<Version>>,
    write_count: u64,
    next_check: u64,
    stats: Stats,
    trace: bool,
}

struct Activity {
    delivered: usize,
    sent: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        let p = Params::draw(seed, &mut rng, &mut ids);
        let time = Arc::new(AtomicU64::new(0));
        let trace = std::env::var_os("MESHKV_SIM_TRACE").is_some();
        let mut nodes = Vec::new();
        for &id in &ids {
            let dir = store_dir();
            let clock = Arc::new(SimClock { time: time.clone(), skew: AtomicU64::new(rng.random_range(0..=2_000)) });
            nodes.push(Node { id, dir, clock, db: None, restart_at: 0 });
        }
        let n = p.nodes;
        let topology: BTreeSet<(usize, usize)> = match p.topology {
            Topology::Mesh => (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect(),
            Topology::Chain => {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                order.windows(2).map(|w| (w[0].min(w[1]), w[0].max(w[1]))).collect()
            }
            Topology::Star => {
                let hub = rng.random_range(0..n);
                (0..n).filter(|&o| o != hub).map(|o| (hub.min(o), hub.max(o))).collect()
            }
        };
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            time,
            p,
            nodes,
            topology,
            cut: BTreeSet::new(),
            conns: Vec::new(),
            next_conn: 0,
            reconnect_at: BTreeMap::new(),
            writes: BTreeMap::new(),
            write_count: 0,
            next_check: 250,
            stats: Stats { seeds: 1, ..Stats::default() },
            trace,
        };
        sim.log(|| format!("params {:?}\nnode ids {ids:?}\ntopology {:?}", sim.p, sim.topology));
        for i in 0..n {
            sim.open(i);
        }
        sim
    }

    fn log(&self, f: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[seed {} t={}] {}", self.seed, self.now, f());
        }
    }

    fn options(&self, i: usize) -> Options {
        Options {
            policy: self.p.policy.conflict_policy(),
            feed_capacity: self.p.feed_capacity,
            clock: self.nodes[i].clock.clone(),
            new_node_id: Some(self.nodes[i].id),
            ..Options::default()
        }
    }

    fn open(&mut self, i: usize) {
        let opts = self.options(i);
        let node = &self.nodes[i];
        let db = Db::open(node.dir.path(), opts)
            .unwrap_or_else(|e| panic!("node {i}: (re)open failed (a Db clone leaked past the crash?): {e}"));
        assert_eq!(db.node_id(), node.id, "node {i}: the requested node id was not adopted");
        let vv = db.version_vector();
        for (key, w) in self.writes.iter().flat_map(|(k, ws)| ws.iter().map(move |w| (k, w))) {
            if w.dot.origin != node.id {
                continue;
            }
            assert!(
                vv.contains(w.dot),
                "node {i}: acknowledged write {} of {key:?} lost across restart (vv {vv})",
                w.dot
            );
        }
        self.nodes[i].db = Some(db);
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].db.is_some()
    }

    fn run(mut self) -> Stats {
        while self.now < self.p.chaos_ms {
            self.step(true);
        }
        self.log(|| "---- heal ----".into());
        self.heal();
        self.check_converged();
        for node in &self.nodes {
            if let Some(db) = &node.db {
                self.stats.conflicts += db.conflict_count();
            }
        }
        self.stats.sim_ms = self.now;
        self.stats.writes = self.write_count;
        self.stats.fingerprint = self.fingerprint();
        self.stats
    }

    fn step(&mut self, chaos: bool) -> Activity {
        let dt = self.rng.random_range(1..=self.p.step_max);
        self.now += dt;
        self.time.store(self.now, Ordering::Relaxed);
        self.stats.steps += 1;
        if chaos {
            self.chaos(dt);
        }
        for i in 0..self.nodes.len() {
            if !self.up(i) && self.nodes[i].restart_at <= self.now {
                self.restart(i);
            }
        }
        self.reconnect();
        let delivered = self.deliver();
        self.tick();
        self.pump(chaos);
        let sent = self.transmit(chaos);
        self.events();
        self.conns.retain(|c| !c.dead && c.ends.iter().any(|e| e.as_ref().is_some_and(|e| !e.link.is_closed())));
        Activity { delivered, sent }
    }

    // -- faults and workload ------------------------------------------------

    /// Whether an event of `rate` per ms happens within `dt` ms.
    fn happens(&mut self, rate: f64, dt: u64) -> bool {
        rate > 0.0 && self.rng.random_bool((rate * dt as f64).min(1.0))
    }

    fn chaos(&mut self, dt: u64) {
        if self.happens(self.p.write_rate, dt) {
            self.write();
        }
        if self.happens(self.p.crash_rate, dt) {
            let up: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.up(i)).collect();
            if !up.is_empty() {
                let i = up[self.rng.random_range(0..up.len())];
                self.crash(i);
            }
        }
        if self.happens(self.p.partition_rate, dt) {
            self.repartition();
        }
        if !self.conns.is_empty() && self.happens(self.p.shutdown_rate, dt) {
            let c = self.rng.random_range(0..self.conns.len());
            let side = self.rng.random_range(0..2);
            if let Some(end) = self.conns[c].ends[side].as_mut() {
                if !end.link.is_closed() {
                    end.link.close(CloseReason::Shutdown);
                    self.stats.shutdowns += 1;
                    let nodes = self.conns[c].nodes;
                    self.log(|| format!("node {} shuts down its link to {}", nodes[side], nodes[1 - side]));
                }
            }
        }
        if self.now >= self.next_check {
            self.next_check = self.now + 250;
            self.check_coverage();
        }
    }

    fn write(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.up(i)).collect();
        if up.is_empty() {
            return;
        }
        let i = up[self.rng.random_range(0..up.len())];
        let nops = if self.rng.random_bool(0.2) { self.rng.random_range(2..=3).min(self.p.keys.len()) } else { 1 };
        let mut key_idx: Vec<usize> = (0..self.p.keys.len()).collect();
        for j in (1..key_idx.len()).rev() {
            key_idx.swap(j, self.rng.random_range(0..=j));
        }
        let mut ops = Vec::new();
        for &k in &key_idx[..nops] {
            let key = self.p.keys[k].clone();
            let value = if self.rng.random_bool(0.25) {
                None
            } else {
                let mut v = format!("n{i}-w{}", self.write_count + ops.len() as u64).into_bytes();
                if self.rng.random_bool(0.1) {
                    v.resize(300, b'.');
                }
                Some(v)
            };
            ops.push((key, value));
        }
        let db = self.nodes[i].db.clone().expect("up");
        let last = if nops == 1 {
            let (key, value) = ops[0].clone();
            match value {
                Some(v) => db.put(key, v),
                None => db.delete(key),
            }
            .expect("write")
        } else {
            let mut batch = Batch::new();
            for (key, value) in &ops {
                match value {
                    Some(v) => batch.put(key.clone(), v.clone()),
                    None => batch.delete(key.clone()),
                };
            }
            db.write(batch).expect("write").expect("non-empty batch")
        };
        for (j, (key, value)) in ops.into_iter().enumerate() {
            let dot = Dot::new(self.nodes[i].id, last.seq - (nops - 1 - j) as u64);
            let rec = db.get_record(&key).expect("get_record").expect("just written");
            assert!(
                rec.versions().len() == 1 && rec.winner().dot == dot && rec.winner().value == value,
                "node {i}: a local write of {key:?} did not produce a single version {dot}: {}",
                show(&Some(rec.clone()))
            );
            self.log(|| format!("node {i} writes {key:?} = {} as {dot}", show_value(&value)));
            self.writes.entry(key).or_default().push(rec.winner().clone());
            self.write_count += 1;
        }
    }

    fn crash(&mut self, i: usize) {
        let mut silent = 0;
        for conn in &mut self.conns {
            let Some(side) = conn.side_of(i) else { continue };
            if self.rng.random_bool(0.5) {
                conn.dead = true; // the peer sees a reset
            } else {
                // The peer hears nothing more and times out; bytes already
                // on the wire from the dead process still arrive.
                conn.ends[side] = None;
                conn.queues[1 - side].clear();
                silent += 1;
            }
        }
        self.conns.retain(|c| !c.dead);
        if let Some(db) = self.nodes[i].db.take() {
            self.stats.conflicts += db.conflict_count();
        }
        self.nodes[i].restart_at = self.now + self.rng.random_range(50..=800);
        self.stats.crashes += 1;
        self.log(|| format!("node {i} crashes ({silent} peers left to time out)"));
    }

    fn restart(&mut self, i: usize) {
        // Lingering connections of the old process are reset by the new one.
        self.conns.retain(|c| c.side_of(i).is_none());
        if self.rng.random_bool(0.3) {
            // The wall clock may have been stepped, even backwards.
            self.nodes[i].clock.skew.store(self.rng.random_range(0..=3_000), Ordering::Relaxed);
        }
        self.open(i);
        self.log(|| format!("node {i} restarts"));
    }

    fn repartition(&mut self) {
        let n = self.nodes.len();
        let pairs = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b)));
        let cut: BTreeSet<(usize, usize)> = match self.rng.random_range(0..3) {
            0 => BTreeSet::new(),
            1 => {
                let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                pairs.filter(|&(a, b)| side[a] != side[b]).collect()
            }
            _ => pairs.filter(|_| self.rng.random_bool(0.4)).collect(),
        };
        for conn in &mut self.conns {
            let cut_now = cut.contains(&conn.pair());
            if cut_now && !conn.frozen {
                if self.rng.random_bool(0.5) {
                    conn.dead = true;
                    self.stats.resets += 1;
                } else {
                    conn.frozen = true;
                    self.stats.silent_cuts += 1;
                }
            } else if !cut_now {
                conn.frozen = false;
            }
        }
        self.stats.partitions += 1;
        self.log(|| format!("partition: cut {cut:?}"));
        self.cut = cut;
    }

    // -- the network ------------------------------------------------------------

    fn reconnect(&mut self) {
        let edges: Vec<(usize, usize)> = self.topology.iter().copied().collect();
        for (a, b) in edges {
            if self.conns.iter().any(|c| c.pair() == (a, b)) {
                continue;
            }
            if !self.up(a) || !self.up(b) || self.cut.contains(&(a, b)) {
                self.reconnect_at.remove(&(a, b));
                continue;
            }
            match self.reconnect_at.get(&(a, b)) {
                None => {
                    let at = self.now + self.rng.random_range(5..=200);
                    self.reconnect_at.insert((a, b), at);
                }
                Some(&at) if at <= self.now => {
                    self.reconnect_at.remove(&(a, b));
                    self.connect(a, b);
                }
                Some(_) => {}
            }
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        let end = |i: usize| {
            let db = self.nodes[i].db.clone().expect("up");
            // Subscribe first, so the link misses no commit after its creation.
            let sub = db.subscribe(KeyRange::all());
            End { sub, link: Link::new(db, self.p.link.clone(), self.now), rx: Vec::new() }
        };
        let ends = [Some(end(a)), Some(end(b))];
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.push(Conn {
            id,
            nodes: [a, b],
            ends,
            queues: [VecDeque::new(), VecDeque::new()],
            dirs: [Direction::default(), Direction::default()],
            frozen: false,
            dead: false,
        });
        self.log(|| format!("conn {id}: {a} <-> {b} opened"));
    }

    /// Delivers what is due; checks coverage (I3) on the receiver after
    /// every message.
    fn deliver(&mut self) -> usize {
        let now = self.now;
        let lww = matches!(self.p.policy, Policy::Lww);
        let mut moved = 0;
        for conn in &mut self.conns {
            if conn.frozen || conn.dead {
                continue;
            }
            for from in 0..2 {
                let to = 1 - from;
                while conn.queues[from].front().is_some_and(|m| m.at <= now) {
                    let m = conn.queues[from].pop_front().expect("front");
                    if !m.ping {
                        moved += 1;
                    }
                    let Some(end) = conn.ends[to].as_mut() else { continue };
                    end.rx.extend_from_slice(&m.bytes);
                    loop {
                        let (msg, used) = match codec::decode(&end.rx, codec::DEFAULT_MAX_FRAME) {
                            Ok(Some(frame)) => frame,
                            Ok(None) => break,
                            Err(e) => panic!("conn {}: node {} cannot decode a frame: {e}", conn.id, conn.nodes[to]),
                        };
                        end.rx.drain(..used);
                        if self.trace {
                            eprintln!(
                                "[seed {} t={now}] conn {}: {} -> {} {}",
                                self.seed,
                                conn.id,
                                conn.nodes[from],
                                conn.nodes[to],
                                describe(&msg)
                            );
                        }
                        if let Err(e) = end.link.handle_message(msg, now) {
                            panic!("conn {}: node {} rejected a message: {e}", conn.id, conn.nodes[to]);
                        }
                        let node = conn.nodes[to];
                        if let Some(db) = &self.nodes[node].db {
                            check_coverage(node, db, &self.writes, lww);
                        }
                    }
                }
            }
        }
        moved
    }

    fn tick(&mut self) {
        for conn in &mut self.conns {
            for end in conn.ends.iter_mut().flatten() {
                end.link.handle_tick(self.now);
            }
        }
    }

    fn pump(&mut self, chaos: bool) {
        for conn in &mut self.conns {
            for end in conn.ends.iter_mut().flatten() {
                if chaos && self.p.pump_p < 1.0 && !self.rng.random_bool(self.p.pump_p) {
                    continue; // a slow consumer of the change feed
                }
                loop {
                    match end.sub.try_recv_commit() {
                        Ok(Some(commit)) => end.link.handle_commit(commit),
                        Ok(None) => break,
                        Err(FeedError::Lagged { .. }) => {
                            self.stats.feed_lagged += 1;
                            end.link.handle_feed_lagged();
                        }
                        Err(e) => panic!("conn {}: feed failed: {e}", conn.id),
                    }
                }
            }
        }
    }

    fn transmit(&mut self, chaos: bool) -> usize {
        let mut sent = 0;
        let mut conns = std::mem::take(&mut self.conns);
        'conns: for conn in &mut conns {
            if conn.dead {
                continue;
            }
            for from in 0..2 {
                while let Some(end) = conn.ends[from].as_mut() {
                    let msg = match end.link.poll_transmit(self.now) {
                        Ok(Some(msg)) => msg,
                        Ok(None) => break,
                        Err(e) => {
                            panic!("conn {}: node {} failed to produce a message: {e}", conn.id, conn.nodes[from])
                        }
                    };
                    observe_sent(&mut self.stats, &mut conn.dirs[from], &msg);
                    if chaos && self.p.reset_p > 0.0 && self.rng.random_bool(self.p.reset_p) {
                        // A lost message: the connection is reset right here.
                        conn.dead = true;
                        self.stats.resets += 1;
                        self.log(|| format!("conn {}: reset while sending {}", conn.id, msg.kind()));
                        continue 'conns;
                    }
                    let ping = matches!(msg, Message::Ping);
                    if !ping {
                        sent += 1;
                    }
                    self.enqueue(&mut conn.queues[from], &msg, ping);
                }
            }
        }
        self.conns = conns;
        sent
    }

    fn enqueue(&mut self, queue: &mut VecDeque<InFlight>, msg: &Message, ping: bool) {
        let mut bytes = Vec::new();
        codec::encode(msg, &mut bytes);
        let mut delay = self.rng.random_range(0..=self.p.delay_max);
        if self.rng.random_bool(self.p.spike_p) {
            delay += self.rng.random_range(50..=250);
        }
        let at = (self.now + delay).max(queue.back().map_or(0, |m| m.at));
        if bytes.len() > 1 && self.rng.random_bool(self.p.split_p) {
            let tail = bytes.split_off(self.rng.random_range(1..bytes.len()));
            let later = at + self.rng.random_range(0..=5);
            queue.push_back(InFlight { at, bytes, ping });
            queue.push_back(InFlight { at: later, bytes: tail, ping });
            self.stats.split_frames += 1;
        } else {
            queue.push_back(InFlight { at, bytes, ping });
        }
    }

    fn events(&mut self) {
        for conn in &mut self.conns {
            for side in 0..2 {
                let Some(end) = conn.ends[side].as_mut() else { continue };
                while let Some(ev) = end.link.poll_event() {
                    match ev {
                        LinkEvent::Connected { .. } => self.stats.connects += 1,
                        LinkEvent::CaughtUp { .. } => self.stats.catch_ups += 1,
                        LinkEvent::Closed { reason, by_peer } => {
                            match reason {
                                CloseReason::Timeout if !by_peer => self.stats.timeouts += 1,
                                CloseReason::Timeout | CloseReason::Shutdown => {}
                                other => panic!(
                                    "conn {}: link of node {} closed with {other:?} (by peer: {by_peer})",
                                    conn.id, conn.nodes[side]
                                ),
                            }
                            if self.trace {
                                eprintln!(
                                    "[seed {} t={}] conn {}: node {} closed ({reason:?}, by peer: {by_peer})",
                                    self.seed, self.now, conn.id, conn.nodes[side]
                                );
                            }
                        }
                        // Simulated nodes do not exchange peers.
                        other => panic!("conn {}: unexpected {other:?}", conn.id),
                    }
                }
            }
        }
    }

    // -- healing and checks -------------------------------------------------------

    fn heal(&mut self) {
        self.cut.clear();
        for conn in &mut self.conns {
            conn.frozen = false;
        }
        for i in 0..self.nodes.len() {
            if !self.up(i) {
                self.restart(i);
            }
        }
        let deadline = self.now + HEAL_BUDGET_MS;
        let mut quiet = 0;
        while quiet < 2 {
            let act = self.step(false);
            quiet = if act.delivered == 0 && act.sent == 0 && self.settled() { quiet + 1 } else { 0 };
            if self.now > deadline {
                panic!("no quiescence {HEAL_BUDGET_MS} ms after healing:\n{}", self.dump());
            }
        }
    }

    /// Every neighbour pair connected, handshakes done, senders live and
    /// nothing but pings in flight.
    fn settled(&self) -> bool {
        (0..self.nodes.len()).all(|i| self.up(i))
            && self.topology.iter().all(|&pair| {
                self.conns.iter().any(|c| {
                    c.pair() == pair
                        && !c.frozen
                        && c.ends.iter().all(|e| {
                            e.as_ref().is_some_and(|e| {
                                !e.link.is_closed() && e.link.peer().is_some() && e.link.is_sender_live()
                            })
                        })
                        && c.queues.iter().all(|q| q.iter().all(|m| m.ping))
                })
            })
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let vv = node.db.as_ref().map(|d| d.version_vector().to_string());
            s += &format!("  node {i} {}: vv {vv:?}\n", node.id);
        }
        for c in &self.conns {
            let end = |e: &Option<End>| match e {
                None => "dead".to_string(),
                Some(e) => format!(
                    "closed={} peer={} live={} items={:?}",
                    e.link.is_closed(),
                    e.link.peer().is_some(),
                    e.link.is_sender_live(),
                    e.link.item_counts()
                ),
            };
            s += &format!(
                "  conn {} {:?}: [{}] [{}] in flight {}/{} frozen={}\n",
                c.id,
                c.nodes,
                end(&c.ends[0]),
                end(&c.ends[1]),
                c.queues[0].len(),
                c.queues[1].len(),
                c.frozen
            );
        }
        s
    }

    /// ALGORITHM.md I3: `vv[o] >= s` means every write of `o` up to `s` is
    /// held here or dominated (superseded, or beaten under LWW).
    fn check_coverage(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(db) = &node.db {
                check_coverage(i, db, &self.writes, matches!(self.p.policy, Policy::Lww));
            }
        }
    }

    /// The oracle: the record every node must hold for `key` after healing.
    fn expected(&self, key: &str) -> Option<(Vec<Version>, Dot)> {
        let all: Vec<&Version> = self.writes.get(key).map(|ws| ws.iter().collect()).unwrap_or_default();
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

    fn check_converged(&self) {
        let dbs: Vec<&Db> = self.nodes.iter().map(|n| n.db.as_ref().expect("all up after healing")).collect();
        let mut expected_vv = VersionVector::new();
        for w in self.writes.values().flatten() {
            expected_vv.raise(w.dot.origin, w.dot.seq);
        }
        for (i, db) in dbs.iter().enumerate() {
            let report = db.verify().expect("verify");
            assert!(report.is_ok(), "node {i}: verify found problems: {:?}", report.problems);
            let vv = db.version_vector();
            assert_eq!(vv, expected_vv, "node {i}: version vector differs from the set of all writes made");
        }
        for key in &self.p.keys {
            let recs: Vec<Option<Record>> = dbs.iter().map(|db| db.get_record(key).expect("get_record")).collect();
            for (i, rec) in recs.iter().enumerate().skip(1) {
                assert!(
                    rec == &recs[0],
                    "{key:?}: node {i} and node 0 hold different records:\n  node {i}: {}\n  node 0: {}",
                    show(rec),
                    show(&recs[0])
                );
            }
            match (self.expected(key), &recs[0]) {
                (None, None) => {}
                (None, Some(r)) => panic!("{key:?} was never written but nodes hold {}", show(&Some(r.clone()))),
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
        for (i, db) in dbs.iter().enumerate() {
            let live: Vec<(Vec<u8>, Vec<u8>)> =
                db.scan(Default::default()).map(|e| e.expect("scan")).map(|e| (e.key, e.value)).collect();
            assert_eq!(live, expected_live, "node {i}: scan differs from the oracle's live keys");
        }
    }

    /// A digest of the final state, to check that a seed replays exactly.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for node in &self.nodes {
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
fn check_coverage(i: usize, db: &Db, writes: &BTreeMap<String, Vec<Version>>, lww: bool) {
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

fn show_value(value: &Option<Vec<u8>>) -> String {
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

fn show(rec: &Option<Record>) -> String {
    match rec {
        None => "no record".into(),
        Some(r) => format!(
            "record [{}] winner {}",
            r.versions().iter().map(show_version).collect::<Vec<_>>().join(", "),
            r.winner().dot
        ),
    }
}

fn describe(msg: &Message) -> String {
    match msg {
        Message::Digest { vv, resume } => format!("digest vv {vv} resume {resume:?}"),
        Message::CatchUpStart { since, snapshot, order } => {
            format!("catch-up-start since {since} snapshot {snapshot} order {order:?}")
        }
        Message::CatchUp { id, items, position } => {
            format!("catch-up #{id} {} items, position {position:?}", items.len())
        }
        Message::CaughtUp { id, vv } => format!("caught-up #{id} vv {vv}"),
        Message::Live { id, items, vv } => format!("live #{id} {} items, vv {vv}", items.len()),
        Message::Ack { id } => format!("ack #{id}"),
        other => other.kind().to_string(),
    }
}

fn observe_sent(stats: &mut Stats, dir: &mut Direction, msg: &Message) {
    *stats.sent.entry(msg.kind()).or_default() += 1;
    match msg {
        Message::Digest { resume: Some(_), .. } => stats.resumed_digests += 1,
        Message::CatchUpStart { order, .. } => {
            match order {
                CatchUpOrder::Log => stats.log_order_catch_ups += 1,
                CatchUpOrder::Key { skip: None } => stats.key_order_catch_ups += 1,
                CatchUpOrder::Key { skip: Some(_) } => {
                    stats.key_order_catch_ups += 1;
                    stats.key_order_resumes += 1;
                }
            }
            if dir.caught_up {
                stats.lag_fallbacks += 1; // a second catch-up on one connection
            }
            dir.batches = 0;
        }
        Message::CatchUp { .. } => dir.batches += 1,
        Message::CaughtUp { .. } => {
            if dir.batches >= 2 {
                stats.multi_batch_catch_ups += 1;
            }
            dir.caught_up = true;
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Test entry points

/// Seeds requested by the environment: `MESHKV_SIM_SEED=<n>` (replay one)
/// or `MESHKV_SIM_SEEDS=<a>..<b>` (a longer soak).
fn env_seeds() -> Option<Range<u64>> {
    let num = |var: &str, raw: &str| -> u64 {
        raw.trim().parse().unwrap_or_else(|_| panic!("{var}={raw:?} is not a number or a range a..b"))
    };
    if let Ok(raw) = std::env::var("MESHKV_SIM_SEED") {
        let seed = num("MESHKV_SIM_SEED", &raw);
        return Some(seed..seed + 1);
    }
    let raw = std::env::var("MESHKV_SIM_SEEDS").ok()?;
    let (a, b) = raw.split_once("..").unwrap_or_else(|| panic!("MESHKV_SIM_SEEDS={raw:?} is not a range a..b"));
    Some(num("MESHKV_SIM_SEEDS", a)..num("MESHKV_SIM_SEEDS", b))
}

/// Runs one seed; a failure names the seed and how to replay it.
fn run_seed(seed: u64) -> Result<Stats, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| Sim::new(seed).run())).map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        format!(
            "simulation seed {seed} failed: {msg}\n  replay: MESHKV_SIM_SEED={seed} cargo test -p meshkv --test simulation \
             (MESHKV_SIM_TRACE=1 ... -- --nocapture for a trace)"
        )
    })
}

fn run_seeds(name: &str, seeds: Range<u64>) -> Stats {
    let mut total = Stats::default();
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for seed in seeds {
        match run_seed(seed) {
            Ok(s) => total.add(&s),
            Err(msg) => {
                eprintln!("{msg}");
                failures.push(msg);
                if failures.len() >= 10 {
                    break;
                }
            }
        }
    }
    println!("{name}: {:.1} s, {total:#?}", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} seed(s) failed:\n{}", failures.len(), failures.join("\n"));
    total
}

/// Runs a range of seeds (skipped when replaying one seed) and checks that
/// the range exercised the protocol paths the simulation exists for.
fn seed_range(name: &str, seeds: Range<u64>) {
    if env_seeds().is_some() {
        return;
    }
    let s = run_seeds(name, seeds);
    let exercised = [
        ("crash/restart", s.crashes),
        ("partitions", s.partitions),
        ("silent partitions", s.silent_cuts),
        ("connection resets", s.resets),
        ("idle timeouts", s.timeouts),
        ("graceful shutdowns", s.shutdowns),
        ("multi-batch catch-ups", s.multi_batch_catch_ups),
        ("resumed catch-ups", s.resumed_digests),
        ("key-order catch-ups", s.key_order_catch_ups),
        ("log-order catch-ups", s.log_order_catch_ups),
        ("resumed key-order catch-ups", s.key_order_resumes),
        ("queue-overflow re-catch-ups", s.lag_fallbacks),
        ("change-feed lag", s.feed_lagged),
        ("split frames", s.split_frames),
        ("conflicts", s.conflicts),
    ];
    for (path, count) in exercised {
        assert!(count > 0, "{name}: no seed exercised {path}; the simulation lost coverage");
    }
}

#[test]
fn seeds_000_to_049() {
    seed_range("seeds 0..50", 0..50);
}

#[test]
fn seeds_050_to_099() {
    seed_range("seeds 50..100", 50..100);
}

#[test]
fn seeds_100_to_149() {
    seed_range("seeds 100..150", 100..150);
}

#[test]
fn seeds_150_to_199() {
    seed_range("seeds 150..200", 150..200);
}

/// The same seed makes the same run: same messages, faults and final state.
#[test]
fn a_seed_replays_exactly() {
    if env_seeds().is_some() {
        return;
    }
    for seed in [3, 8, 16] {
        let a = run_seed(seed).unwrap_or_else(|e| panic!("{e}"));
        let b = run_seed(seed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "seed {seed} is not deterministic");
    }
}

/// `MESHKV_SIM_SEED=<seed>` replays exactly one seed (any u64);
/// `MESHKV_SIM_SEEDS=<a>..<b>` runs a range (the other tests then skip).
#[test]
fn seeds_from_env() {
    if let Some(seeds) = env_seeds() {
        run_seeds(&format!("seeds {seeds:?}"), seeds);
    }
}
