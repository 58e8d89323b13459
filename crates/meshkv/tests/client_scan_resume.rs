//! SPEC §8: a remote scan over a connection that is cut every 50 ms sees
//! each key exactly once, forward and reverse, for arbitrary byte keys; with
//! retry off the cut is reported as `ErrorCode::ConnectionLost`.

mod common;
use common::{start, Proxy};

use meshkv::client::{Client, ClientOptions};
use meshkv::protocol::ErrorCode;
use meshkv::{Batch, Db, KeyRange, Options, ScanOptions};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHUNK: u32 = 50;
const PREFIX: &[u8] = &[0x70];

/// Edge-case keys: the empty key, 0x00 and 0xff runs, keys that are prefixes
/// of each other.
fn special_keys() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![0, 0xff],
        vec![0xff],
        vec![0xff, 0xff],
        vec![0xff, 0],
        vec![1],
        vec![1, 2],
        vec![1, 2, 3],
    ]
}

/// 10,000 distinct byte keys, sorted: the special ones plus 9,990 pseudo
/// random ones of 1 to 12 bytes (a quarter of them under `PREFIX`, some of
/// them prefixes of others).
fn all_keys() -> Vec<Vec<u8>> {
    let mut set: BTreeSet<Vec<u8>> = special_keys().into_iter().collect();
    set.insert(PREFIX.to_vec());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut i = 0u64;
    while set.len() < 10_000 {
        let r = next();
        let len = 1 + (r % 12) as usize;
        let mut key: Vec<u8> = (0..len).map(|_| (next() >> 56) as u8).collect();
        match i % 8 {
            0 | 1 => key[0] = PREFIX[0],
            // Extend an existing key so prefixes of each other are common.
            2 => {
                if let Some(base) = set.iter().nth((r % set.len() as u64) as usize) {
                    let mut k = base.clone();
                    k.push((r >> 8) as u8);
                    key = k;
                }
            }
            _ => {}
        }
        set.insert(key);
        i += 1;
    }
    assert_eq!(set.len(), 10_000);
    set.into_iter().collect()
}

fn value_of(key: &[u8]) -> Vec<u8> {
    let mut v = vec![key.len() as u8];
    v.extend(key.iter().rev());
    v
}

async fn node_with_keys(dir: &std::path::Path, keys: &[Vec<u8>]) -> meshkv::node::Node {
    let db = Db::open(dir, Options::default()).expect("open");
    for chunk in keys.chunks(500) {
        let mut batch = Batch::new();
        for k in chunk {
            batch.put(k.clone(), value_of(k));
        }
        db.write(batch).expect("local write");
    }
    start(db).await
}

/// A node holding `keys`, a cutting proxy in front of it, and a client
/// connected through the proxy.
async fn through_proxy(dir: &std::path::Path, keys: &[Vec<u8>], retry: bool) -> (meshkv::node::Node, Proxy, Client) {
    let node = node_with_keys(dir, keys).await;
    let proxy = Proxy::start(node.local_addr().expect("bound")).await;
    let client = Client::connect(proxy.addr(), ClientOptions { retry, ..ClientOptions::default() })
        .await
        .expect("connect through the proxy");
    (node, proxy, client)
}

/// Runs one scan through `proxy` while a task cuts every connection every
/// 50 ms (until the scan is done, at most 60 s). Returns the keys seen and
/// how many connections the client made during the scan.
async fn scan_while_cutting(client: &Client, proxy: &Arc<Proxy>, options: ScanOptions) -> (Vec<Vec<u8>>, u64) {
    let accepted_before = proxy.accepted();
    let stop = Arc::new(AtomicBool::new(false));
    let cutter = {
        let (proxy, stop) = (Arc::clone(proxy), Arc::clone(&stop));
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                proxy.cut();
            }
        })
    };
    let scan = async {
        let mut stream = client.scan(options, CHUNK);
        let mut keys = Vec::new();
        while let Some(entry) = stream.next().await {
            let entry = entry.unwrap_or_else(|e| panic!("scan failed after {} keys: {e}", keys.len()));
            assert_eq!(entry.value, value_of(&entry.key), "value of key {:?}", entry.key);
            keys.push(entry.key);
            assert!(keys.len() <= 10_000, "more entries than keys: duplicates");
            // Pace the reader (3 ms per chunk) so that every scan spans
            // cuts: even the shortest case (25 chunks) lasts over 50 ms.
            if keys.len() % CHUNK as usize == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        keys
    };
    let keys = tokio::time::timeout(Duration::from_secs(60), scan).await.expect("the scan finishes within 60 s");
    stop.store(true, Ordering::SeqCst);
    cutter.await.expect("cutter");
    (keys, proxy.accepted() - accepted_before)
}

