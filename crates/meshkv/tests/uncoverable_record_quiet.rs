//! A record that holds a version no vector can ever cover (its origin's
//! store was wiped after that write, but not the one before it, reached
//! peers) is sent again in every catch-up. Applying it changes nothing, and
//! such an apply must publish nothing on the change feed: before, every
//! catch-up batch and `CaughtUp` published an empty commit, which overflowed
//! a small live queue on the receiver's other links; each of those restarted
//! a catch-up that sent the record again, and a hub and two peers never went
//! quiet (found by the simulation, seed 22704).

use meshkv::protocol::{codec, Link, LinkConfig, Mode};
use meshkv::storage::{FeedError, Subscription};
use meshkv::{Db, KeyRange, Options};

struct End {
    sub: Subscription,
    link: Link,
}

impl End {
    fn new(db: &Db) -> End {
        let sub = db.subscribe(KeyRange::all());
        let cfg = LinkConfig { mode: Mode::Sync, queue: 1, ..LinkConfig::default() };
        End { sub, link: Link::new(db.clone(), cfg, 0) }
    }

    fn pump_feed(&mut self) {
        loop {
            match self.sub.try_recv_commit() {
                Ok(Some(c)) => self.link.handle_commit(c),
                Ok(None) => break,
                Err(FeedError::Lagged { .. }) => self.link.handle_feed_lagged(),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// Sends everything `from` has for `to`, through the codec.
fn transmit(from: &mut End, to: &mut End) -> usize {
    let mut n = 0;
    while let Some(msg) = from.link.poll_transmit(0).expect("poll") {
        let mut buf = Vec::new();
        codec::encode(&msg, &mut buf);
        let (msg, _) = codec::decode(&buf, codec::DEFAULT_MAX_FRAME).expect("decode").expect("frame");
        to.link.handle_message(msg, 0).expect("handle");
        n += 1;
    }
    n
}

fn open() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    (dir, db)
}

#[test]
fn a_hub_and_two_peers_go_quiet_around_an_uncoverable_record() {
    let (_dirs, [hub, left, right]) = {
        let (d0, a) = open();
        let (d1, b) = open();
        let (d2, c) = open();
        ([d0, d1, d2], [a, b, c])
    };
    hub.put("mine", "h").expect("put");
    // The wiped node wrote twice; only its second write reached the others,
    // without anything that covers it (a catch-up cut short, say).
    let origin = {
        let (_dir, gone) = open();
        gone.put("lost", "never arrives").expect("put");
        gone.put("kept", "arrived").expect("put");
        let record = gone.get_record("kept").expect("get").expect("record");
        for db in [&hub, &left, &right] {
            db.apply([("kept".as_bytes().to_vec(), record.clone())], None).expect("apply");
        }
        gone.node_id()
    };
    let (mut h_left, mut left_h) = (End::new(&hub), End::new(&left));
    let (mut h_right, mut right_h) = (End::new(&hub), End::new(&right));
    let mut moved = 0;
    for round in 0.. {
        assert!(round < 10_000, "the links never went quiet ({moved} messages)");
        for end in [&mut h_left, &mut left_h, &mut h_right, &mut right_h] {
            end.pump_feed();
        }
        let n = transmit(&mut h_left, &mut left_h)
            + transmit(&mut left_h, &mut h_left)
            + transmit(&mut h_right, &mut right_h)
            + transmit(&mut right_h, &mut h_right);
        if n == 0 {
            break;
        }
        moved += n;
    }
    for db in [&hub, &left, &right] {
        assert_eq!(db.get("mine").expect("get").as_deref(), Some(&b"h"[..]));
        assert_eq!(db.get("kept").expect("get").as_deref(), Some(&b"arrived"[..]));
        assert_eq!(db.get("lost").expect("get"), None);
        assert_eq!(db.version_vector().get(origin), 0, "nothing covers the wiped node's writes");
        assert_eq!(db.version_vector(), hub.version_vector());
    }
}
