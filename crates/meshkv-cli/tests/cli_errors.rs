//! Error exits of the command line: node down, bad arguments, `serve` on a
//! port in use or an unusable data directory, refused requests, and a
//! graceful shutdown on SIGTERM.

mod cli_support;

use cli_support::{eventually, free_port, meshkv, run, run_cmd, ChildGuard, Server};
use std::net::TcpListener;
use std::process::Stdio;

#[test]
fn node_down_exits_2_with_a_clear_error() {
    let addr = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["get", "k"],
        vec!["put", "k", "v"],
        vec!["del", "k"],
        vec!["scan"],
        vec!["status", "--json"],
        vec!["export"],
        vec!["watch"],
    ] {
        let mut all = vec!["--node", addr.as_str()];
        all.extend(args);
        run(&all).fails(2, &format!("error: cannot connect to {addr}"));
    }
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        vec!["get"],
        vec!["put", "only-key"],
        vec!["scan", "--limit", "many"],
        vec!["import"],
        vec!["frobnicate"],
        vec!["status", "--bogus"],
        vec![],
    ] {
        let r = run(&args);
        assert_eq!(r.code(), Some(2), "{args:?}: {r:?}");
        assert!(r.stderr.contains("error:") || r.stderr.contains("Usage:"), "{args:?}: {r:?}");
        assert!(r.stderr.contains("--help") || r.stderr.contains("Usage:"), "{args:?}: {r:?}");
    }
}

#[test]
fn serve_on_a_port_in_use_exits_2() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let r = run(&["serve", "--data", data.to_str().unwrap(), "--listen", &addr]);
    r.fails(2, &format!("cannot listen on {addr} (peers and clients)"));
    assert!(r.stderr.to_lowercase().contains("in use"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

#[test]
fn serve_on_a_locked_or_foreign_data_dir_exits_2() {
    let s = Server::start(&[]);
    let addr = format!("127.0.0.1:{}", free_port());
    run(&["serve", "--data", s.data.to_str().unwrap(), "--listen", &addr]).fails(2, "locked");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    run(&["serve", "--data", dir.path().to_str().unwrap(), "--listen", &addr]).fails(2, "not a meshkv store");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("MESHKV"), "garbage").unwrap();
    run(&["serve", "--data", dir.path().to_str().unwrap(), "--listen", &addr]).fails(2, "corrupt");
}

#[test]
fn serve_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let port = free_port();
    run(&["serve", "--data", data, "--listen", &format!("0.0.0.0:{port}")]).fails(2, "--insecure");
    run(&["serve", "--data", data, "--listen", "nonsense"]).fails(2, "cannot resolve listen address");
    run(&["serve", "--data", data, "--busy-poll-us", "20000"]).fails(2, "--busy-poll-us");
    let listen = format!("127.0.0.1:{port}");
    run(&["serve", "--data", data, "--listen", &listen, "--discovery"]).fails(2, "discovery needs the cluster secret");
    let unicast = dir.path().join("unicast.toml");
    std::fs::write(&unicast, "discovery = true\ndiscovery_group = \"127.0.0.1:7429\"\n").unwrap();
    run(&["serve", "--data", data, "--config", unicast.to_str().unwrap()]).fails(2, "not a multicast address");
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, "3c".repeat(32)).unwrap();
    let secret = secret.to_str().unwrap();
    // The default listener is on loopback: nothing to announce to the network (and nothing is sent).
    run(&["serve", "--data", data, "--listen", &listen, "--secret-file", secret, "--discovery"])
        .fails(2, "loopback listener");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\nfavourite_color = \"blue\"\n").unwrap();
    run(&["serve", "--config", config.to_str().unwrap()]).fails(2, "favourite_color");
    run(&["serve", "--config", "/nonexistent/node.toml"]).fails(2, "cannot read config");
}

#[test]
fn refused_requests_exit_2() {
    let s = Server::start(&["--read-only", "--cluster", "blue"]);
    s.run(&["get", "k"]).fails(2, "cluster");
    let mut cmd = meshkv();
    cmd.env("MESHKV_CLUSTER", "blue").args(["--node", &s.addr, "put", "k", "v"]);
    run_cmd(cmd, None).fails(2, "read-only");
    let mut cmd = meshkv();
    cmd.args(["--cluster", "blue", "--node", &s.addr, "get", "k"]);
    run_cmd(cmd, None).fails(1, "not found");
}

#[cfg(unix)]
#[test]
fn sigterm_shuts_down_gracefully_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_on(&data, &[]);
    s.run(&["put", "kept", "yes"]).ok();
    let pid = s.child.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    cli_support::eventually(10, "serve to exit after SIGTERM", || {
        status = s.child.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "{}", s.log_text());
    assert!(s.log_text().contains("shutting down"), "{}", s.log_text());
    drop(s);
    let s = Server::start_on(&data, &[]);
    assert_eq!(s.run(&["get", "kept"]).ok(), "yes");
}

/// A node at its connection limit answers that it is full: the message
/// says so, without suggesting the node is not running.
#[test]
fn a_full_node_is_reported_as_busy_not_as_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[limits]\nmax_connections = 1\n").unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap()]);
    // A watch holds the only slot once it is up (restarted if one of the
    // gets below took the slot first).
    let watch = || {
        let mut cmd = meshkv();
        cmd.args(["--node", &s.addr, "watch"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        ChildGuard(cmd.spawn().unwrap())
    };
    let mut w = watch();
    let mut last = None;
    eventually(30, "a client refused as over the limit", || {
        if w.0.try_wait().unwrap().is_some() {
            w = watch();
        }
        let r = s.run(&["get", "k"]);
        let refused = r.code() == Some(2) && r.stderr.contains("connection limit");
        last = Some(r);
        refused
    });
    let r = last.unwrap();
    assert!(r.stderr.contains("is busy"), "{}", r.stderr);
    assert!(!r.stderr.contains("running there?"), "suggests the node is down: {}", r.stderr);
}
