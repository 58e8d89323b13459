//! `meshkv bench local`: put throughput of a local meshkv store against
//! plain fjall.
//!
//! For every batch size, the same pre-generated keys and values are written
//! (a) through `meshkv::Db::write` ("replicated": record + version metadata,
//! change-log entry, version-vector and HLC meta keys, under the writer
//! lock) and (b) straight into one fjall keyspace with `OwnedWriteBatch`
//! ("raw"), each into a fresh store in a fresh temporary directory, with the
//! same durability. Only the write loop is timed (not opening, closing or
//! deleting the store). Runs alternate raw/replicated in an ABBA pattern to
//! spread machine noise evenly, and the best run of each is reported.
//! With `--overwrite`, every key is written once before the timer starts
//! and the timed loop writes them all again, scattered across batches.

use super::machine;
use super::timing::{Elapsed, Timer};
use super::workload::{Workload, KEY_LEN, KEY_PATTERN};
use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};
use fjall::{KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Arguments of `meshkv bench local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Puts per measurement [default: chosen per batch size and durability
    /// for about 1-3 s per measurement].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    entries: Option<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// When a write is acknowledged: buffered (written to the OS, no fsync)
    /// or sync (fdatasync per batch).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Buffered)]
    durability: DurabilityArg,
    /// Directory in which the temporary stores are created [default: the
    /// system temporary directory].
    #[arg(long, env = "MESHKV_BENCH_DIR")]
    dir: Option<PathBuf>,
    /// Batch sizes to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    batch_sizes: Vec<usize>,
    /// Time overwrites instead of fresh keys: every key is written once
    /// first (not timed), then written again in a scattered order, so each
    /// batch replaces records written by many earlier batches.
    #[arg(long)]
    overwrite: bool,
    /// Runs per implementation and batch size (interleaved); the best is
    /// reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// The `--durability` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    Buffered,
    Sync,
}

impl DurabilityArg {
    fn name(self) -> &'static str {
        match self {
            DurabilityArg::Buffered => "buffered",
            DurabilityArg::Sync => "sync",
        }
    }

    fn meshkv(self) -> meshkv::Durability {
        match self {
            DurabilityArg::Buffered => meshkv::Durability::Buffered,
            DurabilityArg::Sync => meshkv::Durability::Sync,
        }
    }

    /// The engine batch durability meshkv uses for this setting (see
    /// `Inner::batch` in meshkv's storage/write.rs). `Buffered` must ask for
    /// `PersistMode::Buffer` explicitly: a fjall 3.1 batch without a
    /// durability stays in fjall's own journal buffer (only the single-key
    /// `Keyspace::insert` flushes to the OS by default).
    fn persist_mode(self) -> Option<PersistMode> {
        match self {
            DurabilityArg::Buffered => Some(PersistMode::Buffer),
            DurabilityArg::Sync => Some(PersistMode::SyncData),
        }
    }

    /// Default entries per measurement, aiming at 1-3 s each.
    fn default_entries(self, batch_size: usize) -> u64 {
        match (self, batch_size) {
            (DurabilityArg::Buffered, 0..=9) => 300_000,
            (DurabilityArg::Buffered, _) => 500_000,
            (DurabilityArg::Sync, 0..=9) => 10_000,
            (DurabilityArg::Sync, 10..=99) => 50_000,
            (DurabilityArg::Sync, _) => 200_000,
        }
    }
}

/// What is being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// `meshkv::Db::write`.
    Replicated,
    /// One fjall keyspace, `OwnedWriteBatch`.
    Raw,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Replicated => "replicated",
            Target::Raw => "raw",
        }
    }
}

/// Results for one batch size.
struct BatchResult {
    batch_size: usize,
    entries: usize,
    replicated: Vec<Elapsed>,
    raw: Vec<Elapsed>,
}

impl BatchResult {
    /// Puts per second of each run, by wall-clock time.
    fn wall_rates(&self, runs: &[Elapsed]) -> Vec<f64> {
        runs.iter().map(|e| self.entries as f64 / e.wall.as_secs_f64().max(1e-9)).collect()
    }

    /// Puts per second of on-CPU time of each run, if known for all runs.
    fn cpu_rates(&self, runs: &[Elapsed]) -> Option<Vec<f64>> {
        runs.iter().map(|e| e.cpu.map(|c| self.entries as f64 / c.as_secs_f64().max(1e-9))).collect()
    }

    fn best(rates: &[f64]) -> f64 {
        rates.iter().copied().fold(0.0, f64::max)
    }

    fn replicated_best(&self) -> f64 {
        Self::best(&self.wall_rates(&self.replicated))
    }

    fn raw_best(&self) -> f64 {
        Self::best(&self.wall_rates(&self.raw))
    }

    fn ratio(&self) -> f64 {
        self.replicated_best() / self.raw_best()
    }

    /// Best on-CPU rates (replicated, raw) and their ratio.
    fn cpu_best(&self) -> Option<(f64, f64, f64)> {
        let repl = Self::best(&self.cpu_rates(&self.replicated)?);
        let raw = Self::best(&self.cpu_rates(&self.raw)?);
        Some((repl, raw, repl / raw))
    }

    /// Puts per second of whole-process CPU time of each run.
    fn process_rates(&self, runs: &[Elapsed]) -> Option<Vec<f64>> {
        runs.iter().map(|e| e.process.map(|c| self.entries as f64 / c.as_secs_f64().max(1e-3))).collect()
    }

    /// Best whole-process CPU rates (replicated, raw) and their ratio: the
    /// work each put costs, whoever does it, which a busy machine disturbs
    /// much less than wall-clock time.
    fn process_best(&self) -> Option<(f64, f64, f64)> {
        let repl = Self::best(&self.process_rates(&self.replicated)?);
        let raw = Self::best(&self.process_rates(&self.raw)?);
        Some((repl, raw, repl / raw))
    }

    fn to_json(&self) -> Value {
        let cpu = self.cpu_best();
        let process = self.process_best();
        json!({
            "batch_size": self.batch_size,
            "entries": self.entries,
            "replicated_put_per_s": self.replicated_best(),
            "raw_put_per_s": self.raw_best(),
            "ratio": self.ratio(),
            "replicated_samples_put_per_s": self.wall_rates(&self.replicated),
            "raw_samples_put_per_s": self.wall_rates(&self.raw),
            "replicated_put_per_cpu_s": cpu.map(|c| c.0),
            "raw_put_per_cpu_s": cpu.map(|c| c.1),
            "cpu_ratio": cpu.map(|c| c.2),
            "replicated_put_per_process_cpu_s": process.map(|c| c.0),
            "raw_put_per_process_cpu_s": process.map(|c| c.1),
            "process_cpu_ratio": process.map(|c| c.2),
        })
    }
}

/// Runs `meshkv bench local`.
pub fn run(args: LocalArgs) -> Result<()> {
    ensure!(!args.batch_sizes.is_empty(), "--batch-sizes must name at least one batch size");
    ensure!(args.batch_sizes.iter().all(|&b| b > 0), "batch sizes must be at least 1");
    let opts = meshkv::Options::default();
    ensure!(
        args.value_size <= opts.max_value_len,
        "--value-size must be at most {} bytes (meshkv's default limit)",
        opts.max_value_len
    );
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };

    let load_before = machine::load_average();
    let mut results = Vec::new();
    for &batch_size in &args.batch_sizes {
        let entries = args.entries.unwrap_or_else(|| args.durability.default_entries(batch_size));
        let entries = usize::try_from(entries).context("--entries is too large")?;
        let workload = Workload::new(entries, args.value_size);
        let mut result = BatchResult { batch_size, entries, replicated: Vec::new(), raw: Vec::new() };
        for run in 0..args.runs {
            // ABBA: raw first on even runs, replicated first on odd ones.
            let order =
                if run % 2 == 0 { [Target::Raw, Target::Replicated] } else { [Target::Replicated, Target::Raw] };
            for target in order {
                let setup =
                    Setup { workload: &workload, batch_size, durability: args.durability, overwrite: args.overwrite };
                let elapsed = measure(target, &setup, &base)?;
                tracing::info!(
                    target = target.name(),
                    batch_size,
                    entries,
                    run,
                    wall = ?elapsed.wall,
                    cpu = ?elapsed.cpu,
                    put_per_s = entries as f64 / elapsed.wall.as_secs_f64().max(1e-9),
                    "measured"
                );
                match target {
                    Target::Replicated => result.replicated.push(elapsed),
                    Target::Raw => result.raw.push(elapsed),
                }
            }
        }
        results.push(result);
    }

    let mut machine = machine::describe();
    machine["load_average_before"] = json!(load_before);
    machine["load_average_after"] = json!(machine::load_average());
    if args.json {
        println!("{}", report_json(&args, &base, machine, &results));
    } else {
        print_table(&args, &base, &machine, &results);
    }
    Ok(())
}

/// One measurement's parameters.
struct Setup<'a> {
    workload: &'a Workload,
    batch_size: usize,
    durability: DurabilityArg,
    overwrite: bool,
}

/// Writes the workload once into a fresh store of `target` under `base` and
/// returns the time the write loop took (on this thread).
fn measure(target: Target, setup: &Setup, base: &Path) -> Result<Elapsed> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("meshkv-bench-{}-", target.name()))
        .tempdir_in(base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
    match target {
        Target::Replicated => measure_replicated(setup, tmp.path()),
        Target::Raw => measure_raw(setup, tmp.path()),
    }
    // `tmp` is removed here, after the store was dropped.
}

fn measure_replicated(setup: &Setup, dir: &Path) -> Result<Elapsed> {
    let Setup { workload, batch_size, durability, overwrite } = *setup;
    let opts = meshkv::Options::default().durability(durability.meshkv());
    let db = meshkv::Db::open(dir, opts).with_context(|| format!("cannot open meshkv store in {}", dir.display()))?;
    let write_all = |order: &dyn Fn(usize) -> usize| -> Result<()> {
        for range in workload.batches(batch_size) {
            let mut batch = meshkv::Batch::new();
            for i in range.map(order) {
                batch.put(workload.key(i), workload.value(i));
            }
            db.write(batch).context("meshkv write failed")?;
        }
        Ok(())
    };
    if overwrite {
        write_all(&|i| i)?;
    }
    let timer = Timer::start();
    write_all(&|i| timed_order(i, workload.len(), overwrite))?;
    let elapsed = timer.stop();
    if let Some(last) = workload.len().checked_sub(1) {
        let got = db.get(workload.key(last)).context("meshkv read-back failed")?;
        ensure!(got.as_deref() == Some(workload.value(last)), "meshkv read-back returned the wrong value");
    }
    Ok(elapsed)
}

fn measure_raw(setup: &Setup, dir: &Path) -> Result<Elapsed> {
    let Setup { workload, batch_size, durability, overwrite } = *setup;
    // Same block cache size as a meshkv store, so the engines are configured
    // alike; everything else is fjall's default.
    let cache = meshkv::Options::default().cache_bytes;
    let db = fjall::Database::builder(dir.join("engine"))
        .cache_size(cache)
        .open()
        .with_context(|| format!("cannot open fjall database in {}", dir.display()))?;
    let ks = db.keyspace("data", KeyspaceCreateOptions::default).context("cannot open fjall keyspace")?;
    let mode = durability.persist_mode();
    let write_all = |order: &dyn Fn(usize) -> usize| -> Result<()> {
        for range in workload.batches(batch_size) {
            let mut batch = OwnedWriteBatch::with_capacity(db.clone(), range.len()).durability(mode);
            for i in range.map(order) {
                batch.insert(&ks, workload.key(i), workload.value(i));
            }
            batch.commit().context("fjall batch commit failed")?;
        }
        Ok(())
    };
    if overwrite {
        write_all(&|i| i)?;
    }
    let timer = Timer::start();
    write_all(&|i| timed_order(i, workload.len(), overwrite))?;
    let elapsed = timer.stop();
    if let Some(last) = workload.len().checked_sub(1) {
        let got = ks.get(workload.key(last)).context("fjall read-back failed")?;
        ensure!(got.as_deref() == Some(workload.value(last)), "fjall read-back returned the wrong value");
    }
    Ok(elapsed)
}

/// The key the `i`-th timed put writes: `i` itself, or for overwrites a
/// permutation of `0..n` that scatters consecutive puts over the keys
/// (multiplication by a prime that does not divide `n`).
fn timed_order(i: usize, n: usize, overwrite: bool) -> usize {
    const STRIDE: u64 = 1_000_003;
    if !overwrite || (n as u64).is_multiple_of(STRIDE) {
        return i;
    }
    ((i as u64 * STRIDE) % n as u64) as usize
}

/// The result whose numbers are repeated at the top level of the JSON: batch
/// size 1000 if measured, otherwise the largest batch size.
fn headline(results: &[BatchResult]) -> Option<&BatchResult> {
    results.iter().find(|r| r.batch_size == 1000).or_else(|| results.iter().max_by_key(|r| r.batch_size))
}

fn report_json(args: &LocalArgs, base: &Path, machine: Value, results: &[BatchResult]) -> Value {
    let mut out = json!({
        "benchmark": "local_put",
        "meshkv_version": env!("CARGO_PKG_VERSION"),
        "machine": machine,
        "dir": base.display().to_string(),
        "key_size": KEY_LEN,
        "keys": KEY_PATTERN,
        "value_size": args.value_size,
        "durability": args.durability.name(),
        "engine_batch_durability": format!("{:?}", args.durability.persist_mode()),
        "runs": args.runs,
        "overwrite": args.overwrite,
        "statistic": "best of runs (raw and replicated runs interleaved ABBA)",
        "cpu_time": "on-CPU time of the writing thread (/proc/thread-self/schedstat): excludes waiting for a CPU or for fsync and the engine's background threads",
        "results": results.iter().map(BatchResult::to_json).collect::<Vec<_>>(),
    });
    if let Some(h) = headline(results) {
        out["batch_size"] = json!(h.batch_size);
        out["replicated_put_per_s"] = json!(h.replicated_best());
        out["raw_put_per_s"] = json!(h.raw_best());
        out["ratio"] = json!(h.ratio());
    }
    out
}

fn print_table(args: &LocalArgs, base: &Path, machine: &Value, results: &[BatchResult]) {
    println!(
        "meshkv bench local: {KEY_LEN}-byte keys, {}-byte values, durability {}, best of {} run(s), in {}",
        args.value_size,
        args.durability.name(),
        args.runs,
        base.display()
    );
    println!("machine: {}", machine::summary(machine));
    println!();
    println!(
        "{:>10} {:>10} {:>18} {:>18} {:>7} {:>10} {:>14}",
        "batch", "entries", "replicated put/s", "raw fjall put/s", "ratio", "cpu ratio", "process ratio"
    );
    let fmt = |c: Option<(f64, f64, f64)>| c.map_or_else(|| "-".to_string(), |c| format!("{:.3}", c.2));
    for r in results {
        println!(
            "{:>10} {:>10} {:>18.0} {:>18.0} {:>7.3} {:>10} {:>14}",
            r.batch_size,
            r.entries,
            r.replicated_best(),
            r.raw_best(),
            r.ratio(),
            fmt(r.cpu_best()),
            fmt(r.process_best())
        );
    }
    println!();
    println!("ratio = replicated / raw by wall-clock time; cpu ratio: by on-CPU time of the writing thread;");
    println!("process ratio: by on-CPU time of the whole process (all threads) during the write loop");
}
