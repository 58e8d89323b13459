//! `meshkv serve` with extreme `[limits]` values: each either works or is
//! refused with a clear error, never a panic or a node that cannot serve.

mod cli_support;

use cli_support::{free_port, run, Server};
use std::time::Duration;

fn config(body: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, body).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

#[test]
fn a_huge_max_connections_still_serves_clients() {
    let (_dir, cfg) = config("[limits]\nmax_connections = 4611686018427387904\n");
    let node = Server::start(&["--config", &cfg]);
    node.run(&["put", "k", "v"]).ok();
    assert_eq!(node.run(&["get", "k"]).ok(), "v");
}

#[test]
fn key_and_value_limits_whose_sum_overflows_are_a_config_error() {
    let (dir, cfg) = config("[limits]\nmax_key_bytes = 9223372036854775807\nmax_value_bytes = 9223372036854775807\n");
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let r = run(&["serve", "--config", &cfg, "--listen", &listen, "--data", data.to_str().unwrap()]);
    r.fails(2, "max_key_bytes + max_value_bytes");
}

/// Nodes that share a short idle timeout ping often enough for it.
#[test]
fn a_short_idle_timeout_shared_by_the_cluster_keeps_idle_links_up() {
    let (_dir, cfg) = config("[limits]\nidle_timeout_ms = 2000\n");
    let a = Server::start(&["--config", &cfg]);
    let b = Server::start(&["--config", &cfg, "--peer", &a.addr]);
    cli_support::eventually(20, "B live with A", || {
        b.status()["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["state"] == "live"))
    });
    // Three idle timeouts without traffic.
    std::thread::sleep(Duration::from_secs(6));
    let logs = format!("{}\n{}", a.log_text(), b.log_text());
    assert!(!logs.contains("Timeout"), "idle links timed out:\n{logs}");
    assert!(logs.contains("give every node this idle_timeout_ms"), "no advice about the short timeout:\n{logs}");
    b.run(&["put", "k", "v"]).ok();
    cli_support::eventually(10, "the write reached A", || a.run(&["get", "k"]).code() == Some(0));
}
