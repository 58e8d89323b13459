//! Runs the built `meshkv` binary: `bench local --json` must print one JSON
//! object with positive throughputs and a consistent ratio.

use serde_json::Value;
use std::process::Command;

fn assert_ratio(obj: &Value, what: &str) {
    let num = |k: &str| obj[k].as_f64().unwrap_or_else(|| panic!("{what}: `{k}` is missing or not a number in {obj}"));
    let replicated = num("replicated_put_per_s");
    let raw = num("raw_put_per_s");
    let ratio = num("ratio");
    assert!(replicated > 0.0 && replicated.is_finite(), "{what}: replicated_put_per_s = {replicated}");
    assert!(raw > 0.0 && raw.is_finite(), "{what}: raw_put_per_s = {raw}");
    let expected = replicated / raw;
    assert!((ratio - expected).abs() <= 1e-9 * expected.max(1.0), "{what}: ratio {ratio} != {replicated} / {raw}");
}

#[test]
fn bench_local_json_reports_throughputs_and_ratio() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["bench", "local", "--json", "--entries", "2000", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run meshkv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meshkv bench local failed: {}\n{stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    // Exactly one JSON object on stdout (a trailing newline is fine).
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{stdout}"));
    assert!(v.is_object(), "not an object: {v}");

    assert_eq!(v["value_size"], 100);
    assert_eq!(v["durability"], "buffered");
    assert!(v["machine"]["cores"].as_u64().is_some_and(|c| c > 0), "machine.cores: {}", v["machine"]);
    assert!(v["machine"]["os"].is_string());

    // Top-level convenience fields are those of batch size 1000.
    assert_eq!(v["batch_size"], 1000);
    assert_ratio(&v, "top level");

    let results = v["results"].as_array().expect("results array");
    let sizes: Vec<u64> = results.iter().filter_map(|r| r["batch_size"].as_u64()).collect();
    assert_eq!(sizes, vec![1, 1000]);
    for r in results {
        assert_eq!(r["entries"], 2000);
        assert_ratio(r, &format!("batch size {}", r["batch_size"]));
        // On-CPU figures: present on Linux, null elsewhere; consistent when present.
        if !r["cpu_ratio"].is_null() {
            let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("`{k}` missing in {r}"));
            let (repl, raw, ratio) = (f("replicated_put_per_cpu_s"), f("raw_put_per_cpu_s"), f("cpu_ratio"));
            assert!(repl > 0.0 && raw > 0.0, "cpu rates: {r}");
            assert!((ratio - repl / raw).abs() <= 1e-9 * ratio.max(1.0), "cpu_ratio: {r}");
        }
    }
    let b1000 = &results[1];
    assert_eq!(b1000["replicated_put_per_s"], v["replicated_put_per_s"]);
    assert_eq!(b1000["raw_put_per_s"], v["raw_put_per_s"]);

    // The temporary stores are cleaned up.
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list dir").collect();
    assert!(left.is_empty(), "bench left files behind: {left:?}");
}

#[test]
fn bench_local_rejects_bad_arguments() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_meshkv")).args(args).output().expect("run meshkv");
    let out = run(&["bench", "local", "--durability", "sometimes"]);
    assert!(!out.status.success());
    let out = run(&["bench", "local", "--entries", "0"]);
    assert!(!out.status.success());
    let out = run(&["bench", "local", "--batch-sizes", "0", "--entries", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch sizes must be at least 1"));
}

#[test]
fn bench_local_overwrite_times_a_second_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["bench", "local", "--json", "--overwrite", "--entries", "3000", "--batch-sizes", "100", "--runs", "1"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run meshkv");
    assert!(out.status.success(), "meshkv bench local --overwrite failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["overwrite"], true);
    assert_eq!(v["batch_size"], 100);
    assert_ratio(&v, "overwrite");
}
