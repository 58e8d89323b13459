//! Deterministic simulation of a meshkv cluster.
//!
//! 3–5 real stores (fjall, in temporary directories) replicate through the
//! very same sans-IO protocol code the TCP runtime uses
//! (`meshkv::protocol::Link`), over a simulated network driven by one seeded
//! random generator and a simulated clock:
//!
//! - **time** is simulated milliseconds; every store's wall clock is a
//!   [`SimClock`](params::SimClock) (the shared simulated time plus a per-node skew), so HLCs
//!   are deterministic. Node ids are drawn from the seed too (`Options::new_node_id`), so a seed
//!   replays the same run. In one seed of three (`seed % 3 == 2`) every node but node 0 runs
//!   3 minutes ahead of it, beyond the 60 s a clock adopts (the slow node's overwrites must still
//!   order after what they supersede under last-writer-wins).
//! - **connections** are a pair of `Link`s with one FIFO queue of bytes per
//!   direction. Every message goes through `codec::encode`/`codec::decode`,
//!   sometimes split into two pieces (partial frames). Each message gets a
//!   random delay (with occasional spikes); FIFO order is kept. As in the
//!   runtime, a link is told when another message is already waiting, so a
//!   key-order catch-up gathers batches (acknowledged before they are applied).
//! - **loss**: TCP is ordered and reliable within a connection, so a lost
//!   message is modelled as the connection being reset at that point: both
//!   `Link`s are dropped and everything in flight is discarded.
//! - **partitions** cut a random subset of node pairs (a random split or
//!   random pairs). A cut connection is either reset at once or goes silent
//!   (nothing is delivered; if the partition heals before the idle timeout,
//!   TCP delivers what was queued, otherwise both links time out). Cut pairs
//!   cannot reconnect until the partition heals.
//! - **crashes**: a node's `Db`, `Link`s and feed subscriptions are dropped
//!   without what a clean close writes (`Db::close_as_if_crashed`: held-back
//!   log entries and the exact seq reservation are left to the next open)
//!   and the store is reopened later from the same directory (what was
//!   acknowledged survives; what was in flight to it is lost; `verify()`
//!   must be clean right after the reopen). Its peers see
//!   either a reset or silence (then their idle timeout fires). The node's
//!   clock may jump on restart.
//! - **reconnects** happen after a random backoff whenever two nodes that are
//!   neighbours in the topology are up, not cut, and not connected.
//!   Topologies: full mesh, or a chain or a star (transitive delivery).
//! - **link modes**: in two seeds of five, each topology edge has, with
//!   probability 1/2, a pair of modes other than sync/sync. As the handshake
//!   decides, data flows from X to Y iff X's mode sends (sync, push) and Y's
//!   receives (sync, pull), so an edge carries data one way (push/sync,
//!   push/pull, sync/pull, …) or none (push/push, pull/pull). Edges are
//!   turned back to sync/sync until the directed data flow is strongly
//!   connected both over all nodes and over all but the node that leaves:
//!   only then can the healed cluster converge. A link that will not send
//!   drops its feed subscription at the handshake, as the runtime's does.
//! - **membership**: in one seed of four a node starts with an empty store
//!   only after writes were made (at a random point of the run, or at the
//!   heal: a pure catch-up); in odd seeds it starts instead from a copy of
//!   the first other store that crashed before it joins (a node seeded from
//!   a backup of another: the copy takes the joiner's id, and what it holds
//!   of lost origins counts as kept). In about one of seven a node leaves for good (one
//!   whose absence keeps the topology connected; possibly before the late
//!   joiner starts, which must then get that node's writes through others).
//!   In one of five a node's directory is deleted and it comes back
//!   50–800 ms later as an empty store with a new node id, or, in even
//!   seeds, at once from a backup: a copy of its directory taken when it
//!   crashed at (or first after) half the wipe's time: the copy is detected and takes a new node id (the
//!   one the seed asks for), holds the lost origin's writes up to the
//!   backup, and receives the rest of them that peers hold. A departure or a
//!   wipe waits until every other store is open (and is dropped if the chaos
//!   ends first); the process dies, its peers see a reset or silence, and
//!   every byte in flight to or from it is lost.
//! - **workload**: random puts, deletes and small multi-key batches on a few
//!   overlapping keys, on random live nodes. Every write's version (dot, HLC,
//!   causal context, value) is read back on its origin right after the write.
//! - **flow control**: small windows, batches and live queues (so multi-batch
//!   catch-ups, the queue-overflow re-catch-up and resumable catch-ups run),
//!   and sometimes a tiny change-feed ring with a slow consumer (the feed's
//!   own `Lagged` path).
//! - **ingestion**: in every other block of eight seeds a key-order batch
//!   bringing two fresh keys is written straight into engine tables (the
//!   bootstrap path, with its held-back change-log entries), so crashes,
//!   local writes and re-sent batches meet it.
//!
//! Throughout the run the coverage invariant (ALGORITHM.md I3) is checked on
//! the receiving node after every delivered message, and on every live node
//! periodically: a vector that covers a write the node does not hold is a
//! permanent loss in general, but a later overwrite of the key can hide it
//! from the final comparison, so it is caught where it happens. Then the run heals (no more writes,
//! faults or partitions; every node up but one that left, the late joiner
//! started; the data flow stays strongly connected) and is driven until
//! quiescent: every neighbour pair connected with both senders live, nothing
//! but pings in flight, nothing left to send. Then every remaining node must
//! hold identical records and version vectors, `verify()` must be clean, I3
//! must hold against every write ever made, and each key's record must equal
//! the oracle: the frontier of the *demanded* writes to the key (those no other
//! demanded write causally supersedes) resolved by the policy — under
//! last-writer-wins the single greatest by `(hlc, origin, seq)`. Last, every
//! connection is dropped and the cluster driven until quiescent again: nodes
//! in sync must send each other no records (I6), also when they hold writes
//! of a lost origin that no vector can cover.
//!
//! A write is demanded unless its origin's store was lost (left or wiped)
//! before any remaining store held it. At each loss every other store is
//! open (and a restored one too), and the harness reads off them which
//! writes of lost origins their records still hold: those stay demanded,
//! the rest do not. A write that
//! only reached a peer's memory is lost with it (key-order batches gathered
//! but not yet applied are acknowledged, yet die with the connection); one
//! that reached a peer's store and was superseded there no longer matters to
//! any record. Likewise the version vectors must end at: for an origin whose
//! store is there, its last write; for a lost origin, the highest coverage of
//! it any remaining store had at the last loss (only peers' vectors can raise
//! it, and none of them has more).
//!
//! The conflict policy is part of the seed (`seed % 8`: 0 = `PreferNodes`,
//! 1 = a `Resolver`, otherwise last-writer-wins). Modes and membership
//! changes (and the choices made when they happen) come from a second
//! generator seeded from the seed, so they shift none of the other draws: a
//! seed that draws none of them runs as if they did not exist.
//!
//! `cargo test` runs seeds 0..200 (four tests of 50, in parallel) and the
//! regression seeds (`regression_seeds`: seeds that catch bugs planted back
//! into the protocol or the store, found by soaking). A failing
//! seed is reported with its replay command:
//! `MESHKV_SIM_SEED=<seed> cargo test -p meshkv --test simulation`
//! (add `MESHKV_SIM_TRACE=1` and `-- --nocapture` for a step-by-step trace);
//! `MESHKV_SIM_SEEDS=<a>..<b>` runs a longer soak. Stores live on tmpfs when
//! there is one (see [`store_dir`](sim::network::store_dir)); `MESHKV_SIM_DIR` overrides the place.

