//! `meshkv serve --metrics HOST:PORT` serves Prometheus metrics over HTTP
//! that count the node's writes; a metrics port in use stops `serve` with a
//! clear error.

mod cli_support;

use cli_support::{eventually, free_port, meshkv, run_cmd, Server};
use std::io::{Read, Write};
use std::net::TcpStream;

/// The body of `GET /metrics` at `addr`, if it answers 200.
fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[test]
fn serve_exposes_metrics_and_refuses_a_port_in_use() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let s = Server::start(&["--metrics", &metrics]);
    s.run(&["put", "k1", "v"]).ok();
    s.run(&["put", "k2", "v"]).ok();
    s.run(&["del", "k1"]).ok();
    eventually(20, "the metrics count three local writes", || {
        scrape(&metrics).is_some_and(|body| body.lines().any(|l| l == "meshkv_local_writes_total 3"))
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = meshkv();
    cmd.args(["serve", "--data"]).arg(dir.path()).args(["--listen", &listen, "--metrics", &metrics]);
    run_cmd(cmd, None).fails(2, &format!("cannot listen on {metrics} (metrics)"));
}
