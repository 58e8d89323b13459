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

use super::machine;
use super::timing::{self, Elapsed, Timer};
use super::workload::{key_at, push_value, KEY_LEN, KEY_PATTERN};
use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use fjall::{KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::{LinkConfig, Mode};
use meshkv::{Batch, Db, Options, ScanOptions, VersionVector};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Entries per `Db::write` when pre-loading the sender.
const PRELOAD_BATCH: usize = 1000;
/// Entries per `OwnedWriteBatch` of the raw baseline.
const RAW_BATCH: usize = 1000;
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

/// Arguments of the hidden `meshkv bench replicate-receiver` (the child
/// process of `bench replicate`).
#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Address of the sender.
    #[arg(long)]
    connect: SocketAddr,
    /// Directory of the receiver's (empty) store.
    #[arg(long)]
    dir: PathBuf,
    /// Mode to dial the sender with.
    #[arg(long, value_enum, default_value_t = ModeArg::Pull)]
    mode: ModeArg,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// `Options::feed_capacity` of the receiver's store.
    #[arg(long)]
    feed_capacity: Option<usize>,
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

/// The records the receiver ends up storing in its `data` keyspace, in the
/// order the sender streams them: data keys (`b'k'` ‖ user key, all
/// `KEY_LEN + 1` bytes) and encoded records, in two flat buffers.
struct StoredRecords {
    keys: Vec<u8>,
    values: Vec<u8>,
    ends: Vec<usize>,
}

impl StoredRecords {
    const DATA_KEY_LEN: usize = KEY_LEN + 1;

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.keys[i * Self::DATA_KEY_LEN..(i + 1) * Self::DATA_KEY_LEN]
    }

    fn value(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.values[start..self.ends[i]]
    }
}

