//! The change feed: `changes_since` returns what a peer lacks in
//! O(difference), `entry` looks up a write by dot, and `subscribe` streams
//! live changes without ever blocking writers.

use meshkv::storage::FeedError;
use meshkv::{Db, KeyRange, Options, VersionVector};

fn open(opts: Options) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts).expect("open");
    (dir, db)
}

#[test]
fn changes_since_returns_only_the_difference() {
    let (_d, db) = open(Options::default());
    for i in 0..1000u32 {
        db.put(i.to_be_bytes(), "v1").expect("put");
    }
    let seen = db.version_vector();
    for i in 0..10u32 {
        db.put(i.to_be_bytes(), "v2").expect("overwrite");
    }
    db.delete(500u32.to_be_bytes()).expect("delete");

    let all: Vec<_> = db.changes_since(&VersionVector::new()).expect("all").map(|c| c.expect("item")).collect();
    assert_eq!(all.len(), 1000, "the compacted log has one entry per key");
    let diff = db.changes_since(&seen).expect("diff");
    let vv = diff.version_vector().clone();
    let diff: Vec<_> = diff.map(|c| c.expect("item")).collect();
    assert_eq!(diff.len(), 11);
    assert!(diff.iter().any(|(k, r)| k == &500u32.to_be_bytes() && r.winner().is_tombstone()));
    assert_eq!(vv, db.version_vector());
    assert_eq!(db.changes_since(&vv).expect("none").count(), 0, "in sync: nothing to send");
}

#[test]
fn catch_up_from_changes_since_makes_an_identical_copy() {
    let (_a, a) = open(Options::default());
    let (_b, b) = open(Options::default());
    for i in 0..200u32 {
        a.put(format!("k{i}"), format!("a{i}")).expect("put");
    }
    b.put("only-b", "x").expect("put");
    let changes = a.changes_since(&b.version_vector()).expect("changes");
    let covered = changes.version_vector().clone();
    let records: Vec<_> = changes.map(|c| c.expect("item")).collect();
    b.apply(records, Some(&covered)).expect("apply");
    for i in 0..200u32 {
        let key = format!("k{i}");
        assert_eq!(b.get_record(&key).expect("b"), a.get_record(&key).expect("a"));
    }
    assert_eq!(b.version_vector().get(a.node_id()), a.version_vector().get(a.node_id()));
    assert!(b.verify().expect("verify").is_ok());
    // A second round sends nothing.
    assert_eq!(a.changes_since(&b.version_vector()).expect("again").count(), 0);
}

#[test]
fn entry_finds_current_writes_by_dot() {
    let (_d, db) = open(Options::default());
    let d1 = db.put("k", "one").expect("put");
    assert_eq!(db.entry(d1.origin, d1.seq).expect("entry").map(|(k, _)| k), Some(b"k".to_vec()));
    let d2 = db.put("k", "two").expect("put");
    assert!(db.entry(d1.origin, d1.seq).expect("entry").is_none(), "superseded");
    let (_, rec) = db.entry(d2.origin, d2.seq).expect("entry").expect("current");
    assert_eq!(rec.value(), Some(&b"two"[..]));
    assert!(db.entry(d2.origin, 999).expect("entry").is_none());
}

#[test]
fn subscribers_see_local_and_remote_changes_in_range() {
    let (_a, a) = open(Options::default());
    let (_b, b) = open(Options::default());
    let mut sub = b.subscribe(KeyRange::prefix("user/"));
    let mut all = b.subscribe(KeyRange::all());
    b.put("user/1", "local").expect("put");
    b.put("other", "x").expect("put");
    a.put("user/2", "remote").expect("put");
    let recs: Vec<_> = a.changes_since(&VersionVector::new()).expect("c").map(|c| c.expect("i")).collect();
    b.apply(recs, None).expect("apply");

    let c1 = sub.try_recv().expect("ok").expect("first");
    assert_eq!(c1.key, b"user/1");
    let c2 = sub.try_recv().expect("ok").expect("second");
    assert_eq!((c2.key.as_slice(), c2.record().value()), (&b"user/2"[..], Some(&b"remote"[..])));
    assert!(sub.try_recv().expect("ok").is_none(), "`other` is out of range");
    let mut sources = Vec::new();
    while let Ok(commit) = tokio_free_recv(&mut all) {
        sources.push(commit);
    }
    assert_eq!(sources, vec![b"user/1".to_vec(), b"other".to_vec(), b"user/2".to_vec()]);
}

fn tokio_free_recv(sub: &mut meshkv::storage::Subscription) -> Result<Vec<u8>, ()> {
    match sub.try_recv() {
        Ok(Some(c)) => Ok(c.key),
        _ => Err(()),
    }
}

#[test]
fn a_slow_subscriber_is_told_it_lagged_and_never_blocks_writers() {
    let (_d, db) = open(Options { feed_capacity: 16, ..Options::default() });
    let mut slow = db.subscribe(KeyRange::all());
    for i in 0..1000u32 {
        db.put(i.to_be_bytes(), "v").expect("writers are never blocked");
    }
    match slow.try_recv() {
        Err(FeedError::Lagged { missed }) => assert_eq!(missed, 1000 - 16),
        other => panic!("expected lag, got {other:?}"),
    }
    // After the lag notice it continues with the newest retained commits.
    let next = slow.try_recv().expect("ok").expect("retained change");
    assert_eq!(next.key, (1000u32 - 16).to_be_bytes());
    let mut n = 1;
    while slow.try_recv().expect("ok").is_some() {
        n += 1;
    }
    assert_eq!(n, 16);
}

struct FixedClock(u64);

impl meshkv::clock::PhysicalClock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

#[test]
fn the_feed_reports_conflicts() {
    let (_a, a) = open(Options { clock: std::sync::Arc::new(FixedClock(2_000)), ..Options::default() });
    let (_b, b) = open(Options { clock: std::sync::Arc::new(FixedClock(1_000)), ..Options::default() });
    let wa = a.put("k", "from-a").expect("put");
    let wb = b.put("k", "from-b").expect("put");
    let mut sub = b.subscribe(KeyRange::all());
    let recs: Vec<_> = a.changes_since(&VersionVector::new()).expect("c").map(|c| c.expect("i")).collect();
    let report = b.apply(recs.clone(), None).expect("apply");
    assert_eq!(report.conflicts, 1);
    assert_eq!(b.conflict_count(), 1);
    assert_eq!(b.get("k").expect("get"), Some(b"from-a".to_vec()), "higher HLC wins");
    let change = sub.try_recv().expect("ok").expect("published");
    let conflict = change.conflict.expect("conflict reported on the feed");
    assert_eq!((conflict.winner, conflict.losers), (wa, vec![wb]));
    // A duplicate delivery is neither a change nor a new conflict.
    let again = b.apply(recs, None).expect("apply");
    assert_eq!((again.changed, again.conflicts), (0, 0));
}
