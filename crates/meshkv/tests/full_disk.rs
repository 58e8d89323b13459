//! A full disk (SPEC §6): writes fail with a clear storage error, what was
//! acknowledged stays readable while the node keeps serving, and after a
//! restart with space back nothing acknowledged is lost.
//!
//! The disk is filled with `RLIMIT_FSIZE`: with `SIGXFSZ` ignored, a write
//! past the limit fails with `EFBIG`, which the engine meets exactly where it
//! would meet `ENOSPC`. The limit is process-wide, so this file holds one
//! test.

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::protocol::ErrorCode;
use meshkv::{Db, Options};
use rlimit::Resource;
use std::time::{Duration, Instant};

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(200)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_loses_nothing_acknowledged() {
    // SAFETY: setting a signal's disposition to "ignore" before any file
    // grows past the limit; no handler runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let node = common::start(db.clone()).await;
    let client = Client::connect(node.local_addr().expect("bound"), ClientOptions::default()).await.expect("connect");
    for i in 0..100 {
        client.put(format!("k{i:05}"), value(i)).await.expect("put before the disk fills");
    }

    // "The disk is full" a little past what the largest file holds: a write
    // past that offset fails, so the journal fills up.
    let (_, hard) = rlimit::getrlimit(Resource::FSIZE).expect("getrlimit");
    let limit = common::largest_written_file(dir.path()) + 64 * 1024;
    rlimit::setrlimit(Resource::FSIZE, limit, hard).expect("setrlimit");
    let mut acked = 100;
    let refusal = loop {
        assert!(acked < 20_000, "the writes never failed with the disk full");
        match client.put(format!("k{acked:05}"), value(acked)).await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code, ErrorCode::Internal, "{refusal}");
    assert!(refusal.message.contains("storage engine error"), "not a clear error: {refusal}");

    // The node keeps serving: reads of what was acknowledged, and writes are
    // refused (not hung) while the disk is full.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in (0..acked).step_by(7) {
        assert_eq!(client.get(format!("k{i:05}")).await.expect("get while full"), Some(value(i)));
    }
    let refused = client.put("another", "x").await.expect_err("a write succeeded on a full disk");
    assert!(refused.message.contains("restart once the cause is fixed"), "{refused}");
    assert!(Instant::now() < deadline, "the node answered too slowly while full");

    // Space is back; after a restart everything acknowledged is there.
    rlimit::setrlimit(Resource::FSIZE, hard, hard).expect("setrlimit");
    drop(client);
    node.shutdown().await;
    drop(db);
    let db = Db::open(dir.path(), Options::default()).expect("reopen with space back");
    for i in 0..acked {
        assert_eq!(db.get(format!("k{i:05}")).expect("get"), Some(value(i)), "acknowledged write {i} lost");
    }
    db.put("after", "space is back").expect("write after the restart");
    assert!(db.verify().expect("verify").is_ok());
}
