//! Writes re-sent after a reconnect are applied at most once (the node
//! remembers request ids); with retry off a write in flight during a cut
//! fails with `ErrorCode::ConnectionLost`.

mod common;
use common::{start, Proxy};

use meshkv::client::{Client, ClientOptions};
use meshkv::protocol::ErrorCode;
use meshkv::{Db, Dot, Options};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PUTS: usize = 500;
const WRITERS: usize = 10;

fn key(i: usize) -> Vec<u8> {
    format!("key/{i:04}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value {i} {}", "x".repeat(i % 97)).into_bytes()
}

/// Cuts every proxied connection every `every` until `stop` (at most 60 s).
fn cutter(proxy: &Arc<Proxy>, every: Duration, stop: &Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (proxy, stop) = (Arc::clone(proxy), Arc::clone(stop));
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(every).await;
            proxy.cut();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_retried_across_cuts_are_each_applied_exactly_once() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let db = node.db().clone();
    let proxy = Arc::new(Proxy::start(node.local_addr().expect("bound")).await);
    let opts = ClientOptions { retry: true, ..ClientOptions::default() };
    // Two clients (two ids in the node's retry memory), each shared by
    // several concurrent writers (pipelined requests on one connection).
    let clients = [
        Client::connect(proxy.addr(), opts.clone()).await.expect("connect"),
        Client::connect(proxy.addr(), opts).await.expect("connect"),
    ];
    let own_before = db.version_vector().get(db.node_id());
    let accepted_before = proxy.accepted();

    let stop = Arc::new(AtomicBool::new(false));
    let cuts = cutter(&proxy, Duration::from_millis(20), &stop);
    let started = std::time::Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = clients[w % 2].clone();
            tokio::spawn(async move {
                let mut dots = Vec::new();
                for i in (w..PUTS).step_by(WRITERS) {
                    let dot = client
                        .put(key(i), value(i))
                        .await
                        .unwrap_or_else(|e| panic!("put {i} failed despite retry: {e}"))
                        .expect("a put has a dot");
                    dots.push((i, dot));
                    // Spread the puts over many cut periods (about 0.5 s in all).
                    tokio::time::sleep(Duration::from_millis((i % 5) as u64 * 5)).await;
                }
                dots
            })
        })
        .collect();
    let mut dots: Vec<(usize, Dot)> = Vec::new();
    for w in writers {
        let got = tokio::time::timeout(Duration::from_secs(60), w).await.expect("puts finish within 60 s");
        dots.extend(got.expect("writer"));
    }
    stop.store(true, Ordering::SeqCst);
    cuts.await.expect("cutter");
    let reconnects = proxy.accepted() - accepted_before;
    eprintln!("{PUTS} puts in {:?}, {} cuts, {reconnects} reconnects", started.elapsed(), proxy.cuts());
    assert!(reconnects >= 2, "cuts landed while the puts were running ({reconnects} reconnects)");
    assert_eq!(dots.len(), PUTS);

    // Each put was applied exactly once: the node's own counter grew by
    // exactly the number of puts, every reply names a distinct write, and
    // that write is the one holding the key.
    let own = db.version_vector().get(db.node_id()) - own_before;
    assert_eq!(own, PUTS as u64, "node-local writes: {own} for {PUTS} puts (more means a retried put was re-applied)");
    let distinct: BTreeSet<Dot> = dots.iter().map(|(_, d)| *d).collect();
    assert_eq!(distinct.len(), PUTS, "every put got its own dot");
    for (i, dot) in &dots {
        assert_eq!(dot.origin, db.node_id());
        let record = db.get_record(key(*i)).expect("read").unwrap_or_else(|| panic!("key {i} missing"));
        assert_eq!(record.versions().len(), 1, "key {i}: one version");
        let winner = record.winner();
        assert_eq!(winner.dot, *dot, "key {i}: the stored write is the one the reply named");
        assert_eq!(winner.value.as_deref(), Some(value(*i).as_slice()), "key {i}: value");
        assert_eq!(db.get(key(*i)).expect("read"), Some(value(*i)));
    }
    // The node counts exactly the keys written.
    let status = clients[0].status().await.expect("status after the cuts");
    assert_eq!(status.keys, PUTS as u64);

    // Deterministically: the node applies a put, then the connection drops
    // before the reply gets through. The client re-sends it on a new
    // connection and the node answers from its retry memory.
    let own_before = db.version_vector().get(db.node_id());
    for (n, client) in clients.iter().enumerate() {
        proxy.cut_on_next_reply();
        let dot = tokio::time::timeout(Duration::from_secs(20), client.put(format!("reply-lost/{n}"), "once"))
            .await
            .expect("the put ends within 20 s")
            .expect("a put whose reply was lost succeeds with retry")
            .expect("dot");
        assert!(!proxy.armed(), "the reply was dropped");
        let record = db.get_record(format!("reply-lost/{n}")).expect("read").expect("stored");
        assert_eq!(record.winner().dot, dot, "the reply names the one write");
        assert_eq!(db.version_vector().get(db.node_id()), own_before + n as u64 + 1, "applied once, not twice");
    }

    drop(clients);
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        proxy.stop();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_retry_a_put_in_flight_during_a_cut_fails_with_connection_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let node = start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let db = node.db().clone();
    let proxy = Arc::new(Proxy::start(node.local_addr().expect("bound")).await);
    let client = Client::connect(proxy.addr(), ClientOptions { retry: false, ..ClientOptions::default() })
        .await
        .expect("connect");
    client.put("before", "1").await.expect("put before the cut");

    // The proxy drops the connection as soon as the put's bytes reach it:
    // the put is in flight when the connection dies (and never reached the
    // node).
    let own_before = db.version_vector().get(db.node_id());
    proxy.cut_on_next_request();
    let err = tokio::time::timeout(Duration::from_secs(20), client.put("in-flight", "lost"))
        .await
        .expect("the put ends within 20 s")
        .expect_err("a put in flight during a cut fails without retry");
    assert_eq!(err.code, ErrorCode::ConnectionLost, "{err}");
    assert_eq!(proxy.dropped(), 1);
    assert_eq!(db.get("in-flight").expect("read"), None, "the node never saw it");
    assert_eq!(db.version_vector().get(db.node_id()), own_before);

    // The client reconnects on demand: the next put goes through, once.
    client.put("after", "2").await.expect("put after the cut");
    assert_eq!(db.get("after").expect("read"), Some(b"2".to_vec()));
    assert_eq!(db.version_vector().get(db.node_id()), own_before + 1);

    // Many puts while cutting every 20 ms: each either succeeds (and is
    // applied exactly once, with the right value) or fails with
    // ConnectionLost (applied at most once); nothing else.
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = cutter(&proxy, Duration::from_millis(20), &stop);
    let own_before = db.version_vector().get(db.node_id());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for i in (w..PUTS).step_by(WRITERS) {
                    results.push((i, client.put(key(i), value(i)).await));
                    tokio::time::sleep(Duration::from_millis((i % 5) as u64 * 5)).await;
                }
                results
            })
        })
        .collect();
    let mut ok = 0u64;
    let mut lost = 0u64;
    for w in writers {
        let results = tokio::time::timeout(Duration::from_secs(60), w).await.expect("in time").expect("writer");
        for (i, result) in results {
            match result {
                Ok(dot) => {
                    ok += 1;
                    let record = db.get_record(key(i)).expect("read").expect("an acknowledged put is stored");
                    assert_eq!(Some(record.winner().dot), dot, "key {i}: applied once, the acknowledged write");
                    assert_eq!(db.get(key(i)).expect("read"), Some(value(i)));
                }
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::ConnectionLost, "put {i}: {e}");
                    lost += 1;
                    if let Some(v) = db.get(key(i)).expect("read") {
                        assert_eq!(v, value(i), "key {i}: a lost put applied at most once, with its value");
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    cuts.await.expect("cutter");
    let applied = db.version_vector().get(db.node_id()) - own_before;
    eprintln!("without retry: {ok} ok, {lost} lost, {applied} applied");
    assert!(applied >= ok && applied <= PUTS as u64, "{applied} writes applied for {ok} acknowledged puts");

    drop(client);
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        proxy.stop();
    }
    node.shutdown().await;
}
