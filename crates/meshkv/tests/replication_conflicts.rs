//! SPEC §8, conflicts over TCP: two nodes write the same key while
//! disconnected, then sync. Under each policy both end with the same record
//! and the policy's winner, and the conflict is reported (counter and change
//! feed) on both nodes. Nodes with different policies refuse each other.

mod common;
use common::{eventually, start};

use meshkv::node::{Node, NodeEvent};
use meshkv::protocol::{codec, CloseReason, Message, Mode};
use meshkv::storage::{Choice, Conflict, Subscription, Version};
use meshkv::{ConflictPolicy, Db, Dot, KeyRange, NodeId, Options};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

/// The node id a fresh directory gets, learned by opening it once.
fn node_id_of(dir: &std::path::Path) -> NodeId {
    Db::open(dir, Options::default()).expect("open").node_id()
}

/// Waits until `feed` delivers a change of `key` carrying a conflict.
async fn conflict_on_feed(feed: &mut Subscription, key: &[u8]) -> Conflict {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let change = feed.recv().await.expect("feed");
            if change.key == key {
                if let Some(c) = change.conflict {
                    return c;
                }
            }
        }
    })
    .await;
    found.expect("timed out waiting for a conflict on the change feed")
}

fn larger_value(_key: &[u8], a: &Version, b: &Version) -> Choice {
    if b.value > a.value {
        Choice::Second
    } else {
        Choice::First
    }
}

