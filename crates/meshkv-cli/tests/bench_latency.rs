//! Runs the built `meshkv` binary: `bench latency --json` writes on node A
//! at a paced rate, sees every write arrive on node B, and prints one JSON
//! object with ordered latency percentiles.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("`{k}` is missing or not a number in {v}"))
}

#[test]
fn bench_latency_json_reports_percentiles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["bench", "latency", "--json", "--seconds", "1", "--rate", "200", "--keys", "50", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run meshkv");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meshkv bench latency failed: {}\n{stderr}", out.status);
    // One second of writes plus at most the 5 s drain and setup.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{stdout}"));

    assert_eq!(v["benchmark"], "replication_latency");
    assert_eq!(v["rate"], 200);
    assert_eq!(v["seconds"], 1);
    let writes = v["writes"].as_u64().expect("writes");
    assert!(writes > 0 && writes <= 200, "writes = {writes}");
    // Every write shows up on B (50 keys at 200 writes/s: a key is rewritten
    // every 250 ms, far apart enough that no write is coalesced away).
    assert_eq!(v["received"], writes, "{v}");
    assert_eq!(v["missing"], 0);
    let (p50, p99, max) = (num(&v, "p50_ms"), num(&v, "p99_ms"), num(&v, "max_ms"));
    assert!(p50 > 0.0, "p50_ms = {p50}");
    assert!(p50 <= p99 && p99 <= max, "p50 {p50} <= p99 {p99} <= max {max}");
    assert!(max < 5_000.0, "max_ms = {max}");
    assert!(num(&v, "achieved_rate") > 0.0);
    assert!(v["machine"]["cores"].as_u64().is_some_and(|c| c > 0), "machine: {}", v["machine"]);

    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list dir").collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

#[test]
fn bench_latency_rejects_bad_arguments() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_meshkv")).args(args).output().expect("run meshkv");
    assert!(!run(&["bench", "latency", "--rate", "0"]).status.success());
    assert!(!run(&["bench", "latency", "--seconds", "0"]).status.success());
    assert!(!run(&["bench", "latency", "--value-size", "8"]).status.success());
}
