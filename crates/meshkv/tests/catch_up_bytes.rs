//! Catch-up is O(difference), counted in bytes on the wire (deterministic,
//! not timed): two in-sync nodes with 100k keys reconnect with under 1 KiB
//! exchanged, and 100 differing records cost at most 1.2× their encoded
//! size plus a constant. Nodes in sync send no records either when they
//! hold writes no vector can ever cover.

mod common;

use meshkv::protocol::{codec, Link, LinkConfig, Mode};
use meshkv::storage::Subscription;
use meshkv::{Batch, Db, KeyRange};

struct End {
    sub: Subscription,
    link: Link,
    bytes_out: usize,
}

impl End {
    fn connect(db: &Db) -> End {
        let sub = db.subscribe(KeyRange::all());
        End {
            sub,
            link: Link::new(db.clone(), LinkConfig { mode: Mode::Sync, ..LinkConfig::default() }, 0),
            bytes_out: 0,
        }
    }
}

/// Moves everything `src` has to say to `dst`, through the real codec.
fn transmit(src: &mut End, dst: &mut End) -> usize {
    while let Ok(Some(c)) = src.sub.try_recv_commit() {
        src.link.handle_commit(c);
    }
    let mut moved = 0;
    while let Some(msg) = src.link.poll_transmit(0).expect("poll") {
        let mut buf = Vec::new();
        src.bytes_out += codec::encode(&msg, &mut buf);
        let (msg, _) = codec::decode(&buf, codec::DEFAULT_MAX_FRAME).expect("decode").expect("frame");
        dst.link.handle_message(msg, 0).expect("handle");
        moved += 1;
    }
    moved
}

/// Runs two links against each other until quiet.
fn pump(a: &mut End, b: &mut End) {
    while transmit(a, b) + transmit(b, a) > 0 {}
}

fn load(db: &Db, from: u32, to: u32, tag: u8) {
    for chunk in (from..to).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::new();
        for i in chunk {
            b.put(format!("key{i:08}"), vec![tag; 100]);
        }
        db.write(b).expect("write");
    }
}

#[test]
fn in_sync_reconnect_and_small_difference_cost_few_bytes() {
    let ((_da, a), (_db, b)) = (common::temp_store(), common::temp_store());
    load(&a, 0, 100_000, 1);
    let (mut ea, mut eb) = (End::connect(&a), End::connect(&b));
    pump(&mut ea, &mut eb);
    assert_eq!(a.version_vector(), b.version_vector());
    assert!(ea.bytes_out > 100_000 * 100, "the first catch-up moved the data");

    // Reconnect: only handshakes and digests.
    let (mut ea, mut eb) = (End::connect(&a), End::connect(&b));
    pump(&mut ea, &mut eb);
    let in_sync = ea.bytes_out + eb.bytes_out;
    assert!(in_sync < 1024, "in-sync reconnect exchanged {in_sync} bytes");

    // 100 records differ (overwrites on A while disconnected).
    load(&a, 500, 600, 2);
    let encoded: usize = a
        .changes_since(&b.version_vector())
        .expect("diff")
        .map(|r| {
            let (key, record) = r.expect("item");
            key.len() + record.encode().len()
        })
        .sum();
    let (mut ea, mut eb) = (End::connect(&a), End::connect(&b));
    pump(&mut ea, &mut eb);
    let total = ea.bytes_out + eb.bytes_out;
    assert_eq!(ea.link.item_counts().0, 100, "exactly the difference is sent");
    assert!(
        total as f64 <= 1.2 * encoded as f64 + 1024.0,
        "{total} bytes for 100 records whose encoding is {encoded} bytes"
    );
    assert_eq!(b.get("key00000550").expect("get"), Some(vec![2u8; 100]));
    assert_eq!(a.version_vector(), b.version_vector());
}

/// Writes of a node whose store was lost, above one of its writes that
/// reached nobody, can never be covered by a vector. Nodes in sync that
/// hold them name them in their digests and send none of them again: before,
/// every reconnect (and every catch-up) sent them again.
#[test]
fn in_sync_nodes_do_not_resend_writes_no_vector_covers() {
    let ((_da, a), (_db, b)) = (common::temp_store(), common::temp_store());
    load(&a, 0, 1_000, 1);
    let origin = {
        let (_dir, gone) = common::temp_store();
        gone.put("lost", "never arrives").expect("put");
        for i in 0..10 {
            gone.put(format!("kept{i}"), "arrived").expect("put");
            let record = gone.get_record(format!("kept{i}")).expect("get").expect("record");
            a.apply([(format!("kept{i}").into_bytes(), record)], None).expect("apply");
        }
        gone.node_id()
    };
    let (mut ea, mut eb) = (End::connect(&a), End::connect(&b));
    pump(&mut ea, &mut eb);
    assert_eq!(b.get("kept9").expect("get").as_deref(), Some(&b"arrived"[..]));
    assert_eq!(b.version_vector().get(origin), 0, "nothing covers the lost node's writes");
    assert_eq!(a.version_vector(), b.version_vector());

    for _ in 0..2 {
        let (mut ea, mut eb) = (End::connect(&a), End::connect(&b));
        pump(&mut ea, &mut eb);
        let sent = (ea.link.item_counts().0, eb.link.item_counts().0);
        assert_eq!(sent, (0, 0), "records sent by nodes in sync");
        let bytes = ea.bytes_out + eb.bytes_out;
        assert!(bytes < 1024, "in-sync reconnect exchanged {bytes} bytes");
    }
}