/// One raw ingest.
struct RawRun {
    /// Wall-clock and writing-thread on-CPU time of the timed loop.
    elapsed: Elapsed,
    /// On-CPU time of this whole process (the writing thread, fjall's
    /// flush and compaction threads, the idle sender node) during the loop.
    process_cpu_seconds: Option<f64>,
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

/// Reads a stream of the sender's records (what it streams to an empty
/// receiver: `Snapshot::catch_up` from the empty vector), in its order, as
/// the receiver stores them.
fn stored_records(stream: meshkv::storage::ChangesSince, n: usize) -> Result<StoredRecords> {
    let mut out = StoredRecords {
        keys: Vec::with_capacity(n * StoredRecords::DATA_KEY_LEN),
        values: Vec::new(),
        ends: Vec::with_capacity(n),
    };
    for item in stream {
        let (key, record) = item.context("reading the sender's change log failed")?;
        ensure!(key.len() == KEY_LEN, "unexpected key length {}", key.len());
        out.keys.push(b'k');
        out.keys.extend_from_slice(&key);
        out.values.extend_from_slice(&record.encode());
        out.ends.push(out.values.len());
    }
    ensure!(out.len() == n, "the sender streams {} records, expected {n}", out.len());
    Ok(out)
}

/// Writes `records` into a fresh plain fjall database; times the batches.
fn measure_raw(records: &StoredRecords, base: &Path) -> Result<RawRun> {
    let tmp = super::temp_dir(base, "meshkv-bench-raw-")?;
    let db = fjall::Database::builder(tmp.path().join("engine"))
        .cache_size(Options::default().cache_bytes)
        .open()
        .context("cannot open fjall database")?;
    let ks = db.keyspace("data", KeyspaceCreateOptions::default).context("cannot open fjall keyspace")?;
    let n = records.len();
    let cpu_before = timing::process_cpu();
    let timer = Timer::start();
    for start in (0..n).step_by(RAW_BATCH) {
        let end = (start + RAW_BATCH).min(n);
        let mut batch = OwnedWriteBatch::with_capacity(db.clone(), end - start).durability(Some(PersistMode::Buffer));
        for i in start..end {
            batch.insert(&ks, records.key(i), records.value(i));
        }
        batch.commit().context("fjall batch commit failed")?;
    }
    let elapsed = timer.stop();
    let process_cpu_seconds = cpu_before.zip(timing::process_cpu()).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    if let Some(last) = n.checked_sub(1) {
        let got = ks.get(records.key(last)).context("fjall read-back failed")?;
        ensure!(got.as_deref() == Some(records.value(last)), "fjall read-back returned the wrong value");
    }
    Ok(RawRun { elapsed, process_cpu_seconds })
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

/// Runs the hidden `meshkv bench replicate-receiver`: node B.
pub fn run_receiver(args: ReceiverArgs) -> Result<()> {
    let rt = super::runtime()?;
    let opening = Instant::now();
    let mut opts = Options::default();
    if let Some(c) = args.feed_capacity {
        opts.feed_capacity = c;
    }
    let feed_capacity = opts.feed_capacity;
    let db = Db::open(&args.dir, opts).context("cannot open the receiver's store")?;
    let open_seconds = opening.elapsed().as_secs_f64();
    let cpu_start = timing::process_cpu();
    let start = Instant::now();
    let report = rt.block_on(async {
        let cfg = NodeConfig { listen: None, ..NodeConfig::default() };
        let mut node = Node::start(db.clone(), cfg).await.context("cannot start the receiver's node")?;
        let mut events = node.events();
        let rss_before_kib = machine::rss_kib();
        node.add_peer(args.connect, args.mode.mode());
        let mut connected_seconds = None;
        let mut disconnects = 0u32;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::Connected { .. }) => connected_seconds = Some(start.elapsed().as_secs_f64()),
                    Ok(NodeEvent::CaughtUp { peer }) => return Ok(peer),
                    Ok(NodeEvent::Disconnected { reason, .. }) => {
                        disconnects += 1;
                        tracing::warn!(?reason, "receiver link dropped; the node redials and resumes");
                    }
                    Ok(NodeEvent::Error { addr, message }) => bail!("link to {addr} failed: {message}"),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => bail!("the receiver's node stopped"),
                }
            }
        };
        let peer = tokio::time::timeout(Duration::from_secs(args.timeout_secs), wait)
            .await
            .map_err(|_| anyhow!("no catch-up within {} s", args.timeout_secs))??;
        let seconds = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(timing::process_cpu()).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
        let peak_rss_kib = machine::peak_rss_kib();
        let rss_kib = machine::rss_kib();
        let (rss_anon_kib, rss_file_kib) = machine::rss_parts_kib();
        let received: u64 = node.peers().iter().map(|p| p.received).sum();
        let vv = db.version_vector();
        node.shutdown().await;
        anyhow::Ok(json!({
            "seconds": seconds,
            "open_seconds": open_seconds,
            "feed_capacity": feed_capacity,
            "connected_seconds": connected_seconds,
            "disconnects": disconnects,
            "peer": peer.to_string(),
            "node_id": db.node_id().to_string(),
            "version_vector": vv.to_string(),
            "received_items": received,
            "cpu_seconds": cpu,
            "rss_before_catch_up_kib": rss_before_kib,
            "rss_at_caught_up_kib": rss_kib,
            "rss_anon_at_caught_up_kib": rss_anon_kib,
            "rss_file_at_caught_up_kib": rss_file_kib,
            "peak_rss_kib": peak_rss_kib,
        }))
    })?;
    drop(db);
    println!("{report}");
    Ok(())
}

/// Everything `bench replicate` reports.
struct Report<'a> {
    args: &'a ReplicateArgs,
    base: &'a Path,
    n: usize,
    record_bytes: usize,
    preload_seconds: f64,
    read_seconds: f64,
    catch_ups: Vec<CatchUp>,
    raws: Vec<RawRun>,
    /// Raw ingests of the same records in change-log order.
    log_order_raws: Vec<RawRun>,
}

