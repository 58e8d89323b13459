//! Two protocol state machines wired back to back in memory (through the
//! real codec): catch-up, live push, modes and resume.

mod common;

use common::link_ends::{transmit, transmit_inspecting, End, OnRefusal};
use meshkv::protocol::{Link, LinkConfig, LinkEvent, Message, Mode};
use meshkv::storage::ResumePoint;
use meshkv::Db;
use std::ops::ControlFlow;

/// A link on `db` in `mode`, with small batches and window. A message it
/// refuses closes it, as a connection would close, and the test goes on.
fn end(db: &Db, mode: Mode) -> End {
    let cfg = LinkConfig { mode, batch_items: 64, window: 4, ..LinkConfig::default() };
    End::new(db, cfg, OnRefusal::Ignore)
}

/// Rounds of message exchange after which a test gives up: a link that
/// never goes quiet (a catch-up restarting for ever) fails, not hangs.
const MAX_ROUNDS: usize = 100_000;

/// Moves messages both ways until nothing moves; returns messages moved.
fn pump(a: &mut End, b: &mut End) -> usize {
    let mut moved = 0;
    for _ in 0..MAX_ROUNDS {
        a.pump_feed();
        b.pump_feed();
        let n = transmit(a, b, usize::MAX) + transmit(b, a, usize::MAX);
        moved += n;
        if n == 0 {
            return moved;
        }
    }
    panic!("the links never went quiet");
}

fn events(link: &mut Link) -> Vec<LinkEvent> {
    std::iter::from_fn(|| link.poll_event()).collect()
}

#[test]
fn sync_catches_up_both_ways_then_pushes_live() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for i in 0..300u32 {
        a.put(format!("a{i}"), "x").expect("put");
    }
    b.put("b", "y").expect("put");
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    assert_eq!(b.get("a299").expect("get"), Some(b"x".to_vec()));
    assert_eq!(a.get("b").expect("get"), Some(b"y".to_vec()));
    assert!(events(&mut eb.link).contains(&LinkEvent::CaughtUp { peer: a.node_id() }));
    assert_eq!(a.version_vector(), b.version_vector());

    a.put("live", "1").expect("put");
    b.delete("a0").expect("delete");
    pump(&mut ea, &mut eb);
    assert_eq!(b.get("live").expect("get"), Some(b"1".to_vec()));
    assert_eq!(a.get("a0").expect("get"), None);
    assert_eq!(a.version_vector(), b.version_vector());
    assert!(a.verify().expect("verify").is_ok() && b.verify().expect("verify").is_ok());
}

#[test]
fn pull_only_receives_and_push_only_sends() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    a.put("from-a", "1").expect("put");
    b.put("from-b", "2").expect("put");
    let (mut ea, mut eb) = (end(&a, Mode::Pull), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    assert_eq!(a.get("from-b").expect("get"), Some(b"2".to_vec()), "the puller gets the other's data");
    assert_eq!(b.get("from-a").expect("get"), None, "and keeps its own");
}

#[test]
fn reconnecting_in_sync_nodes_exchange_almost_nothing() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for i in 0..2000u32 {
        a.put(i.to_be_bytes(), [0u8; 100]).expect("put");
    }
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    assert!(ea.bytes_out + eb.bytes_out < 1024, "{} + {} bytes", ea.bytes_out, eb.bytes_out);
}

#[test]
fn an_interrupted_catch_up_resumes() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for i in 0..1000u32 {
        a.put(i.to_be_bytes(), [1u8; 100]).expect("put");
    }
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    // Move a few batches only, then drop the connection.
    for _ in 0..6 {
        transmit(&mut ea, &mut eb, 1);
        transmit(&mut eb, &mut ea, 1);
    }
    let partial = b.scan(Default::default()).count();
    assert!(partial > 0 && partial < 1000, "{partial}");
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    let (sent, _) = ea.link.item_counts();
    assert_eq!(sent as usize, 1000 - partial, "only the rest is sent again");
    assert_eq!(b.scan(Default::default()).count(), 1000);
    assert_eq!(a.version_vector(), b.version_vector());
}

/// Records of every key on `db`, in key order (tombstones included).
fn records(db: &Db) -> Vec<(Vec<u8>, meshkv::Record)> {
    db.changes_since(&meshkv::VersionVector::new())
        .expect("changes")
        .map(|r| r.expect("item"))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect()
}

