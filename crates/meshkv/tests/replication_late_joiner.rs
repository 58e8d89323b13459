//! A node that joins after the origin has left gets everything over TCP:
//! A writes 500 keys (and overwrites some, so its change log has gaps),
//! syncs with B, then shuts down and its store is dropped and deleted. C then
//! starts and connects only to B; it receives all 500 keys, with the same
//! records and the same version vector as B (B serves what it received).

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::{LinkConfig, Mode};
use meshkv::{Batch, Db, KeyRange, Options, ScanOptions};
use std::time::Duration;

const KEYS: usize = 500;

fn key(i: usize) -> String {
    format!("key/{i:04}")
}

fn count(db: &Db) -> usize {
    db.scan(ScanOptions::range(KeyRange::prefix("key/"))).count()
}

fn same_records(x: &Db, y: &Db) -> bool {
    (0..KEYS).all(|i| {
        let r = x.get_record(key(i)).expect("get");
        r.is_some() && r == y.get_record(key(i)).expect("get")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_everything_from_a_departed_origin() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let dir_c = tempfile::tempdir().expect("tempdir");

    let db_a = Db::open(dir_a.path(), Options::default()).expect("open");
    for chunk in 0..KEYS / 50 {
        let mut batch = Batch::new();
        for i in chunk * 50..(chunk + 1) * 50 {
            batch.put(key(i), format!("v1-{i}"));
        }
        db_a.write(batch).expect("write");
    }
    // Overwrite every tenth key: the superseded log entries disappear.
    for i in (0..KEYS).step_by(10) {
        db_a.put(key(i), format!("v2-{i}")).expect("put");
    }
    let a_id = db_a.node_id();
    let a_vv = db_a.version_vector();

    // Small batches on B so C's catch-up spans many batches and windows.
    let link = LinkConfig { batch_items: 32, window: 2, ..LinkConfig::default() };
    let db_b = Db::open(dir_b.path(), Options::default()).expect("open");
    let b = Node::start(db_b.clone(), NodeConfig { listen: loopback(), link, ..NodeConfig::default() })
        .await
        .expect("start");
    let mut a = Node::start(db_a, NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start");
    a.add_peer(b.local_addr().expect("bound"), Mode::Sync);
    eventually("B has all of A's writes", || db_b.version_vector().get(a_id) == a_vv.get(a_id)).await;
    assert!(same_records(a.db(), &db_b), "B's records differ from A's");

    // A leaves for good.
    a.shutdown().await;
    drop(dir_a);

    let db_c = Db::open(dir_c.path(), Options::default()).expect("open");
    let mut c =
        Node::start(db_c.clone(), NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start");
    let mut events = c.events();
    c.add_peer(b.local_addr().expect("bound"), Mode::Sync);
    let b_id = db_b.node_id();
    let caught_up = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(NodeEvent::CaughtUp { peer }) = events.recv().await {
                if peer == b_id {
                    return;
                }
            }
        }
    })
    .await;
    assert!(caught_up.is_ok(), "C never caught up from B");
    // A complete catch-up was applied: everything is there at once.
    assert_eq!(count(&db_c), KEYS);
    assert!(same_records(&db_b, &db_c), "C's records differ from B's");
    assert_eq!(db_c.version_vector(), db_b.version_vector());
    assert_eq!(db_c.version_vector().get(a_id), a_vv.get(a_id));
    for i in 0..KEYS {
        let expect = if i % 10 == 0 { format!("v2-{i}") } else { format!("v1-{i}") };
        assert_eq!(db_c.get(key(i)).expect("get"), Some(expect.into_bytes()));
    }
    assert!(c.peers().iter().all(|p| p.node_id == Some(b_id)), "C linked to someone else: {:?}", c.peers());

    for n in [c, b] {
        assert!(n.db().verify().expect("verify").is_ok());
        n.shutdown().await;
    }
}
