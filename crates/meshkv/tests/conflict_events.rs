//! `Db::subscribe_conflicts` streams the conflicts merges settle, apart
//! from the change feed: a burst of ordinary writes neither reaches it nor
//! makes it lag, so a node reports every conflict even under write load.

use meshkv::{Db, Options};

#[tokio::test]
async fn every_conflict_arrives_however_many_writes_surround_it() {
    let (da, dbd) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = Db::open(da.path(), Options::default()).expect("open a");
    let b = Db::open(dbd.path(), Options::default()).expect("open b");
    let mut conflicts = a.subscribe_conflicts();
    // Far more commits than the change feed buffers, none of them a conflict.
    for i in 0..5_000u32 {
        a.put(i.to_be_bytes(), "local").expect("put");
    }
    // Concurrent writes to three keys, merged into a.
    for key in ["x", "y", "z"] {
        a.put(key, "from a").expect("put");
        b.put(key, "from b").expect("put");
    }
    let from_b: Vec<_> = b.changes_since(&a.version_vector()).expect("changes").map(|r| r.expect("item")).collect();
    let report = a.apply(from_b, Some(&b.version_vector())).expect("apply");
    assert_eq!(report.conflicts, 3);
    let mut keys = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), conflicts.recv())
            .await
            .expect("a conflict event in time")
            .expect("no lag, no close");
        let record = a.get_record(&event.key).expect("get").expect("present");
        assert_eq!(record.winner().dot, event.conflict.winner, "the event names the version reads return");
        assert_eq!(event.conflict.losers.len(), 1);
        keys.push(String::from_utf8(event.key.clone()).expect("utf-8"));
    }
    keys.sort();
    assert_eq!(keys, ["x", "y", "z"]);
    assert_eq!(a.conflict_count(), 3);
}

/// Under last-writer-wins a losing version leaves no trace in the record.
/// Delivered again before the vector covers it (two peers pushing the same
/// record during one catch-up), it is still one conflict, counted and
/// published once.
#[tokio::test]
async fn a_losing_version_delivered_twice_is_one_conflict() {
    use meshkv::clock::ManualClock;
    use std::sync::Arc;
    let (da, dbd) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let opts = || Options { clock: clock.clone(), ..Options::default() };
    let (a, b) = (Db::open(da.path(), opts()).expect("open a"), Db::open(dbd.path(), opts()).expect("open b"));
    b.put("x", "from b, earlier").expect("put");
    clock.advance(1_000);
    a.put("x", "from a, later").expect("put");
    let mut conflicts = a.subscribe_conflicts();
    let from_b: Vec<_> = b.changes_since(&a.version_vector()).expect("changes").map(|r| r.expect("item")).collect();
    for delivery in 0..3 {
        let report = a.apply(from_b.clone(), None).expect("apply without covering");
        assert_eq!(report.conflicts, usize::from(delivery == 0), "delivery {delivery}");
    }
    a.apply(from_b, Some(&b.version_vector())).expect("apply, now covering");
    assert_eq!(a.conflict_count(), 1);
    assert_eq!(a.get("x").expect("get").as_deref(), Some(&b"from a, later"[..]));
    // The events: x once, then y, a conflict made after the repeats.
    b.put("y", "from b").expect("put");
    clock.advance(1_000);
    a.put("y", "from a").expect("put");
    let from_b: Vec<_> = b.changes_since(&a.version_vector()).expect("changes").map(|r| r.expect("item")).collect();
    a.apply(from_b, Some(&b.version_vector())).expect("apply");
    for key in ["x", "y"] {
        assert_eq!(conflicts.recv().await.expect("a conflict").key, key.as_bytes());
    }
}
