//! A full disk on a receiving node (SPEC §6): the records a peer sends
//! cannot be applied, the link closes with a storage error reported as a
//! node event, the node goes on serving what it holds, and once it has space
//! again and restarts, the catch-up completes and nothing is lost.
//!
//! The disk is filled with `RLIMIT_FSIZE` (see `tests/full_disk.rs`); the
//! limit is process-wide, so this file holds one test and the sender is
//! sized to write nothing past it.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::Mode;
use meshkv::{Batch, Db, Options};
use rlimit::Resource;
use std::time::Duration;

fn load(db: &Db, prefix: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut b = Batch::new();
        for i in chunk {
            b.put(format!("{prefix}{i:05}"), format!("{prefix}-value-{i}-{}", "y".repeat(200)));
        }
        db.write(b).expect("load");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_out_of_space_keeps_serving_and_catches_up_after_a_restart() {
    // SAFETY: ignoring a signal before any file grows past the limit.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let (da, db_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    // A holds much more than B, so a limit just past A's files leaves B
    // (which only reads while it sends) untouched.
    let a_db = Db::open(da.path(), Options::default()).expect("open");
    load(&a_db, "a", 3000);
    let b_db = Db::open(db_dir.path(), Options::default()).expect("open");
    load(&b_db, "b", 600);
    assert!(common::largest_written_file(db_dir.path()) * 2 < common::largest_written_file(da.path()));
    let b = Node::start(b_db.clone(), NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("b");
    let b_addr = b.local_addr().expect("bound");

    let (_, hard) = rlimit::getrlimit(Resource::FSIZE).expect("getrlimit");
    rlimit::setrlimit(Resource::FSIZE, common::largest_written_file(da.path()) + 16 * 1024, hard).expect("setrlimit");
    let a_cfg = NodeConfig { listen: loopback(), ..NodeConfig::default() };
    let mut a = Node::start(a_db.clone(), a_cfg.clone()).await.expect("a");
    let first_error = |node: &Node| {
        let mut events = node.events();
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    if let Ok(NodeEvent::Error { message, .. }) = events.recv().await {
                        return message;
                    }
                }
            })
            .await
            .expect("no error reported")
        }
    };
    let (on_a, on_b) = (first_error(&a), first_error(&b));
    a.add_peer(b_addr, Mode::Pull);
    let (on_a, on_b) = (on_a.await, on_b.await);
    // A reports its own storage failure; B is told so, not blamed for it.
    assert!(on_a.starts_with("storage:") && on_a.contains("operation not applied"), "{on_a}");
    assert!(on_b.contains("StorageError"), "B was not told why: {on_b}");

    // A goes on serving what it holds, and has not claimed B's writes.
    for i in (0..3000).step_by(97) {
        assert!(a_db.get(format!("a{i:05}")).expect("read while full").is_some());
    }
    assert_eq!(a_db.version_vector().get(b_db.node_id()), 0, "B's writes counted as held");

    // Space back, A restarts and catches up.
    rlimit::setrlimit(Resource::FSIZE, hard, hard).expect("setrlimit");
    a.shutdown().await;
    drop(a_db);
    let a_db = Db::open(da.path(), Options::default()).expect("reopen with space back");
    let mut a = Node::start(a_db.clone(), a_cfg).await.expect("a again");
    a.add_peer(b_addr, Mode::Pull);
    eventually("A caught up with B", || {
        a_db.version_vector().get(b_db.node_id()) == b_db.version_vector().get(b_db.node_id())
    })
    .await;
    for i in 0..600 {
        assert_eq!(a_db.get(format!("b{i:05}")).expect("get"), b_db.get(format!("b{i:05}")).expect("get"));
    }
    assert!(a_db.verify().expect("verify").is_ok());
    a.shutdown().await;
    b.shutdown().await;
}