impl Report<'_> {
    fn best_catch_up(&self) -> &CatchUp {
        self.catch_ups.iter().min_by(|x, y| x.seconds.total_cmp(&y.seconds)).expect("at least one run")
    }

    fn raw_rates(&self, raws: &[RawRun]) -> Vec<f64> {
        raws.iter().map(|r| self.n as f64 / r.elapsed.wall.as_secs_f64().max(1e-9)).collect()
    }

    /// Catch-up rate over raw ingest rate of each run (the two measured
    /// back to back), and their median: steadier than the ratio of the
    /// bests when the machine's speed drifts between runs.
    fn pair_ratios(&self) -> (Vec<f64>, f64) {
        let n = self.n as f64;
        let ratios: Vec<f64> = self
            .catch_ups
            .iter()
            .zip(self.raw_rates(&self.raws))
            .map(|(c, raw)| n / c.seconds.max(1e-9) / raw)
            .collect();
        let median = median(ratios.clone());
        (ratios, median)
    }

    fn to_json(&self, machine: Value) -> Value {
        let n = self.n as f64;
        let best = self.best_catch_up();
        let entries_per_s = n / best.seconds.max(1e-9);
        let raw_rates = self.raw_rates(&self.raws);
        let raw_best = raw_rates.iter().copied().fold(0.0, f64::max);
        let (pair_ratios, ratio_median) = self.pair_ratios();
        let log_order_rates = self.raw_rates(&self.log_order_raws);
        let log_order_best = log_order_rates.iter().copied().fold(0.0, f64::max);
        let raw_cpu: Option<Vec<f64>> =
            self.raws.iter().map(|r| r.elapsed.cpu.map(|c| n / c.as_secs_f64().max(1e-9))).collect();
        // Entries per second of on-CPU time of everything involved: both
        // processes for a catch-up, the whole process for a raw ingest.
        let best_of = |v: Vec<Option<f64>>| {
            v.into_iter().collect::<Option<Vec<f64>>>().map(|v| v.into_iter().fold(0.0, f64::max))
        };
        let repl_per_cpu = best_of(
            self.catch_ups
                .iter()
                .map(|c| Some(n / (c.child["cpu_seconds"].as_f64()? + c.sender_cpu_seconds?).max(1e-9)))
                .collect(),
        );
        let raw_per_cpu = best_of(self.raws.iter().map(|r| Some(n / r.process_cpu_seconds?.max(1e-9))).collect());
        let mib = |kib: &Value| kib.as_f64().map(|k| k / 1024.0);
        let link = LinkConfig::default();
        let mut out = json!({
            "benchmark": "replicate_catch_up",
            "meshkv_version": env!("CARGO_PKG_VERSION"),
            "machine": machine,
            "dir": self.base.display().to_string(),
            "entries": self.n,
            "key_size": KEY_LEN,
            "keys": KEY_PATTERN,
            "value_size": self.args.value_size,
            "avg_record_bytes": self.record_bytes as f64 / n,
            "mode": self.args.mode.name(),
            "link": {
                "window": link.window,
                "batch_bytes": link.batch_bytes,
                "batch_items": link.batch_items,
            },
            "runs": self.args.runs,
            "statistic": "best of runs (raw and catch-up runs interleaved ABBA); samples_ratio pairs the catch-up and raw ingest of each run, ratio_median is their median",
            "seconds": best.seconds,
            "entries_per_s": entries_per_s,
            "raw_ingest_per_s": raw_best,
            "ratio": entries_per_s / raw_best,
            "peak_rss_mb": mib(&best.child["peak_rss_kib"]),
            "receiver_rss_before_catch_up_mb": mib(&best.child["rss_before_catch_up_kib"]),
            "receiver_rss_at_caught_up_mb": mib(&best.child["rss_at_caught_up_kib"]),
            "receiver_cpu_seconds": best.child["cpu_seconds"],
            "sender_cpu_seconds": best.sender_cpu_seconds,
            "receiver_process_seconds": best.process_seconds,
            "samples_entries_per_s": self.catch_ups.iter().map(|c| n / c.seconds.max(1e-9)).collect::<Vec<_>>(),
            "samples_peak_rss_mb": self.catch_ups.iter().map(|c| mib(&c.child["peak_rss_kib"])).collect::<Vec<_>>(),
            "samples_raw_ingest_per_s": raw_rates,
            "raw_ingest_per_cpu_s": raw_cpu.map(|r| r.into_iter().fold(0.0, f64::max)),
            "entries_per_process_cpu_s": repl_per_cpu,
            "raw_ingest_per_process_cpu_s": raw_per_cpu,
            "cpu_ratio": repl_per_cpu.zip(raw_per_cpu).map(|(r, w)| r / w),
            "samples_cpu_seconds": self.catch_ups.iter().map(|c| json!({"sender": c.sender_cpu_seconds, "receiver": c.child["cpu_seconds"]})).collect::<Vec<_>>(),
            "samples_raw_process_cpu_seconds": self.raws.iter().map(|r| r.process_cpu_seconds).collect::<Vec<_>>(),
            "receiver": best.child,
            "sender_preload_seconds": self.preload_seconds,
            "sender_catch_up_read_per_s": n / self.read_seconds.max(1e-9),
            "verified": "receiver holds exactly `entries` keys and the sender's version vector; 1000 sampled keys have identical records",
            "seconds_measures": "receiver process: from Node::start (its empty store already open) to NodeEvent::CaughtUp from the sender (includes connect and handshake)",
            "raw_ingest": "the records the sender streams, in the order it streams them (read before timing via Snapshot::catch_up from the empty vector: key order), as the receiver stores them in its data keyspace (key b'k' ++ user key, value = encoded record), into one keyspace of a fresh plain fjall database: OwnedWriteBatch of 1000, durability Some(PersistMode::Buffer), 64 MiB block cache; no change-log or meta keys",
            "peak_rss": "VmHWM of the receiver process (/proc/self/status) read at NodeEvent::CaughtUp, MiB",
            "sender_cpu": "on-CPU time (utime+stime) of the sending process while the receiver process ran",
            "process_cpu": "entries_per_process_cpu_s = entries / (sender + receiver process CPU seconds) of a catch-up; raw_ingest_per_process_cpu_s = entries / CPU seconds of the whole raw-ingesting process during the timed loop (writer + fjall background threads); cpu_ratio = their quotient (best of runs each); raw_ingest_per_cpu_s counts the writing thread only",
        });
        // A second object: one `json!` of everything exceeds the macro's
        // recursion limit.
        let log_order = json!({
            "raw_ingest_log_order_per_s": log_order_best,
            "ratio_vs_log_order_raw": entries_per_s / log_order_best,
            "samples_raw_ingest_log_order_per_s": log_order_rates,
            "raw_ingest_log_order": "the same records, into the same kind of store, in change-log order (origin, seq): hash-scattered keys, the order catch-ups streamed in before key order; measured right after each raw ingest",
            "samples_ratio": pair_ratios,
            "ratio_median": ratio_median,
        });
        if let (Some(out), Value::Object(extra)) = (out.as_object_mut(), log_order) {
            out.extend(extra);
        }
        out
    }

    fn print_table(&self, out: &Value) {
        let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "meshkv bench replicate: {} entries, {KEY_LEN}-byte keys, {}-byte values, mode {}, best of {} run(s), in {}",
            self.n,
            self.args.value_size,
            self.args.mode.name(),
            self.args.runs,
            self.base.display()
        );
        println!("machine: {}", machine::summary(&out["machine"]));
        println!();
        println!(
            "{:>10} {:>10} {:>16} {:>18} {:>7} {:>22} {:>7} {:>14}",
            "entries",
            "seconds",
            "catch-up/s",
            "raw fjall put/s",
            "ratio",
            "raw, log order put/s",
            "ratio",
            "peak RSS MiB"
        );
        println!(
            "{:>10} {:>10.2} {:>16.0} {:>18.0} {:>7.3} {:>22.0} {:>7.3} {:>14.1}",
            self.n,
            f("seconds"),
            f("entries_per_s"),
            f("raw_ingest_per_s"),
            f("ratio"),
            f("raw_ingest_log_order_per_s"),
            f("ratio_vs_log_order_raw"),
            f("peak_rss_mb")
        );
        if self.args.runs > 1 {
            let pairs = out["samples_ratio"].as_array().map(Vec::as_slice).unwrap_or_default();
            let ratios: Vec<String> = pairs.iter().filter_map(Value::as_f64).map(|r| format!("{r:.3}")).collect();
            println!();
            println!("ratio of each run (catch-up / the raw ingest next to it): {}", ratios.join(", "));
            println!("median: {:.3}", f("ratio_median"));
        }
    }
}

/// The median of `values` (NaN if there are none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![0.7, 0.5, 0.6]), 0.6);
        assert_eq!(median(vec![0.4, 0.8, 0.5, 0.6]), 0.55);
        assert!(median(Vec::new()).is_nan());
    }
}
