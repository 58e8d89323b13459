//! Sequence numbers are reserved in large, fsynced blocks (so a busy store
//! rarely waits for a reservation) and never reused after a crash
//! (`tests/crash_recovery.rs`). A clean close gives back the unused part of
//! the block: the next open continues right after the last write, so
//! restarts leave no gaps in a node's seqs.

use meshkv::{Db, Options};

#[test]
fn a_clean_close_continues_right_after_the_last_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut last = 0;
    for round in 0..3 {
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let first = db.put(format!("k{round}"), "v").expect("put").seq;
        assert_eq!(first, last + 1, "round {round}: seqs skipped after a clean close");
        last = db.delete(format!("k{round}")).expect("delete").seq;
        let report = db.verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");
    }
}

#[test]
fn a_clone_keeps_the_reservation_until_the_last_handle_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let other = db.clone();
    let a = db.put("a", "1").expect("put").seq;
    drop(db);
    let b = other.put("b", "2").expect("put after a clone closed").seq;
    assert_eq!(b, a + 1);
    drop(other);
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    assert_eq!(db.put("c", "3").expect("put").seq, b + 1);
}
