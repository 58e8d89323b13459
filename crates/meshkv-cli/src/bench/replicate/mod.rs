//! `meshkv bench replicate`: how fast an empty node catches up from a
//! loaded one over loopback TCP, against plain fjall ingesting the same
//! records.
//!
//! * The sender (node A) is a meshkv store in this process, pre-loaded with
//!   `--entries` fresh keys through `Db::write` in batches of 1000, then
//!   served by a [`Node`] listening on `127.0.0.1:0` (tokio multi-thread
//!   runtime).
//! * The receiver (node B) runs in a child process (this binary, hidden
//!   subcommand `bench replicate-receiver`) so that its peak resident set
//!   size (`VmHWM`) is its own. It opens an empty store, starts a node without
//!   a listener, dials A (`--mode pull` by default) and stops the clock at
//!   `NodeEvent::CaughtUp` from A. The time runs from just before
//!   `Node::start` (the empty store is already open, as the raw baseline's
//!   store is) to that event, so it includes connecting and the handshake.
//! * Afterwards this process opens B's store and checks that it holds
//!   exactly `--entries` keys, has A's version vector, and that 1000 evenly
//!   spaced keys have byte-identical records on both sides.
//! * Raw baseline: the (key, record) pairs A streams (read once, before any
//!   timing, with `Snapshot::catch_up(empty vector)`, in the order they are
//!   sent: key order for a bootstrap)
//!   are written into one keyspace of a fresh plain fjall 3 database, as the
//!   receiver stores them in its `data` keyspace: key `b'k' ‖ user key`,
//!   value the encoded record. `OwnedWriteBatch` of 1000 entries with
//!   `Some(PersistMode::Buffer)` (what meshkv uses for `Durability::Buffered`),
//!   block cache 64 MiB like meshkv, everything else fjall's default. Only the
//!   batch building and commits are timed. The receiver additionally writes
//!   one 16-byte change-log entry per record and a few meta keys per batch;
//!   the raw baseline does not.

mod raw;
mod receiver;
mod report;

pub(super) use receiver::{run_receiver, ReceiverArgs};

// `super::base_dir`, `super::temp_dir` and `super::runtime` in this module
// are `bench`'s; the child modules reach the latter two through these.
use super::{runtime, temp_dir};

use super::machine;
use super::timing;
use super::workload::{key_at, push_value};
use anyhow::{anyhow, ensure, Context, Result};
use clap::{Args, ValueEnum};
use meshkv::node::{Node, NodeConfig};
use meshkv::protocol::Mode;
use meshkv::{Batch, Db, Options, ScanOptions, VersionVector};
use raw::{measure_raw, stored_records};
use report::Report;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Entries per `Db::write` when pre-loading the sender.
const PRELOAD_BATCH: usize = 1000;
/// Keys whose records are compared between sender and receiver.
const SAMPLE_KEYS: usize = 1000;

/// Arguments of `meshkv bench replicate`.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Entries pre-loaded on the sender.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    entries: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Directory in which the temporary stores are created [default: the
    /// system temporary directory]. Use a real disk, not tmpfs.
    #[arg(long, env = "MESHKV_BENCH_DIR")]
    dir: Option<PathBuf>,
    /// Mode the receiver dials the sender with.
    #[arg(long, value_enum, default_value_t = ModeArg::Pull)]
    mode: ModeArg,
    /// Catch-ups and raw ingests to run (interleaved ABBA); the best of each
    /// is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Give up on one catch-up after this many seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Diagnostics: the receiver's `Options::feed_capacity` (commits its
    /// change feed buffers per subscriber) [default: meshkv's default].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    receiver_feed_capacity: Option<u64>,
}

/// The `--mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Pull,
    Sync,
}

impl ModeArg {
    fn name(self) -> &'static str {
        match self {
            ModeArg::Pull => "pull",
            ModeArg::Sync => "sync",
        }
    }

    fn mode(self) -> Mode {
        match self {
            ModeArg::Pull => Mode::Pull,
            ModeArg::Sync => Mode::Sync,
        }
    }
}

