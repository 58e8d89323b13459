//! `meshkv bench latency`: how long a put on node A takes to become visible
//! on node B, under a paced write load.
//!
//! Two nodes run in this process on one tokio multi-thread runtime, each on
//! its own fresh store, A listening on `127.0.0.1:0` and B dialing it in
//! `Mode::Sync`. Once both report `NodeEvent::CaughtUp` (the stores are empty,
//! so that is the handshake plus an empty catch-up), B subscribes to its
//! change feed (`Db::subscribe(KeyRange::all())`) and a writer thread puts on
//! A at `--rate` puts per second for `--seconds`, one `Db::put` per write.
//!
//! Every value starts with the send time (nanoseconds since a start
//! `Instant` shared by writer and reader, taken just before `Db::put`) and the
//! write's sequence number. A tokio task on the same runtime receives B's
//! changes and records `arrival - send` for every write the first time it
//! shows up. The writer schedules write `i` at `start + i / rate` (it sleeps
//! until then, or writes at once if it is late); the latency is measured from
//! the actual send, and the worst lateness against the schedule is reported
//! separately. After the last write the reader waits up to `--drain-secs`
//! for stragglers; writes never seen on B are reported as `missing`.

use super::machine;
use super::workload::{key_at, push_value, KEY_LEN};
use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Args;
use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::Mode;
use meshkv::storage::FeedError;
use meshkv::{Db, KeyRange, NodeId, Options};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Bytes at the start of each value: send time and sequence number.
const HEADER: usize = 16;
/// Upper bound on `--rate` × `--seconds` (the reader keeps one flag per write).
const MAX_WRITES: u64 = 100_000_000;

/// Arguments of `meshkv bench latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Puts per second on node A.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// How long to write, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Number of distinct keys; write `i` goes to key `i mod keys`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Value size in bytes (at least 16).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(HEADER as u64..))]
    value_size: u64,
    /// After the last write, wait at most this long for it to show up on B.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    drain_secs: u64,
    /// Directory in which the temporary stores are created [default: the
    /// system temporary directory].
    #[arg(long, env = "MESHKV_BENCH_DIR")]
    dir: Option<PathBuf>,
}

/// What the writer thread did.
struct WriterReport {
    writes: u64,
    /// From the first scheduled write to the end of the last put.
    elapsed: Duration,
    /// Worst delay of a write's start behind its schedule.
    max_late: Duration,
    /// Longest single `Db::put` on A.
    max_put: Duration,
}

/// What the reader task saw.
struct ReaderReport {
    /// Latency of each write, in nanoseconds, in arrival order.
    latencies_ns: Vec<u64>,
    /// Commits the feed dropped for the reader.
    lagged: u64,
}

