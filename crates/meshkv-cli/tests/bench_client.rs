//! Runs the built `meshkv` binary: `bench client --json` reports every
//! throughput, the TCP ping-pong baseline and meshkv's ratios to it as
//! positive numbers, in plaintext, with a cluster secret, on a shared
//! runtime and busy-polling (with a secret: polling sees decrypted frames).

use serde_json::Value;
use std::process::Command;

#[test]
fn bench_client_json_reports_every_throughput() {
    let polling = &["--busy-poll-us", "20", "--secret"][..];
    for extra in [&[][..], &["--secret"][..], &["--shared-runtime"][..], polling] {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(env!("CARGO_BIN_EXE_meshkv"))
            .args(["bench", "client", "--json", "--ops", "300", "--in-flight", "4", "--batch", "10", "--dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("run meshkv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "meshkv bench client {extra:?} failed: {}\n{stderr}", out.status);
        let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        for k in [
            "put_seq_per_s",
            "get_seq_per_s",
            "put_in_flight_per_s",
            "get_in_flight_per_s",
            "put_batched_per_s",
            "get_many_per_s",
            "tcp_pingpong_seq_per_s",
            "tcp_pingpong_in_flight_per_s",
            "tcp_pingpong_request_bytes",
            "tcp_pingpong_reply_bytes",
            "get_seq_vs_pingpong",
            "put_seq_vs_pingpong",
            "get_in_flight_vs_pingpong",
            "put_in_flight_vs_pingpong",
        ] {
            let x = v[k].as_f64().unwrap_or_else(|| panic!("`{k}` missing in {v}"));
            assert!(x.is_finite() && x > 0.0, "{k} = {x} with {extra:?}");
        }
        assert_eq!(v["encrypted"], extra.contains(&"--secret"), "{v}");
        assert_eq!(v["ops"], 300);
        assert_eq!(v["busy_poll_us"], if extra == polling { 20 } else { 0 }, "{v}");
    }
}