/// Both nodes write `key` while disconnected (`db_1` writes `v1`, then a
/// few ms later `db_2` writes `v2`), then node 1 dials node 2 in sync mode.
/// Checks that both end with the same record, that its visible value is
/// `v1` if `first_wins` else `v2`, and that both nodes reported the conflict
/// (counter and change feed, with the right winner and loser).
async fn concurrent_writes_then_sync(db_1: Db, db_2: Db, v1: &str, v2: &str, first_wins: bool) {
    let key = b"k";
    let mut feed_1 = db_1.subscribe(KeyRange::all());
    let mut feed_2 = db_2.subscribe(KeyRange::all());
    let dot_1: Dot = db_1.put(&key[..], v1).expect("put");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let dot_2: Dot = db_2.put(&key[..], v2).expect("put");
    let mut n1 = start(db_1).await;
    let n2 = start(db_2).await;
    assert_eq!(n1.db().conflict_count() + n2.db().conflict_count(), 0);
    n1.add_peer(n2.local_addr().expect("bound"), Mode::Sync);

    eventually("both nodes hold the same record and cover both writes", || {
        let (r1, r2) = (n1.db().get_record(key).expect("get"), n2.db().get_record(key).expect("get"));
        let covers = |n: &Node| [dot_1, dot_2].iter().all(|d| n.db().version_vector().contains(*d));
        r1.is_some() && r1 == r2 && covers(&n1) && covers(&n2)
    })
    .await;
    let (expect, winner, loser) = if first_wins { (v1, dot_1, dot_2) } else { (v2, dot_2, dot_1) };
    for n in [&n1, &n2] {
        assert_eq!(n.db().get(key).expect("get").as_deref(), Some(expect.as_bytes()), "wrong winner");
    }
    for feed in [&mut feed_1, &mut feed_2] {
        let c = conflict_on_feed(feed, key).await;
        assert_eq!((c.winner, c.losers), (winner, vec![loser]));
    }
    assert!(n1.db().conflict_count() > 0, "node 1 did not count the conflict");
    assert!(n2.db().conflict_count() > 0, "node 2 did not count the conflict");
    for n in [n1, n2] {
        assert!(n.db().verify().expect("verify").is_ok());
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_writer_wins_by_default() {
    let dirs = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let db_1 = Db::open(dirs.0.path(), Options::default()).expect("open");
    let db_2 = Db::open(dirs.1.path(), Options::default()).expect("open");
    // The second write has the later hybrid-logical-clock timestamp.
    concurrent_writes_then_sync(db_1.clone(), db_2.clone(), "zebra", "apple", false).await;
    // LWW drops the loser: one version left, on both nodes.
    let rec = db_1.get_record("k").expect("get").expect("record");
    assert_eq!(rec.versions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_node_wins_even_if_older() {
    let dirs = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let preferred = node_id_of(dirs.0.path());
    let policy = ConflictPolicy::PreferNodes(vec![preferred]);
    let db_1 = Db::open(dirs.0.path(), Options::default().policy(policy.clone())).expect("open");
    let db_2 = Db::open(dirs.1.path(), Options::default().policy(policy)).expect("open");
    assert_eq!(db_1.node_id(), preferred);
    // The preferred node writes first: last-writer-wins would pick the other.
    concurrent_writes_then_sync(db_1.clone(), db_2.clone(), "apple", "zebra", true).await;
    // The loser is kept as a sibling, identically on both nodes.
    let rec = db_1.get_record("k").expect("get").expect("record");
    assert_eq!(rec.versions().len(), 2);
    assert_eq!(Some(rec), db_2.get_record("k").expect("get"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_picks_the_winner() {
    let dirs = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let policy = ConflictPolicy::resolver(larger_value);
    let db_1 = Db::open(dirs.0.path(), Options::default().policy(policy.clone())).expect("open");
    let db_2 = Db::open(dirs.1.path(), Options::default().policy(policy)).expect("open");
    // The resolver keeps the larger value, which is the older write here:
    // last-writer-wins would pick the other.
    concurrent_writes_then_sync(db_1.clone(), db_2.clone(), "zebra", "apple", true).await;
    let rec = db_1.get_record("k").expect("get").expect("record");
    assert_eq!(rec.versions().len(), 2);
    assert_eq!(Some(rec), db_2.get_record("k").expect("get"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_policies_never_exchange_data() {
    let dirs = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let db_1 = Db::open(dirs.0.path(), Options::default()).expect("open");
    let other = ConflictPolicy::PreferNodes(vec![NodeId(42)]);
    let db_2 = Db::open(dirs.1.path(), Options::default().policy(other)).expect("open");
    db_1.put("one", "1").expect("put");
    db_2.put("two", "2").expect("put");
    let mut n1 = start(db_1).await;
    let n2 = start(db_2).await;
    let (mut ev_1, mut ev_2) = (n1.events(), n2.events());
    let addr_2 = n2.local_addr().expect("bound");
    n1.add_peer(addr_2, Mode::Sync);

    // The handshake refuses with PolicyMismatch, on the wire. Speak to the
    // refusing node directly to see the reason: a hello carrying the
    // default (last-writer-wins) policy fingerprint.
    let reason = tokio::time::timeout(Duration::from_secs(20), async {
        let mut s = tokio::net::TcpStream::connect(addr_2).await.expect("connect");
        // The plaintext preamble (magic, no secret), then the Hello frame.
        let mut out = b"MKV1\x00".to_vec();
        codec::encode(&common::peer_hello(NodeId::random(), Mode::Sync), &mut out);
        s.write_all(&out).await.expect("send hello");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut preamble = true;
        loop {
            if preamble && buf.len() >= 5 {
                assert_eq!(&buf[..5], b"MKV1\x00", "the node's preamble");
                buf.drain(..5);
                preamble = false;
            }
            while let Some((msg, used)) =
                codec::decode(if preamble { &[] } else { &buf }, codec::DEFAULT_MAX_FRAME).expect("frame")
            {
                buf.drain(..used);
                match msg {
                    Message::Hello(_) => {}
                    Message::Close { reason } => return Some(reason),
                    other => panic!("unexpected {} from a node with another policy", other.kind()),
                }
            }
            let n = s.read(&mut chunk).await.expect("read");
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("timed out waiting for the refusal");
    assert_eq!(reason, Some(CloseReason::PolicyMismatch));

    // Let the dialer retry a few times (backoff 100, 200, 400 ms...).
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (n, own, foreign) in [(&n1, "one", "two"), (&n2, "two", "one")] {
        assert!(n.db().get(own).expect("get").is_some());
        assert!(n.db().get(foreign).expect("get").is_none(), "data crossed a policy mismatch");
        assert_eq!(n.db().version_vector().len(), 1, "covers a foreign origin");
        assert!(n.peers().iter().all(|p| p.node_id.is_none()), "a link was established: {:?}", n.peers());
    }
    for ev in [&mut ev_1, &mut ev_2] {
        loop {
            match ev.try_recv() {
                Ok(e) => {
                    assert!(!matches!(e, NodeEvent::Connected { .. } | NodeEvent::CaughtUp { .. }), "unexpected {e:?}")
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(e) => panic!("events: {e:?}"),
            }
        }
    }
    for n in [n1, n2] {
        n.shutdown().await;
    }
}
