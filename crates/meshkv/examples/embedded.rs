//! Two embedded stores that accept writes independently and converge.
//!
//! Run with `cargo run -p meshkv --example embedded`.

use meshkv::{Batch, Db, KeyRange, Options, ScanOptions};

fn main() -> meshkv::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| meshkv::Error::Io { context: "tempdir".into(), source: e })?;
    let a = Db::open(dir.path().join("a"), Options::default())?;
    let b = Db::open(dir.path().join("b"), Options::default())?;
    println!("node a = {}, node b = {}", a.node_id(), b.node_id());

    let mut feed = b.subscribe(KeyRange::prefix("user/"));

    // Both nodes accept writes while "cut off" from each other.
    let mut batch = Batch::new();
    batch.put("user/1", "ada").put("user/2", "grace");
    a.write(batch)?;
    b.put("user/2", "barbara")?; // concurrent with a's write of user/2
    b.put("user/3", "edsger")?;

    // Exchange what each lacks, in both directions.
    for (from, to) in [(&a, &b), (&b, &a)] {
        let changes = from.changes_since(&to.version_vector())?;
        let covered = changes.version_vector().clone();
        let records = changes.collect::<meshkv::Result<Vec<_>>>()?;
        let report = to.apply(records, Some(&covered))?;
        println!("{} -> {}: {report:?}", from.node_id(), to.node_id());
    }

    for db in [&a, &b] {
        let entries: Vec<String> = db
            .scan(ScanOptions::range(KeyRange::prefix("user/")))
            .map(|e| e.map(|e| format!("{}={}", String::from_utf8_lossy(&e.key), String::from_utf8_lossy(&e.value))))
            .collect::<meshkv::Result<_>>()?;
        println!("{}: {} (conflicts seen: {})", db.node_id(), entries.join(" "), db.conflict_count());
    }
    assert_eq!(a.get("user/2")?, b.get("user/2")?, "both nodes picked the same winner");

    while let Ok(Some(change)) = feed.try_recv() {
        let what = change.record().value().map(String::from_utf8_lossy).unwrap_or("<deleted>".into());
        println!("feed on b: {} -> {what} conflict={:?}", String::from_utf8_lossy(&change.key), change.conflict);
    }
    Ok(())
}
