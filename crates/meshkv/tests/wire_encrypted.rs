//! With a cluster secret, nothing replicated or served travels in plain:
//! every byte between two nodes, and between a client and a node, is
//! captured and searched for a known key and value. The same capture
//! without a secret finds them, so the search can fail.

mod common;

use common::{eventually, start, start_secured, Proxy};
use meshkv::client::{Client, ClientOptions};
use meshkv::protocol::Mode;
use meshkv::secure::Secret;
use meshkv::{Db, Options};

const KEY: &[u8] = b"customer/4711/card";
const VALUE: &[u8] = b"4929 1234 5678 9012 exp 11/29 -- must never be seen on the wire";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Replicates KEY/VALUE from A to B (B dials A through a proxy), then reads
/// it back through a client on the same proxy; returns every byte captured.
async fn capture(secret: Option<Secret>) -> Vec<u8> {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let dbs: Vec<Db> = dirs.iter().map(|d| Db::open(d.path(), Options::default()).expect("open")).collect();
    let (a, mut b) = match &secret {
        Some(s) => (start_secured(dbs[0].clone(), s).await, start_secured(dbs[1].clone(), s).await),
        None => (start(dbs[0].clone()).await, start(dbs[1].clone()).await),
    };
    let proxy = Proxy::start(a.local_addr().expect("addr")).await;
    // Written before and after the link is up: catch-up and live batches.
    dbs[0].put(KEY, VALUE).expect("put");
    b.add_peer(proxy.addr(), Mode::Sync);
    eventually("the record on B", || dbs[1].get(KEY).ok().flatten().as_deref() == Some(VALUE)).await;
    let live_key = [KEY, b"/live"].concat();
    dbs[0].put(live_key.clone(), VALUE).expect("put");
    eventually("the live record on B", || dbs[1].get(&live_key).ok().flatten().is_some()).await;

    let client =
        Client::connect(proxy.addr(), ClientOptions { secret, ..ClientOptions::default() }).await.expect("client");
    assert_eq!(client.get(KEY).await.expect("get").as_deref(), Some(VALUE));
    client.put([KEY, b"/client"].concat(), VALUE).await.expect("put");
    let (to_node, from_node) = proxy.captured();
    [to_node, from_node].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_and_client_traffic_are_encrypted() {
    let plain = capture(None).await;
    assert!(contains(&plain, VALUE) && contains(&plain, KEY), "the capture misses plaintext traffic");

    let wire = capture(Some(Secret::generate())).await;
    assert!(wire.len() > VALUE.len() * 3, "too little captured: {} bytes", wire.len());
    assert!(!contains(&wire, VALUE), "the value crossed the wire in plain");
    assert!(!contains(&wire, KEY), "the key crossed the wire in plain");
    assert!(!contains(&wire, &VALUE[..16]), "part of the value crossed the wire in plain");
}
