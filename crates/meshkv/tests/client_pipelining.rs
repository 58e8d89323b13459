//! Large requests and large replies pipelined on one connection in both
//! directions at once: the client keeps reading replies while its requests
//! are still being written, so neither side waits on the other forever.

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::{Db, Options};
use std::time::Duration;

const VALUE: usize = 1 << 20;
const TASKS: usize = 24;
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_puts_and_big_gets_in_flight_together_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    for i in 0..TASKS {
        db.put(format!("big/{i}"), vec![i as u8; VALUE]).expect("preload");
    }
    let node = common::start(db.clone()).await;
    let options = ClientOptions { retry: false, ..ClientOptions::default() };
    let client = Client::connect(node.local_addr().expect("addr"), options).await.expect("connect");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let (writer, reader) = (client.clone(), client.clone());
        tasks.spawn(async move {
            for round in 0..ROUNDS {
                writer.put(format!("new/{i}/{round}"), vec![round as u8; VALUE]).await.expect("big put");
            }
        });
        tasks.spawn(async move {
            for _ in 0..ROUNDS {
                let got = reader.get(format!("big/{i}")).await.expect("big get").expect("present");
                assert_eq!(got.len(), VALUE);
            }
        });
    }
    let all = async {
        while let Some(res) = tasks.join_next().await {
            res.expect("task");
        }
    };
    // Well under the node's 30 s idle timeout, which would otherwise be
    // what breaks a mutual write stall.
    tokio::time::timeout(Duration::from_secs(20), all).await.expect("pipelined traffic stalled");
    assert_eq!(db.get(format!("new/0/{}", ROUNDS - 1)).expect("get").map(|v| v.len()), Some(VALUE));
}