/// Where `got` first differs from `want`, for a readable failure.
fn first_difference(got: &[Vec<u8>], want: &[Vec<u8>]) -> String {
    let i = got.iter().zip(want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
    let dups = got.len() - got.iter().collect::<BTreeSet<_>>().len();
    format!(
        "got {} keys ({dups} duplicated), want {}; first difference at index {i}: got {:?}, want {:?}; previous {:?}",
        got.len(),
        want.len(),
        got.get(i),
        want.get(i),
        i.checked_sub(1).and_then(|p| got.get(p)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_cut_every_50ms_sees_each_key_exactly_once() {
    let keys = all_keys();
    for k in special_keys() {
        assert!(keys.binary_search(&k).is_ok());
    }
    let dir = tempfile::tempdir().expect("dir");
    let (node, proxy, client) = through_proxy(dir.path(), &keys, true).await;
    let proxy = Arc::new(proxy);

    let reversed: Vec<Vec<u8>> = keys.iter().rev().cloned().collect();
    let prefixed: Vec<Vec<u8>> = keys.iter().filter(|k| k.starts_with(PREFIX)).cloned().collect();
    let prefixed_rev: Vec<Vec<u8>> = prefixed.iter().rev().cloned().collect();
    assert!(prefixed.len() > 20 * CHUNK as usize, "the prefix scan spans many chunks");
    let rev = |o: ScanOptions| ScanOptions { reverse: true, ..o };
    let limited = ScanOptions { limit: Some(7000), ..ScanOptions::default() };
    let in_prefix = ScanOptions::range(KeyRange::prefix(PREFIX));
    let cases: Vec<(&str, ScanOptions, Vec<Vec<u8>>)> = vec![
        ("forward", ScanOptions::default(), keys.clone()),
        ("reverse", rev(ScanOptions::default()), reversed.clone()),
        ("forward, limit 7000", limited.clone(), keys[..7000].to_vec()),
        ("reverse, limit 7000", rev(limited), reversed[..7000].to_vec()),
        ("forward, prefix", in_prefix.clone(), prefixed.clone()),
        ("reverse, prefix", rev(in_prefix.clone()), prefixed_rev.clone()),
        ("forward, prefix, limit", ScanOptions { limit: Some(1234), ..in_prefix }, prefixed[..1234].to_vec()),
    ];
    let mut total = 0;
    for (name, options, want) in cases {
        let started = std::time::Instant::now();
        let (got, connections) = scan_while_cutting(&client, &proxy, options).await;
        assert!(got == want, "{name}: {}", first_difference(&got, &want));
        eprintln!("{name}: {} keys in {:?} over {connections} new connections", got.len(), started.elapsed());
        assert!(connections >= 1, "{name}: a cut landed during the scan");
        total += connections;
    }

    assert!(total >= 20, "cuts landed mid-scan {total} times in all");

    // The connection still works once the cutting stops.
    assert_eq!(client.get(vec![0xff, 0xff]).await.expect("get"), Some(value_of(&[0xff, 0xff])));
    drop(client);
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        proxy.stop();
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_retry_a_scan_cut_mid_way_fails_with_connection_lost() {
    let keys = all_keys();
    let dir = tempfile::tempdir().expect("dir");
    let (node, proxy, client) = through_proxy(dir.path(), &keys, false).await;

    for reverse in [false, true] {
        // The connection is dropped when the request for the second chunk
        // reaches the proxy: the cut deterministically lands mid-scan.
        let mut stream = client.scan(ScanOptions { reverse, ..ScanOptions::default() }, CHUNK);
        let mut seen = Vec::new();
        let first = stream.next().await.expect("first entry").expect("first chunk arrives");
        seen.push(first.key);
        proxy.cut_on_next_request();
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match stream.next().await {
                    Some(Ok(e)) => seen.push(e.key),
                    Some(Err(e)) => return Some(e),
                    None => return None,
                }
            }
        })
        .await
        .expect("the scan ends within 20 s");
        let err = outcome.expect("the scan does not complete across a cut without retry");
        assert_eq!(err.code, ErrorCode::ConnectionLost, "reverse={reverse}: {err}");
        assert!(!proxy.armed(), "the cut was made");
        let want: Vec<Vec<u8>> = if reverse {
            keys.iter().rev().take(CHUNK as usize).cloned().collect()
        } else {
            keys[..CHUNK as usize].to_vec()
        };
        assert_eq!(seen, want, "reverse={reverse}: exactly the first chunk was delivered before the error");
        assert!(stream.next().await.is_none(), "a failed stream ends");
    }

    // A fresh scan on the same client works (it reconnects on demand).
    let all = tokio::time::timeout(Duration::from_secs(20), client.scan(ScanOptions::default(), 1000).collect())
        .await
        .expect("in time")
        .expect("a new scan after the cut");
    assert_eq!(all.len(), keys.len());

    drop(client);
    proxy.stop();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_retry_a_scan_whose_connection_was_cut_between_chunks_fails_with_connection_lost() {
    let keys = all_keys();
    let dir = tempfile::tempdir().expect("dir");
    let (node, proxy, client) = through_proxy(dir.path(), &keys, false).await;

    // Cut right after the first chunk and give the client time to notice,
    // before it asks for the second chunk: the cursor died with the
    // connection, so the scan must fail with ConnectionLost (not continue,
    // and not fail with some other error).
    let mut stream = client.scan(ScanOptions::default(), CHUNK);
    let mut seen = vec![stream.next().await.expect("first entry").expect("first chunk").key];
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Some(Ok(e)) => seen.push(e.key),
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the scan ends within 20 s");
    assert_eq!(seen, keys[..CHUNK as usize].to_vec(), "the buffered first chunk is delivered");
    let err = outcome.expect("the scan does not complete across a cut without retry");
    assert_eq!(err.code, ErrorCode::ConnectionLost, "{err}");

    drop(client);
    proxy.stop();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_resumed_after_a_cut_does_not_continue_on_another_scans_cursor() {
    let keys = all_keys();
    let dir = tempfile::tempdir().expect("dir");
    let (node, proxy, client) = through_proxy(dir.path(), &keys, true).await;

    // Scan A holds its first chunk when the connection is cut while it is
    // idle; the client reconnects and scan B opens on the new connection.
    let mut a = client.scan(ScanOptions::default(), CHUNK);
    let mut seen_a = vec![a.next().await.expect("entry").expect("first chunk of A").key];
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = client.scan(ScanOptions { reverse: true, ..ScanOptions::default() }, CHUNK);
    let mut seen_b = vec![b.next().await.expect("entry").expect("first chunk of B").key];

    // Both must still see exactly their own keys.
    let drain = async {
        while let Some(e) = a.next().await {
            seen_a.push(e.expect("scan A").key);
            assert!(seen_a.len() <= keys.len(), "scan A yields more entries than keys");
        }
        while let Some(e) = b.next().await {
            seen_b.push(e.expect("scan B").key);
            assert!(seen_b.len() <= keys.len(), "scan B yields more entries than keys");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), drain).await.expect("both scans finish");
    let reversed: Vec<Vec<u8>> = keys.iter().rev().cloned().collect();
    assert!(seen_a == keys, "scan A: {}", first_difference(&seen_a, &keys));
    assert!(seen_b == reversed, "scan B: {}", first_difference(&seen_b, &reversed));

    drop(client);
    proxy.stop();
    node.shutdown().await;
}
