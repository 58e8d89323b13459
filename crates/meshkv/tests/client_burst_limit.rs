//! More requests pipelined than a session answers per burst
//! (`ServerOptions::max_in_flight`), or than the client sends per write, all
//! get their replies: the requests past a limit wait for the next burst
//! instead of being lost.

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::node::ServerOptions;
use meshkv::{Db, Options};
use std::time::Duration;

const IN_FLIGHT: usize = 8;
const CALLS: usize = 20 * IN_FLIGHT + 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_burst_larger_than_the_limit_is_answered() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let node = common::start_serving(db, ServerOptions { max_in_flight: IN_FLIGHT, ..ServerOptions::default() }).await;
    let options = ClientOptions { retry: false, request_timeout: Duration::from_secs(20), ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("bound"), options).await.expect("connect");
    // All calls are queued before the client's connection task runs, so
    // they go out back to back and reach the node as one burst or a few.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let client = client.clone();
        tasks.spawn(async move {
            client.put(format!("k/{i}"), "v").await.expect("put answered");
            client.get(format!("k/{i}")).await.expect("get answered")
        });
    }
    let mut answered = 0;
    while let Some(got) = tasks.join_next().await {
        assert_eq!(got.expect("task"), Some(b"v".to_vec()));
        answered += 1;
    }
    assert_eq!(answered, CALLS);
    assert_eq!(node.db().version_vector().get(node.db().node_id()), CALLS as u64);
    node.shutdown().await;
}

/// On one thread every call is queued before the client's connection task
/// runs, so it finds more than it takes per write (256).
#[tokio::test(flavor = "current_thread")]
async fn every_call_queued_at_once_in_the_client_is_sent() {
    const QUEUED: usize = 700;
    let dir = tempfile::tempdir().expect("dir");
    let node = common::start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let options = ClientOptions { retry: false, request_timeout: Duration::from_secs(20), ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("bound"), options).await.expect("connect");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..QUEUED {
        let client = client.clone();
        tasks.spawn(async move { client.put(format!("k/{i}"), "v").await.expect("put answered") });
    }
    let mut answered = 0;
    while let Some(got) = tasks.join_next().await {
        assert!(got.expect("task").is_some());
        answered += 1;
    }
    assert_eq!(answered, QUEUED);
    node.shutdown().await;
}
