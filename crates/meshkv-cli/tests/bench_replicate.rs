//! Runs the built `meshkv` binary: `bench replicate --json` catches an empty
//! receiver (a child process) up from a pre-loaded sender and prints one JSON
//! object with a consistent throughput, ratio and peak RSS.

use serde_json::Value;
use std::process::Command;

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("`{k}` is missing or not a number in {v}"))
}

#[test]
fn bench_replicate_json_reports_catch_up_raw_ingest_and_rss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["bench", "replicate", "--json", "--entries", "2000", "--timeout-secs", "15", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run meshkv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meshkv bench replicate failed: {}\n{stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{stdout}"));

    assert_eq!(v["benchmark"], "replicate_catch_up");
    assert_eq!(v["entries"], 2000);
    assert_eq!(v["value_size"], 100);
    assert_eq!(v["mode"], "pull");
    let seconds = num(&v, "seconds");
    let rate = num(&v, "entries_per_s");
    let raw = num(&v, "raw_ingest_per_s");
    let ratio = num(&v, "ratio");
    assert!(seconds > 0.0 && seconds < 15.0, "seconds = {seconds}");
    assert!((rate - 2000.0 / seconds).abs() <= 1e-6 * rate, "entries_per_s {rate} != 2000 / {seconds}");
    assert!(raw > 0.0 && raw.is_finite(), "raw_ingest_per_s = {raw}");
    assert!((ratio - rate / raw).abs() <= 1e-9 * ratio.max(1.0), "ratio {ratio} != {rate} / {raw}");
    // One run: its pair is the ratio, and so is the median.
    let pairs: Vec<f64> =
        v["samples_ratio"].as_array().expect("samples_ratio").iter().filter_map(Value::as_f64).collect();
    assert_eq!(pairs.len(), 1, "samples_ratio: {}", v["samples_ratio"]);
    assert!((pairs[0] - ratio).abs() <= 1e-9 * ratio.max(1.0), "pair {} != ratio {ratio}", pairs[0]);
    assert!((num(&v, "ratio_median") - ratio).abs() <= 1e-9 * ratio.max(1.0));
    // The receiver is a separate process: a few MiB at least, far below a GiB here.
    let rss = num(&v, "peak_rss_mb");
    assert!(rss > 1.0 && rss < 1024.0, "peak_rss_mb = {rss}");
    assert!(num(&v, "receiver_rss_before_catch_up_mb") <= rss);
    assert_eq!(v["receiver"]["received_items"], 2000, "receiver: {}", v["receiver"]);
    assert!(v["machine"]["cores"].as_u64().is_some_and(|c| c > 0), "machine: {}", v["machine"]);
    assert!(v["machine"]["os"].is_string());

    // Sender, receiver and raw stores are all cleaned up.
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list dir").collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

#[test]
fn bench_replicate_rejects_bad_arguments() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_meshkv")).args(args).output().expect("run meshkv");
    assert!(!run(&["bench", "replicate", "--entries", "0"]).status.success());
    assert!(!run(&["bench", "replicate", "--mode", "push"]).status.success());
    assert!(!run(&["bench", "replicate", "--runs", "0"]).status.success());
}