/// Runs `meshkv bench latency`.
pub fn run(args: LatencyArgs) -> Result<()> {
    let total = args.rate.checked_mul(args.seconds).filter(|&t| t <= MAX_WRITES);
    let total = total.ok_or_else(|| anyhow!("--rate x --seconds must be at most {MAX_WRITES}"))?;
    let value_size = usize::try_from(args.value_size).context("--value-size is too large")?;
    ensure!(
        value_size <= Options::default().max_value_len,
        "--value-size must be at most {} bytes (meshkv's default limit)",
        Options::default().max_value_len
    );
    let base = super::base_dir(args.dir.as_deref())?;
    let load_before = machine::load_average();
    let dir_a = super::temp_dir(&base, "meshkv-bench-latency-a-")?;
    let dir_b = super::temp_dir(&base, "meshkv-bench-latency-b-")?;
    let db_a = Db::open(dir_a.path(), Options::default()).context("cannot open store A")?;
    let db_b = Db::open(dir_b.path(), Options::default()).context("cannot open store B")?;

    let rt = super::runtime()?;
    let loopback = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (a, b, setup) = rt.block_on(async {
        let setup = Instant::now();
        let a = Node::start(db_a.clone(), NodeConfig { listen: loopback, ..NodeConfig::default() }).await?;
        let mut b = Node::start(db_b.clone(), NodeConfig { listen: loopback, ..NodeConfig::default() }).await?;
        let (events_a, events_b) = (a.events(), b.events());
        b.add_peer(a.local_addr().ok_or_else(|| anyhow!("node A has no listen address"))?, Mode::Sync);
        let both = async { tokio::try_join!(caught_up(events_a, db_b.node_id()), caught_up(events_b, db_a.node_id())) };
        tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .map_err(|_| anyhow!("nodes A and B did not connect and catch up within 30 s"))??;
        anyhow::Ok((a, b, setup.elapsed()))
    })?;
    tracing::info!(?setup, "nodes connected and caught up");

    // Shared clock: send times and arrival times are nanoseconds since `t0`.
    let t0 = Instant::now();
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sub = db_b.subscribe(KeyRange::all());
    let reader = rt.spawn(read_arrivals(sub, t0, total, Arc::clone(&written), Arc::clone(&done), args.drain_secs));
    let writer = {
        let (db, written, done) = (db_a.clone(), Arc::clone(&written), Arc::clone(&done));
        let (rate, seconds, keys) = (args.rate, args.seconds, args.keys);
        std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || {
                let r = write_paced(&db, t0, rate, seconds, keys, value_size, &written);
                done.store(true, Ordering::Release);
                r
            })
            .context("cannot start the writer thread")?
    };
    let writer = writer.join().map_err(|_| anyhow!("the writer thread panicked"))?;
    let reader = rt.block_on(reader).context("the reader task failed")?;
    rt.block_on(async {
        b.shutdown().await;
        a.shutdown().await;
    });
    let writer = writer?;
    let reader = reader?;

    let mut machine = machine::describe();
    machine["load_average_before"] = json!(load_before);
    machine["load_average_after"] = json!(machine::load_average());
    let out = report_json(&args, &base, machine, setup, &writer, &reader);
    if args.json {
        println!("{out}");
    } else {
        print_table(&args, &out);
    }
    Ok(())
}

/// Waits for `CaughtUp` from `peer` on a node's event stream.
async fn caught_up(mut events: broadcast::Receiver<NodeEvent>, peer: NodeId) -> Result<()> {
    loop {
        match events.recv().await {
            Ok(NodeEvent::CaughtUp { peer: p }) if p == peer => return Ok(()),
            Ok(NodeEvent::Error { addr, message }) => bail!("link to {addr} failed: {message}"),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => bail!("node stopped"),
        }
    }
}

/// Puts on `db` at `rate` per second for at most `seconds`.
fn write_paced(
    db: &Db,
    t0: Instant,
    rate: u64,
    seconds: u64,
    keys: u64,
    value_size: usize,
    written: &AtomicU64,
) -> Result<WriterReport> {
    let total = rate * seconds;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut max_late = Duration::ZERO;
    let mut max_put = Duration::ZERO;
    let mut value = Vec::with_capacity(value_size);
    let mut writes = 0;
    for i in 0..total {
        let due = start + Duration::from_nanos(((i as u128 * 1_000_000_000) / rate as u128) as u64);
        let now = Instant::now();
        if now >= end {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        value.clear();
        value.resize(HEADER, 0);
        push_value(i, value_size - HEADER, &mut value);
        let send = Instant::now();
        max_late = max_late.max(send.saturating_duration_since(due));
        let send_ns = send.duration_since(t0).as_nanos() as u64;
        value[..8].copy_from_slice(&send_ns.to_be_bytes());
        value[8..HEADER].copy_from_slice(&i.to_be_bytes());
        db.put(key_at(i % keys).to_vec(), value.clone()).context("put on A failed")?;
        max_put = max_put.max(send.elapsed());
        writes = i + 1;
        written.store(writes, Ordering::Release);
    }
    Ok(WriterReport { writes, elapsed: start.elapsed(), max_late, max_put })
}

/// Receives B's changes until every write arrived, or the writer is done and
/// `drain_secs` passed.
async fn read_arrivals(
    mut sub: meshkv::storage::Subscription,
    t0: Instant,
    total: u64,
    written: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    drain_secs: u64,
) -> Result<ReaderReport> {
    let mut latencies_ns = Vec::with_capacity(total as usize);
    let mut seen = HashSet::with_capacity(total as usize);
    let mut lagged = 0;
    let mut drain_deadline = None;
    loop {
        if done.load(Ordering::Acquire) {
            if seen.len() as u64 >= written.load(Ordering::Acquire) {
                break;
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(drain_secs));
            if Instant::now() >= deadline {
                break;
            }
        }
        let change = match tokio::time::timeout(Duration::from_millis(20), sub.recv()).await {
            Err(_) => continue,
            Ok(Ok(change)) => change,
            Ok(Err(FeedError::Lagged { missed })) => {
                lagged += missed;
                continue;
            }
            Ok(Err(e)) => bail!("B's change feed failed: {e}"),
        };
        let arrival_ns = t0.elapsed().as_nanos() as u64;
        let Some(value) = change.record().value() else { continue };
        if change.key.len() != KEY_LEN || value.len() < HEADER {
            continue;
        }
        let send_ns = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(value[8..HEADER].try_into().expect("8 bytes"));
        if seen.insert(seq) {
            latencies_ns.push(arrival_ns.saturating_sub(send_ns));
        }
    }
    Ok(ReaderReport { latencies_ns, lagged })
}

/// Nearest-rank percentile of sorted `v`, in milliseconds.
fn percentile_ms(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1] as f64 / 1e6)
}

