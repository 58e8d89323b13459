//! Several remote scans open at once, on one client or on two, advanced
//! alternately: each sees every key once, in order.

mod common;
use common::start;

use meshkv::client::{Client, ClientOptions, ScanStream};
use meshkv::{Db, Options, ScanOptions};
use std::time::Duration;

fn keys() -> Vec<Vec<u8>> {
    (0..100).map(|i| format!("key/{i:03}").into_bytes()).collect()
}

fn value_of(key: &[u8]) -> Vec<u8> {
    let mut v = b"value of ".to_vec();
    v.extend_from_slice(key);
    v
}

async fn node_with_keys(dir: &std::path::Path) -> meshkv::node::Node {
    let db = Db::open(dir, Options::default()).expect("open");
    for k in keys() {
        db.put(k.clone(), value_of(&k)).expect("local write");
    }
    start(db).await
}

/// Advances the streams one entry each in turn until all are done; returns
/// the keys each saw (checking values on the way).
async fn interleave(mut streams: Vec<ScanStream>) -> Vec<Vec<Vec<u8>>> {
    let mut seen = vec![Vec::new(); streams.len()];
    let mut done = vec![false; streams.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done.iter().any(|d| !d) {
        assert!(tokio::time::Instant::now() < deadline, "interleaved scans did not finish");
        for (i, s) in streams.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match s.next().await {
                Some(Ok(e)) => {
                    assert_eq!(e.value, value_of(&e.key), "stream {i}: value of {:?}", String::from_utf8_lossy(&e.key));
                    seen[i].push(e.key);
                    assert!(seen[i].len() <= 100, "stream {i} yields more than 100 entries");
                }
                Some(Err(e)) => panic!("stream {i} failed: {e}"),
                None => done[i] = true,
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scans_on_one_client_advanced_alternately_each_see_every_key_once() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node_with_keys(dir.path()).await;
    let addr = node.local_addr().expect("bound");
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let expected = keys();
    let mut reversed = expected.clone();
    reversed.reverse();

    // Chunk sizes that do not divide 100, so both cursors stay open on the
    // node while the other one is read.
    for (a, b) in [(7, 7), (1, 13), (100, 3)] {
        let seen =
            interleave(vec![client.scan(ScanOptions::default(), a), client.scan(ScanOptions::default(), b)]).await;
        assert_eq!(seen[0], expected, "first stream (chunk {a})");
        assert_eq!(seen[1], expected, "second stream (chunk {b})");
    }

    // A forward and a reverse scan interleaved, plus a third one.
    let rev = ScanOptions { reverse: true, ..ScanOptions::default() };
    let seen = interleave(vec![
        client.scan(ScanOptions::default(), 9),
        client.scan(rev, 11),
        client.scan(ScanOptions::default(), 5),
    ])
    .await;
    assert_eq!(seen[0], expected);
    assert_eq!(seen[1], reversed);
    assert_eq!(seen[2], expected);

    // Really concurrent: two tasks pulling on clones of the same client.
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut s = client.scan(ScanOptions::default(), 3 + i);
                let mut keys = Vec::new();
                while let Some(e) = s.next().await {
                    keys.push(e.expect("entry").key);
                    tokio::task::yield_now().await;
                }
                keys
            })
        })
        .collect();
    for t in tasks {
        let keys = tokio::time::timeout(Duration::from_secs(30), t).await.expect("in time").expect("task");
        assert_eq!(keys, expected);
    }

    drop(client);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_on_two_clients_advanced_alternately_each_see_every_key_once() {
    let dir = tempfile::tempdir().expect("dir");
    let node = node_with_keys(dir.path()).await;
    let addr = node.local_addr().expect("bound");
    let first = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let second = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let expected = keys();

    for chunk in [1, 7, 50] {
        let seen =
            interleave(vec![first.scan(ScanOptions::default(), chunk), second.scan(ScanOptions::default(), chunk)])
                .await;
        assert_eq!(seen[0], expected, "first client (chunk {chunk})");
        assert_eq!(seen[1], expected, "second client (chunk {chunk})");
    }

    // Two streams per client, four in all, interleaved.
    let seen = interleave(vec![
        first.scan(ScanOptions::default(), 6),
        second.scan(ScanOptions::default(), 6),
        first.scan(ScanOptions::default(), 17),
        second.scan(ScanOptions::default(), 17),
    ])
    .await;
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, &expected, "stream {i}");
    }

    // A write between chunks does not show up in scans already open (each
    // scan reads one snapshot) and does not disturb them.
    let mut a = first.scan(ScanOptions::default(), 10);
    let mut b = second.scan(ScanOptions::default(), 10);
    let ea = a.next().await.expect("entry").expect("ok");
    let eb = b.next().await.expect("entry").expect("ok");
    first.put("key/050x", "late").await.expect("put");
    let mut rest_a = vec![ea.key];
    let mut rest_b = vec![eb.key];
    rest_a.extend(a.collect().await.expect("rest").into_iter().map(|e| e.key));
    rest_b.extend(b.collect().await.expect("rest").into_iter().map(|e| e.key));
    assert_eq!(rest_a, expected);
    assert_eq!(rest_b, expected);

    drop((first, second));
    node.shutdown().await;
}