/// One catch-up, as seen by both processes.
struct CatchUp {
    /// The child's report.
    child: Value,
    /// From `Node::start` in the child to `CaughtUp`.
    seconds: f64,
    /// Spawning the child until it exited (includes process start, the
    /// receiver's shutdown and exit).
    process_seconds: f64,
    /// On-CPU time of this (sending) process while the child ran.
    sender_cpu_seconds: Option<f64>,
}

/// Runs `meshkv bench replicate`.
pub fn run(args: ReplicateArgs) -> Result<()> {
    let opts = Options::default();
    ensure!(
        args.value_size <= opts.max_value_len,
        "--value-size must be at most {} bytes (meshkv's default limit)",
        opts.max_value_len
    );
    let n = usize::try_from(args.entries).context("--entries is too large")?;
    let base = super::base_dir(args.dir.as_deref())?;
    let load_before = machine::load_average();

    // Node A: pre-loaded before its node starts (no subscribers yet).
    let sender_dir = super::temp_dir(&base, "meshkv-bench-sender-")?;
    let a = Db::open(sender_dir.path(), Options::default()).context("cannot open the sender's store")?;
    let preload = Instant::now();
    let mut value = Vec::with_capacity(args.value_size);
    for start in (0..n).step_by(PRELOAD_BATCH) {
        let mut batch = Batch::new();
        for i in start..(start + PRELOAD_BATCH).min(n) {
            value.clear();
            push_value(i as u64, args.value_size, &mut value);
            batch.put(key_at(i as u64).to_vec(), value.clone());
        }
        a.write(batch).context("pre-loading the sender failed")?;
    }
    let preload_seconds = preload.elapsed().as_secs_f64();
    let a_vv = a.version_vector();
    tracing::info!(entries = n, preload_seconds, "sender pre-loaded");

    // What the sender streams, read once for the raw baseline.
    let read = Instant::now();
    let stream = a.snapshot().catch_up(&VersionVector::new(), None).context("reading the catch-up stream failed")?;
    let records = stored_records(stream, n)?;
    let read_seconds = read.elapsed().as_secs_f64();
    // The same records in change-log order (hash-scattered keys): the order
    // catch-ups streamed in before key order, kept as a second baseline.
    let log_order = stored_records(a.changes_since(&VersionVector::new()).context("changes_since failed")?, n)?;
    tracing::info!(read_seconds, bytes = records.values.len(), "sender records read");

    let rt = super::runtime()?;
    let node = rt
        .block_on(Node::start(
            a.clone(),
            NodeConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))), ..NodeConfig::default() },
        ))
        .context("cannot start the sender's node")?;
    let addr = node.local_addr().ok_or_else(|| anyhow!("the sender's node has no listen address"))?;

    let mut catch_ups = Vec::new();
    let mut raws = Vec::new();
    let mut log_order_raws = Vec::new();
    let mut run_result = Ok(());
    'runs: for run in 0..args.runs {
        let raw_first = run % 2 == 0;
        for step in 0..2 {
            let result = if (step == 0) == raw_first {
                measure_raw(&records, &base).and_then(|r| {
                    let wall = r.elapsed.wall;
                    tracing::info!(run, ?wall, put_per_s = n as f64 / wall.as_secs_f64(), "raw ingest");
                    raws.push(r);
                    let r = measure_raw(&log_order, &base)?;
                    let wall = r.elapsed.wall;
                    tracing::info!(run, ?wall, put_per_s = n as f64 / wall.as_secs_f64(), "raw ingest, log order");
                    log_order_raws.push(r);
                    Ok(())
                })
            } else {
                catch_up(&args, addr, &base).and_then(|(c, dir)| {
                    verify(&a, &a_vv, n, &c, dir.path())?;
                    tracing::info!(run, seconds = c.seconds, entries_per_s = n as f64 / c.seconds, "catch-up");
                    catch_ups.push(c);
                    Ok(())
                })
            };
            if let Err(e) = result {
                run_result = Err(e);
                break 'runs;
            }
        }
    }
    rt.block_on(node.shutdown());
    run_result?;

    let mut machine = machine::describe();
    machine["load_average_before"] = json!(load_before);
    machine["load_average_after"] = json!(machine::load_average());
    let report = Report {
        args: &args,
        base: &base,
        n,
        record_bytes: records.values.len(),
        preload_seconds,
        read_seconds,
        catch_ups,
        raws,
        log_order_raws,
    };
    let out = report.to_json(machine);
    if args.json {
        println!("{out}");
    } else {
        report.print_table(&out);
    }
    Ok(())
}