/// A bootstrap streams in key order; interrupted, it resumes after the last
/// key applied. Writes made on the sender in between — to keys before that
/// point, after it, and new keys — all arrive, and nothing else is sent again.
#[test]
fn an_interrupted_key_order_catch_up_resumes_and_gets_later_writes() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for i in 0..1000u32 {
        a.put(i.to_be_bytes(), [1u8; 100]).expect("put");
    }
    let (mut ea, mut eb) = (end(&a, Mode::Push), end(&b, Mode::Pull));
    for _ in 0..6 {
        transmit(&mut ea, &mut eb, 1);
        transmit(&mut eb, &mut ea, 1);
    }
    drop((ea, eb));
    let partial = b.scan(Default::default()).count();
    assert!(partial > 0 && partial < 500, "{partial}");
    let Some(ResumePoint::Key { key, .. }) = b.resume_point(a.node_id()).expect("resume point") else {
        panic!("a bootstrap runs in key order: {:?}", b.resume_point(a.node_id()))
    };
    assert_eq!(key, (partial as u32 - 1).to_be_bytes(), "the resume point is the last key applied");

    // Meanwhile on the sender: overwrites and a delete before the resume
    // point, an overwrite after it, and two new keys (one sorting first).
    a.put(0u32.to_be_bytes(), [2u8; 100]).expect("put");
    a.put(3u32.to_be_bytes(), [2u8; 100]).expect("put");
    a.delete(5u32.to_be_bytes()).expect("delete");
    a.put(900u32.to_be_bytes(), [2u8; 100]).expect("put");
    a.put([0u8], [3u8; 10]).expect("put");
    a.put(5000u32.to_be_bytes(), [3u8; 10]).expect("put");

    let (mut ea, mut eb) = (end(&a, Mode::Push), end(&b, Mode::Pull));
    pump(&mut ea, &mut eb);
    let (sent, _) = ea.link.item_counts();
    assert_eq!(
        sent as usize,
        (1000 - partial) + 3 + 2,
        "the rest, the three changes before the resume point, the new keys"
    );
    assert_eq!(records(&a), records(&b));
    assert_eq!(a.version_vector(), b.version_vector());
    assert_eq!(b.resume_point(a.node_id()).expect("resume point"), None);
    assert!(b.verify().expect("verify").is_ok());
}

/// A node that lacks a small part of the sender's store catches up in log
/// order, and an interrupted log-order catch-up resumes where it stopped.
#[test]
fn an_interrupted_log_order_catch_up_resumes() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for i in 0..2000u32 {
        a.put(i.to_be_bytes(), [1u8; 100]).expect("put");
    }
    let (mut ea, mut eb) = (end(&a, Mode::Push), end(&b, Mode::Pull));
    pump(&mut ea, &mut eb);
    drop((ea, eb));
    for i in 2000..2300u32 {
        a.put(i.to_be_bytes(), [1u8; 100]).expect("put");
    }
    let (mut ea, mut eb) = (end(&a, Mode::Push), end(&b, Mode::Pull));
    for _ in 0..4 {
        transmit(&mut ea, &mut eb, 1);
        transmit(&mut eb, &mut ea, 1);
    }
    drop((ea, eb));
    let partial = b.scan(Default::default()).count() - 2000;
    assert!(partial > 0 && partial < 300, "{partial}");
    assert!(
        matches!(b.resume_point(a.node_id()).expect("resume point"), Some(ResumePoint::Log(_))),
        "a small difference is sent in log order"
    );
    let (mut ea, mut eb) = (end(&a, Mode::Push), end(&b, Mode::Pull));
    pump(&mut ea, &mut eb);
    assert_eq!(ea.link.item_counts().0 as usize, 300 - partial, "only the rest is sent again");
    assert_eq!(records(&a), records(&b));
    assert_eq!(a.version_vector(), b.version_vector());
}

