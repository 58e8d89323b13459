//! A record that holds a version no vector can ever cover (its origin's
//! store was wiped after that write, but not the one before it, reached
//! peers) is sent again in every catch-up. Applying it changes nothing, and
//! such an apply must publish nothing on the change feed: before, every
//! catch-up batch and `CaughtUp` published an empty commit, which overflowed
//! a small live queue on the receiver's other links; each of those restarted
//! a catch-up that sent the record again, and a hub and two peers never went
//! quiet (found by the simulation, seed 22704).

mod common;

use common::link_ends::{transmit, End, OnRefusal};
use meshkv::protocol::{LinkConfig, Mode};
use meshkv::Db;

/// A link on `db` whose live queue holds one commit.
fn end(db: &Db) -> End {
    End::new(db, LinkConfig { mode: Mode::Sync, queue: 1, ..LinkConfig::default() }, OnRefusal::Panic)
}

#[test]
fn a_hub_and_two_peers_go_quiet_around_an_uncoverable_record() {
    let (_dirs, [hub, left, right]) = {
        let (d0, a) = common::temp_store();
        let (d1, b) = common::temp_store();
        let (d2, c) = common::temp_store();
        ([d0, d1, d2], [a, b, c])
    };
    hub.put("mine", "h").expect("put");
    // The wiped node wrote twice; only its second write reached the others,
    // without anything that covers it (a catch-up cut short, say).
    let origin = {
        let (_dir, gone) = common::temp_store();
        gone.put("lost", "never arrives").expect("put");
        gone.put("kept", "arrived").expect("put");
        let record = gone.get_record("kept").expect("get").expect("record");
        for db in [&hub, &left, &right] {
            db.apply([("kept".as_bytes().to_vec(), record.clone())], None).expect("apply");
        }
        gone.node_id()
    };
    let (mut h_left, mut left_h) = (end(&hub), end(&left));
    let (mut h_right, mut right_h) = (end(&hub), end(&right));
    let mut moved = 0;
    for round in 0.. {
        assert!(round < 10_000, "the links never went quiet ({moved} messages)");
        for end in [&mut h_left, &mut left_h, &mut h_right, &mut right_h] {
            end.pump_feed();
        }
        let n = transmit(&mut h_left, &mut left_h, usize::MAX)
            + transmit(&mut left_h, &mut h_left, usize::MAX)
            + transmit(&mut h_right, &mut right_h, usize::MAX)
            + transmit(&mut right_h, &mut h_right, usize::MAX);
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