mod params;
mod sim;
mod stats;

use sim::Sim;
use stats::Stats;
use std::ops::Range;
use std::panic::AssertUnwindSafe;

/// Wall time of simulated time 0 (November 2023).
const BASE_WALL_MS: u64 = 1_700_000_000_000;
/// Simulated time allowed for the healed cluster to become quiescent.
const HEAL_BUDGET_MS: u64 = 120_000;

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
        ("one-way links", s.one_way_links),
        ("links without data flow", s.no_flow_links),
        ("late joiners", s.late_joins),
        ("late joiners started from a copy", s.joins_from_copy),
        ("departures", s.departures),
        ("wiped nodes", s.wipes),
        ("nodes restored from a backup", s.restores),
        ("writes lost with their origin", s.lost_writes),
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

/// Seeds that caught real or planted bugs, run on every `cargo test`
/// (found by soaking with the bug planted back): 248 and 728 catch a
/// log-order resume point not capped by the snapshot (the bug seed 48 found
/// when it was written, ALGORITHM §5; of seeds 0..12 000 also 7009 and
/// 11913); 730 catches an open that does not complete an ingestion whose
/// held-back log entries a crash lost; 22704 never went quiet while a
/// resume-point-only apply was published on the change feed (ALGORITHM §8).
#[test]
fn regression_seeds() {
    if env_seeds().is_some() {
        return;
    }
    for seed in [48, 248, 728, 730, 22704] {
        run_seed(seed).unwrap_or_else(|e| panic!("{e}"));
    }
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
