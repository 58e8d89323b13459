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
