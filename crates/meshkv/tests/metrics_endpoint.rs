//! The metrics endpoint serves, over real HTTP, what a node did: local
//! writes, records applied from peers, conflicts, and per peer its state,
//! lag and traffic. A port in use is a clear start-up error.

mod common;

use common::{eventually, loopback};
use meshkv::node::{Node, NodeConfig, NodeError, PeerState};
use meshkv::protocol::Mode;
use meshkv::{Batch, Db, Options};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one HTTP/1.1 request; returns the status code, the headers
/// (lower-cased names) and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to the metrics endpoint");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Sample lines of a Prometheus text body: series (name with labels) → value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("value of {l:?}")))
        })
        .collect()
}

/// The value of the one series of `name` whose labels contain `labels`.
fn value(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l)))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(found.len(), 1, "series {name} with {labels:?}: {samples:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_writes_replication_and_peers() {
    let dirs = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = Db::open(dirs.0.path(), Options::default()).expect("open");
    let b = Db::open(dirs.1.path(), Options::default()).expect("open");
    let node_b = common::start(b.clone()).await;
    let addr_b = node_b.local_addr().expect("bound");
    let cfg = NodeConfig {
        listen: loopback(),
        peers: vec![(addr_b, Mode::Sync)],
        metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..NodeConfig::default()
    };
    let node_a = Node::start(a.clone(), cfg).await.expect("start");
    let metrics = node_a.metrics_addr().expect("metrics bound");

    let mut batch = Batch::new();
    for i in 0..10 {
        batch.put(format!("a{i}"), "x");
    }
    a.write(batch).expect("write");
    a.delete("a9").expect("delete");
    for i in 0..4 {
        b.put(format!("b{i}"), "y").expect("put");
    }
    eventually("both nodes hold everything", || a.version_vector() == b.version_vector()).await;
    eventually("A sees B live and caught up", || {
        node_a.peers().iter().any(|p| p.state == PeerState::Live && p.lag == 0 && p.node_id == Some(b.node_id()))
    })
    .await;

    let (status, headers, body) = http(metrics, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"].starts_with("text/plain; version=0.0.4"), "{headers:?}");
    let s = samples(&body);
    assert_eq!(value(&s, "meshkv_local_writes_total", &[]), 11.0, "ten puts and a delete");
    assert_eq!(value(&s, "meshkv_remote_records_applied_total", &[]), 4.0);
    assert_eq!(value(&s, "meshkv_conflicts_total", &[]), 0.0);
    let peer = format!("peer=\"{}\"", b.node_id());
    assert_eq!(value(&s, "meshkv_peer_state", &[&peer, "state=\"live\""]), 1.0);
    assert_eq!(value(&s, "meshkv_peer_lag_entries", &[&peer]), 0.0);
    assert_eq!(value(&s, "meshkv_peer_lag_seconds", &[&peer]), 0.0);
    assert!(value(&s, "meshkv_peer_sent_records_total", &[&peer]) >= 10.0, "{body}");
    assert!(value(&s, "meshkv_peer_received_records_total", &[&peer]) >= 4.0, "{body}");
    assert!(value(&s, "meshkv_peer_sent_bytes_total", &[&peer]) > 10.0 * 20.0, "{body}");
    assert!(value(&s, "meshkv_peer_received_bytes_total", &[&peer]) > 4.0 * 20.0, "{body}");
    assert!(value(&s, "meshkv_uptime_seconds", &[]) > 0.0);
    assert_eq!(samples(&node_a.metrics_text())["meshkv_local_writes_total"], 11.0, "the library renders the same");

    // Anything but GET /metrics is refused, and the endpoint keeps serving.
    assert_eq!(http(metrics, "GET", "/").await.0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").await.0, 405);
    let mut garbage = TcpStream::connect(metrics).await.expect("connect");
    garbage.write_all(b"\x00\x01 not http\r\n\r\n").await.expect("send");
    drop(garbage);
    assert_eq!(http(metrics, "GET", "/metrics").await.0, 200);

    // A second node cannot take the same metrics port, and says why.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Db::open(dir.path(), Options::default()).expect("open");
    let taken = NodeConfig { listen: loopback(), metrics: Some(metrics), ..NodeConfig::default() };
    match Node::start(c, taken).await {
        Err(NodeError::Listen { addr, .. }) => assert_eq!(addr, metrics),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a second node bound a metrics port in use"),
    }

    node_a.shutdown().await;
    node_b.shutdown().await;
}
