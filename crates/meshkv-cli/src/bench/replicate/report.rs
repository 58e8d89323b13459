//! What `bench replicate` reports: the JSON object, the table and their statistics.

use super::raw::RawRun;
use super::{CatchUp, ReplicateArgs};
use crate::bench::machine;
use crate::bench::workload::{KEY_LEN, KEY_PATTERN};
use meshkv::protocol::LinkConfig;
use serde_json::{json, Value};
use std::path::Path;

/// Everything `bench replicate` reports.
pub(super) struct Report<'a> {
    pub(super) args: &'a ReplicateArgs,
    pub(super) base: &'a Path,
    pub(super) n: usize,
    pub(super) record_bytes: usize,
    pub(super) preload_seconds: f64,
    pub(super) read_seconds: f64,
    pub(super) catch_ups: Vec<CatchUp>,
    pub(super) raws: Vec<RawRun>,
    /// Raw ingests of the same records in change-log order.
    pub(super) log_order_raws: Vec<RawRun>,
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

    pub(super) fn to_json(&self, machine: Value) -> Value {
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

    pub(super) fn print_table(&self, out: &Value) {
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
