//! After a restart — clean or not — a node's version vector names exactly
//! the own writes it holds, and its clock never issues a timestamp at or
//! below one it issued or observed before, even when the wall clock went
//! backwards in between. Local commits write neither their own version
//! vector entry nor the clock: both are recovered at open (the change log
//! and a persisted clock ceiling), so this is what keeps them honest.

use meshkv::clock::ManualClock;
use meshkv::{Db, Options, Record};
use std::sync::Arc;

fn options(clock: &Arc<ManualClock>) -> Options {
    Options { clock: clock.clone(), ..Options::default() }
}

/// Every record of `db`, as a catch-up from nothing would send it.
fn all_records(db: &Db) -> Vec<(Vec<u8>, Record)> {
    db.changes_since(&meshkv::VersionVector::new()).expect("changes").map(|c| c.expect("item")).collect()
}

fn max_hlc(db: &Db) -> u64 {
    all_records(db).iter().map(|(_, r)| r.max_hlc().0).max().unwrap_or(0)
}

fn hlc_of(db: &Db, key: &str) -> u64 {
    db.get_record(key).expect("get_record").expect("record exists").winner().hlc.0
}

#[test]
fn vv_is_exact_and_clock_only_grows_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(5_000_000));
    let (node, last) = {
        let db = Db::open(dir.path(), options(&clock)).expect("open");
        for i in 0..100 {
            db.put(format!("k{i}"), "v").expect("put");
            clock.advance(7);
        }
        let last = db.put("k0", "again").expect("overwrite").seq;
        assert_eq!(db.version_vector().get(db.node_id()), last);
        (db.node_id(), last)
    };
    let before = {
        let db = Db::open(dir.path(), options(&clock)).expect("reopen");
        assert_eq!(db.version_vector().get(node), last, "own entry recovered exactly, no phantom writes");
        max_hlc(&db)
    };

    // The wall clock jumps an hour back; the store must not follow it.
    clock.set(5_000_000 - 3_600_000);
    let db = Db::open(dir.path(), options(&clock)).expect("reopen with the clock behind");
    let dot = db.put("late", "v").expect("put");
    assert!(dot.seq > last, "seq {} reused after restart (last {last})", dot.seq);
    assert!(hlc_of(&db, "late") > before, "timestamp went back after restart");
    assert!(db.verify().expect("verify").is_ok());
}

/// A store whose wall clock reads `now_ms`, holding one write, and that
/// write as a catch-up would send it.
fn source_with_one_write(now_ms: u64) -> (tempfile::TempDir, Db, Vec<(Vec<u8>, Record)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Db::open(dir.path(), options(&Arc::new(ManualClock::new(now_ms)))).expect("open source");
    src.put("remote", "v").expect("put");
    let records = all_records(&src);
    (dir, src, records)
}

#[test]
fn observed_remote_timestamps_survive_a_restart() {
    let (_src_dir, src, records) = source_with_one_write(9_000_000);
    let remote_hlc = records[0].1.max_hlc().0;

    // The receiver's wall clock is 30 s behind: applying moves its clock
    // forward, and a restart must keep it there.
    let dir = tempfile::tempdir().expect("tempdir");
    let behind = Arc::new(ManualClock::new(9_000_000 - 30_000));
    {
        let db = Db::open(dir.path(), options(&behind)).expect("open receiver");
        db.apply(records, Some(&src.version_vector())).expect("apply");
    }
    let db = Db::open(dir.path(), options(&behind)).expect("reopen receiver");
    db.put("local", "v").expect("put");
    assert!(hlc_of(&db, "local") > remote_hlc, "a local write after restart is ordered before an observed one");
    assert_eq!(db.version_vector().get(src.node_id()), src.version_vector().get(src.node_id()));
    assert_eq!(db.version_vector().get(db.node_id()), 1);
}

/// A record first too far ahead to adopt, delivered again once the clock
/// is close enough: that apply changes nothing but moves the clock, which
/// a restart must keep.
#[test]
fn timestamps_adopted_by_an_apply_that_changes_nothing_survive_a_restart() {
    let now = 1_700_000_000_000;
    let (_src_dir, _src, records) = source_with_one_write(now);
    let remote_hlc = records[0].1.max_hlc().0;

    let dir = tempfile::tempdir().expect("tempdir");
    let behind = Arc::new(ManualClock::new(now - 90_000));
    {
        let db = Db::open(dir.path(), options(&behind)).expect("open receiver");
        db.apply(records.clone(), None).expect("apply");
        behind.set(now - 50_000);
        let again = db.apply(records, None).expect("apply again");
        assert_eq!(again.changed, 0);
    }
    let db = Db::open(dir.path(), options(&behind)).expect("reopen receiver");
    db.put("local", "v").expect("put");
    assert!(hlc_of(&db, "local") > remote_hlc, "the clock went back below a timestamp it had adopted");
}

#[test]
fn vv_stays_exact_when_a_remote_write_supersedes_the_newest_own_one() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options(&clock)).expect("open");
    db.put("a", "1").expect("put");
    let newest = db.put("shared", "mine").expect("put").seq;

    // A peer overwrites "shared" after seeing our write: our newest write
    // leaves the change log.
    let peer_dir = tempfile::tempdir().expect("tempdir");
    let peer = Db::open(peer_dir.path(), options(&clock)).expect("open peer");
    let ours = all_records(&db);
    peer.apply(ours, Some(&db.version_vector())).expect("peer applies");
    clock.advance(10);
    peer.put("shared", "theirs").expect("peer overwrites");
    let theirs: Vec<(Vec<u8>, Record)> =
        peer.changes_since(&db.version_vector()).expect("changes").map(|c| c.expect("item")).collect();
    db.apply(theirs, Some(&peer.version_vector())).expect("apply");
    assert_eq!(db.get("shared").expect("get").as_deref(), Some(&b"theirs"[..]));
    let node = db.node_id();
    drop(db);

    let db = Db::open(dir.path(), options(&clock)).expect("reopen");
    assert_eq!(db.version_vector().get(node), newest, "own entry went backwards across a restart");
    assert!(db.verify().expect("verify").is_ok());
}
