//! A remote scan whose `next` is cancelled while its request is in flight
//! (dropped by a `timeout` or a `select!`) and then called again goes on
//! exactly after the last entry it returned: no key skipped, none repeated.

mod common;
use common::start;

use meshkv::client::{Client, ClientOptions};
use meshkv::{Db, Options, ScanOptions};
use std::time::Duration;

const KEYS: usize = 100;
const CHUNK: u32 = 10;

fn key(i: usize) -> Vec<u8> {
    format!("key/{i:03}").into_bytes()
}

/// Polls `fut` once, as a `timeout` or `select!` does before it gives up
/// on it, then drops it; its output if that one poll finished it.
async fn poll_once_and_drop<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

async fn cancelled_next_loses_nothing(retry: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    for i in 0..KEYS {
        db.put(key(i), b"v".to_vec()).expect("local write");
    }
    let node = start(db).await;
    let options = ClientOptions { retry, ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("bound"), options).await.expect("connect");
    let mut scan = client.scan(ScanOptions::default(), CHUNK);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the scan did not finish");
        // At each chunk boundary the next call sends a request: give up on
        // it at once (its first poll sends it), then ask again.
        // (On a loaded machine the reply may come within that poll.)
        let got = match seen.len() % CHUNK as usize {
            0 => poll_once_and_drop(scan.next()).await,
            _ => None,
        };
        let got = match got {
            Some(got) => got,
            None => scan.next().await,
        };
        match got {
            Some(Ok(e)) => seen.push(e.key),
            Some(Err(e)) => panic!("the scan failed after {} entries: {e}", seen.len()),
            None => break,
        }
    }
    let want: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let first_bad = seen.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        seen.len(),
        KEYS,
        "retry {retry}: {} entries for {KEYS} keys; first wrong entry at {first_bad:?}: {:?}",
        seen.len(),
        first_bad.map(|i| String::from_utf8_lossy(&seen[i]).into_owned())
    );
    assert_eq!(seen, want, "retry {retry}: every key once, in order");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_next_with_retry_skips_no_key() {
    cancelled_next_loses_nothing(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_next_without_retry_skips_no_key() {
    cancelled_next_loses_nothing(false).await;
}