fn report_json(
    args: &LatencyArgs,
    base: &std::path::Path,
    machine: Value,
    setup: Duration,
    w: &WriterReport,
    r: &ReaderReport,
) -> Value {
    let mut sorted = r.latencies_ns.clone();
    sorted.sort_unstable();
    let received = sorted.len() as u64;
    let mean = (!sorted.is_empty()).then(|| sorted.iter().map(|&x| x as f64).sum::<f64>() / sorted.len() as f64 / 1e6);
    json!({
        "benchmark": "replication_latency",
        "meshkv_version": env!("CARGO_PKG_VERSION"),
        "machine": machine,
        "dir": base.display().to_string(),
        "mode": "sync",
        "rate": args.rate,
        "seconds": args.seconds,
        "keys": args.keys,
        "key_size": KEY_LEN,
        "value_size": args.value_size,
        "writes": w.writes,
        "received": received,
        "missing": w.writes.saturating_sub(received),
        "feed_lagged_commits": r.lagged,
        "achieved_rate": w.writes as f64 / w.elapsed.as_secs_f64().max(1e-9),
        "p50_ms": percentile_ms(&sorted, 50.0),
        "p90_ms": percentile_ms(&sorted, 90.0),
        "p99_ms": percentile_ms(&sorted, 99.0),
        "p999_ms": percentile_ms(&sorted, 99.9),
        "max_ms": sorted.last().map(|&x| x as f64 / 1e6),
        "mean_ms": mean,
        "max_schedule_lateness_ms": w.max_late.as_secs_f64() * 1e3,
        "max_put_ms": w.max_put.as_secs_f64() * 1e3,
        "setup_seconds": setup.as_secs_f64(),
        "latency": "from just before Db::put on A to the change's arrival in a Db::subscribe(KeyRange::all()) subscriber on B (a tokio task on the nodes' runtime); one process, one monotonic clock",
    })
}

fn print_table(args: &LatencyArgs, out: &Value) {
    let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "meshkv bench latency: {} puts/s for {} s on A, {} keys, {}-byte values, A <-> B sync over loopback",
        args.rate, args.seconds, args.keys, args.value_size
    );
    println!("machine: {}", machine::summary(&out["machine"]));
    println!();
    println!(
        "{:>8} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "writes", "received", "missing", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    println!(
        "{:>8} {:>9} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        out["writes"],
        out["received"],
        out["missing"],
        f("p50_ms"),
        f("p99_ms"),
        f("p999_ms"),
        f("max_ms")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&v, 100.0), Some(100.0));
        assert_eq!(percentile_ms(&[7_000_000], 99.9), Some(7.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }
}
