//! Gathered key-order catch-up batches: while the runtime reports another
//! message waiting, a receiver acknowledges key-order batches without
//! applying them; it applies them together (ingesting the fresh keys) once no
//! message waits, with the resume point of the last one; batches gathered when
//! the connection drops are simply sent again.
//!
//! Two protocol state machines wired back to back in memory through the real
//! codec, each on a real store.

mod common;

use meshkv::protocol::{codec, Link, LinkConfig, Message, Mode};
use meshkv::storage::ResumePoint;
use meshkv::{Batch, Db, ScanOptions};

/// Records on the sender: five batches of `BATCH`.
const N: u32 = 40_000;
const BATCH: usize = 8192;

fn config(mode: Mode) -> LinkConfig {
    LinkConfig { mode, batch_items: BATCH, batch_bytes: 4 << 20, ..LinkConfig::default() }
}

/// Everything `from` has to send now, through the codec.
fn outgoing(from: &mut Link) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(msg) = from.poll_transmit(0).expect("poll") {
        let mut buf = Vec::new();
        codec::encode(&msg, &mut buf);
        out.push(codec::decode(&buf, codec::DEFAULT_MAX_FRAME).expect("decode").expect("frame").0);
    }
    out
}

fn deliver(to: &mut Link, msgs: Vec<Message>, more: bool) {
    for msg in msgs {
        to.handle_queued_message(msg, 0, more).expect("handle");
    }
}

fn count(db: &Db) -> usize {
    db.scan(ScanOptions::default()).count()
}

/// Connects two fresh links and returns them with the sender's first burst
/// (the catch-up start, every batch its window allows and `CaughtUp`).
fn connect(a: &Db, b: &Db) -> (Link, Link, Vec<Message>) {
    let mut la = Link::new(a.clone(), config(Mode::Sync), 0);
    let mut lb = Link::new(b.clone(), config(Mode::Pull), 0);
    let hello = outgoing(&mut la);
    deliver(&mut lb, hello, false);
    let hello_and_digest = outgoing(&mut lb);
    deliver(&mut la, hello_and_digest, false);
    let burst = outgoing(&mut la);
    (la, lb, burst)
}

#[test]
fn gathered_batches_apply_together_when_no_message_waits() {
    let (_da, a) = common::temp_store();
    let (_db, b) = common::temp_store();
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let mut batch = Batch::new();
        for &i in chunk {
            batch.put(format!("key-{i:06}"), vec![b'v'; 100]);
        }
        a.write(batch).expect("write");
    }

    let (_la, mut lb, mut burst) = connect(&a, &b);
    assert!(matches!(burst.first(), Some(Message::CatchUpStart { .. })));
    assert!(matches!(burst.last(), Some(Message::CaughtUp { .. })), "the whole stream fits the window");
    assert_eq!(burst.len(), 2 + (N as usize).div_ceil(BATCH));

    // Three batches with more waiting: acknowledged, not applied.
    let rest = burst.split_off(4);
    deliver(&mut lb, burst, true);
    let acks = outgoing(&mut lb);
    assert_eq!(acks.iter().filter(|m| matches!(m, Message::Ack { .. })).count(), 3);
    assert_eq!(count(&b), 0);
    assert_eq!(b.resume_point(a.node_id()).expect("resume point"), None);

    // The fourth with nothing waiting: all four applied, resume point stored.
    let mut rest = rest.into_iter();
    deliver(&mut lb, rest.next().into_iter().collect(), false);
    let applied = count(&b);
    assert_eq!(applied, 4 * BATCH);
    let Some(ResumePoint::Key { key, .. }) = b.resume_point(a.node_id()).expect("resume point") else {
        panic!("a key-order resume point")
    };
    assert_eq!(key, format!("key-{:06}", applied - 1).into_bytes());
    assert!(b.verify().expect("verify").is_ok());

    // The next batch is gathered, then the connection drops: it is sent again.
    deliver(&mut lb, rest.next().into_iter().collect(), true);
    drop(lb);
    assert_eq!(count(&b), applied);

    let (la, mut lb, burst) = connect(&a, &b);
    deliver(&mut lb, burst, false);
    assert_eq!(la.item_counts().0 as usize, N as usize - applied, "only the rest is sent again");
    assert_eq!(count(&b), N as usize);
    assert_eq!(a.version_vector(), b.version_vector());
    assert!(b.verify().expect("verify").is_ok());
    for i in (0..N).step_by(997) {
        let k = format!("key-{i:06}");
        assert_eq!(a.get_record(&k).expect("get"), b.get_record(&k).expect("get"));
    }
}