/// A receiver stores resume points that claim whole origins of the
/// sender's snapshot done, including writes it only skipped because a later
/// record dominated them there. If a power loss took that later record back
/// (under `Durability::Buffered`), the resumed stream would skip a write the
/// receiver never got. So the snapshot is on stable storage before the
/// first batch leaves: here, before the sender's `CatchUpStart` is sent.
#[test]
fn a_catch_up_snapshot_is_durable_before_it_is_streamed() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for i in 0..10u32 {
        a.put(format!("k{i}"), "v").expect("put");
    }
    assert!(a.durable_seq() < 10, "buffered writes are not synced by themselves");
    let (mut ea, mut eb) = (end(&a, Mode::Push), end(&b, Mode::Pull));
    let mut started = false;
    for _ in 0..8 {
        transmit_inspecting(&mut ea, &mut eb, usize::MAX, |msg| {
            started = matches!(msg, Message::CatchUpStart { .. });
            if started {
                assert_eq!(a.durable_seq(), 10, "the snapshot was synced before it is streamed");
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        if started {
            break;
        }
        transmit(&mut eb, &mut ea, usize::MAX);
    }
    assert!(started, "the catch-up started");
}

/// `batch_bytes` 0 still sends one record per batch: an empty first batch
/// would read as the end of the snapshot and make the receiver cover
/// writes it never got.
#[test]
fn zero_batch_bytes_still_sends_every_record() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for i in 0..10u32 {
        a.put(format!("k{i}"), "v").expect("put");
    }
    let cfg = LinkConfig { mode: Mode::Push, batch_bytes: 0, ..LinkConfig::default() };
    let mut ea = End::new(&a, cfg, OnRefusal::Ignore);
    let mut eb = end(&b, Mode::Pull);
    pump(&mut ea, &mut eb);
    assert_eq!(records(&a), records(&b));
    assert_eq!(a.version_vector(), b.version_vector());
}

/// A peer names any vectors in `CatchUpStart`; progress reporting on them
/// neither panics nor wraps.
#[test]
fn catch_up_progress_survives_a_peers_huge_vectors() {
    let (_db, b) = common::temp_store();
    let mut link = Link::new(b.clone(), LinkConfig::default(), 0);
    let hello = meshkv::protocol::Hello {
        magic: meshkv::protocol::MAGIC,
        version: meshkv::protocol::PROTOCOL_VERSION,
        cluster: LinkConfig::default().cluster,
        node: meshkv::NodeId(7),
        role: meshkv::protocol::Role::Peer,
        mode: Mode::Sync,
        policy: b.options().policy.fingerprint(),
        max_frame: 0,
        incarnation: 0,
    };
    link.handle_message(Message::Hello(hello), 0).expect("hello");
    let snapshot: meshkv::VersionVector =
        [(meshkv::NodeId(8), u64::MAX), (meshkv::NodeId(9), u64::MAX)].into_iter().collect();
    let start = Message::CatchUpStart {
        since: meshkv::VersionVector::new(),
        snapshot,
        order: meshkv::protocol::CatchUpOrder::Log,
    };
    link.handle_message(start, 0).expect("start");
    assert_eq!(link.catch_up_progress(), Some((0, u64::MAX)));
}

/// A commit larger than a frame (one big local batch) reaches a live peer
/// in several batches, the last of which carries its vector: no frame is
/// refused, and the peer covers the commit only once it holds all of it.
#[test]
fn a_commit_larger_than_a_frame_goes_live_in_parts() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    let mut batch = meshkv::Batch::new();
    for i in 0..2500u32 {
        batch.put(format!("big{i:05}"), vec![7u8; 8 * 1024]);
    }
    a.write(batch).expect("a 20 MiB batch");
    let mut lives = 0;
    let mut covered_early = false;
    for _ in 0..MAX_ROUNDS {
        ea.pump_feed();
        // One at a time, so each part sees what the parts before it applied.
        let sent = transmit_inspecting(&mut ea, &mut eb, 1, |msg| {
            if let Message::Live { items, vv, .. } = msg {
                lives += 1;
                covered_early |= vv.get(a.node_id()) > 0 && b.scan(Default::default()).count() + items.len() < 2500;
            }
            ControlFlow::Continue(())
        });
        if sent + transmit(&mut eb, &mut ea, usize::MAX) == 0 {
            break;
        }
    }
    assert!(lives > 1, "sent in {lives} batch(es)");
    assert!(!covered_early, "a part before the last carried the commit's vector");
    assert_eq!(records(&a), records(&b));
    assert_eq!(a.version_vector(), b.version_vector());
}

/// Commits queued for a peer that does not keep up are bounded in bytes,
/// not only in number: past 64 MiB the link drops them and catches the
/// peer up from a new snapshot instead, and the peer still gets everything.
#[test]
fn a_live_queue_past_its_byte_bound_turns_into_a_catch_up() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    // 80 commits of 1 MiB while the peer reads nothing: far below the
    // 1 024-commit bound, above the byte bound.
    for c in 0..80u32 {
        let mut batch = meshkv::Batch::new();
        for i in 0..128u32 {
            batch.put(format!("c{c:02}-{i:03}"), vec![1u8; 8 * 1024]);
        }
        a.write(batch).expect("write");
        ea.pump_feed();
    }
    let mut restarted = false;
    for _ in 0..MAX_ROUNDS {
        ea.pump_feed();
        let mut moved = transmit_inspecting(&mut ea, &mut eb, usize::MAX, |msg| {
            restarted |= matches!(msg, Message::CatchUpStart { .. });
            ControlFlow::Continue(())
        });
        moved += transmit(&mut eb, &mut ea, usize::MAX);
        if moved == 0 {
            break;
        }
    }
    assert!(restarted, "the queue held 80 MiB instead of falling back to a catch-up");
    assert_eq!(records(&a), records(&b));
    assert_eq!(a.version_vector(), b.version_vector());
}

/// While the socket is stalled the runtime stops taking messages; the ticks
/// meanwhile leave one ping waiting, not one per tick.
#[test]
fn ticks_on_a_stalled_link_queue_one_ping() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    let (mut ea, mut eb) = (end(&a, Mode::Sync), end(&b, Mode::Sync));
    pump(&mut ea, &mut eb);
    let cfg = LinkConfig::default();
    let mut now = 0;
    while now + cfg.ping_ms < cfg.idle_timeout_ms {
        now += cfg.ping_ms;
        ea.link.handle_message(Message::Ping, now).expect("the peer is heard");
        ea.link.handle_tick(now);
    }
    let pings =
        std::iter::from_fn(|| ea.link.poll_transmit(now).expect("poll")).filter(|m| matches!(m, Message::Ping)).count();
    assert_eq!(pings, 1);
}