/// Runs one receiver child process against `addr`.
/// Returns the receiver's store directory too, for [`verify`].
fn catch_up(args: &ReplicateArgs, addr: SocketAddr, base: &Path) -> Result<(CatchUp, tempfile::TempDir)> {
    let tmp = super::temp_dir(base, "meshkv-bench-receiver-")?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let cpu_before = timing::process_cpu();
    let started = Instant::now();
    // Profiling hook: `MESHKV_BENCH_RECEIVER_WRAPPER="perf record -g -o FILE"`
    // (split on whitespace) runs the receiver under that command.
    let wrapper = std::env::var("MESHKV_BENCH_RECEIVER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = command
        .args(["bench", "replicate-receiver", "--connect", &addr.to_string(), "--mode", args.mode.name()])
        .args(["--timeout-secs", &args.timeout_secs.to_string(), "--dir"])
        .arg(tmp.path())
        .args(args.receiver_feed_capacity.map(|c| format!("--feed-capacity={c}")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the receiver process")?;
    let process_seconds = started.elapsed().as_secs_f64();
    let sender_cpu_seconds = cpu_before.zip(timing::process_cpu()).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    ensure!(out.status.success(), "the receiver process failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The report is the last line that is a JSON object (a wrapper may print
    // its own lines).
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
    let child: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("the receiver printed no JSON report: {stdout:?}"))?;
    let seconds = child["seconds"].as_f64().ok_or_else(|| anyhow!("receiver report lacks `seconds`: {child}"))?;
    Ok((CatchUp { child, seconds, process_seconds, sender_cpu_seconds }, tmp))
}

/// Checks the receiver's store in `dir` (the child has exited): `n` keys,
/// the sender's version vector, identical records for sampled keys.
fn verify(a: &Db, a_vv: &VersionVector, n: usize, c: &CatchUp, dir: &Path) -> Result<()> {
    let b = Db::open(dir, Options::default()).context("cannot reopen the receiver's store")?;
    let b_vv = b.version_vector();
    ensure!(
        b_vv.dominates(a_vv) && a_vv.dominates(&b_vv),
        "receiver version vector {b_vv} differs from the sender's {a_vv}"
    );
    let reported = c.child["version_vector"].as_str().unwrap_or_default();
    ensure!(reported == b_vv.to_string(), "receiver reported {reported} at catch-up, stored {b_vv}");
    let mut count = 0usize;
    for e in b.scan(ScanOptions { keys: false, values: false, ..ScanOptions::default() }) {
        e.context("scanning the receiver failed")?;
        count += 1;
    }
    ensure!(count == n, "receiver holds {count} keys, expected {n}");
    let step = (n / SAMPLE_KEYS).max(1);
    for i in (0..n).step_by(step).chain(std::iter::once(n - 1)) {
        let key = key_at(i as u64);
        let (ra, rb) = (a.get_record(key)?, b.get_record(key)?);
        ensure!(ra.is_some() && ra == rb, "key #{i} differs between sender and receiver");
    }
    Ok(())
}
