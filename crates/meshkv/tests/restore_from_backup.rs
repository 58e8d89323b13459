//! A data directory restored from an old backup rejoins safely: it takes
//! back the writes it made after the backup from a peer that holds them,
//! never issues their seqs again, and stays intact across a reopen.
//!
//! Restoring a backup is the ordinary way to recover a node's disk; if the
//! restored node reused a seq it had already given to a write the peers
//! hold, the peers would take its new write for one they have and never
//! receive it.

use meshkv::{Batch, Db, Options, Record, VersionVector};
use std::path::Path;

fn open(dir: &Path) -> Db {
    Db::open(dir, Options::default()).expect("open")
}

/// A complete catch-up of `to` from `from`.
fn pull(to: &Db, from: &Db) {
    let cs = from.changes_since(&to.version_vector()).expect("changes");
    let vv: VersionVector = cs.version_vector().clone();
    let recs: Vec<(Vec<u8>, Record)> = cs.map(|r| r.expect("record")).collect();
    to.apply(recs, Some(&vv)).expect("apply");
}

fn all_records(db: &Db) -> Vec<(Vec<u8>, Record)> {
    let mut records: Vec<_> =
        db.changes_since(&VersionVector::new()).expect("changes").map(|r| r.expect("record")).collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records
}

fn assert_verified(db: &Db) {
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "verify: {:?}", report.problems);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn batch(prefix: &str, value: &str) -> Batch {
    let mut b = Batch::new();
    for i in 0..40 {
        b.put(format!("{prefix}{i:02}"), value);
    }
    b
}

/// The backup holds 3 writes. After it, the node writes a 40-key batch
/// (whole change-log blocks), overwrites one key of the batch and deletes
/// another; a peer takes all of it. The backup is restored and catches up
/// from the peer: its next write gets a seq above all of them, it can
/// overwrite its own batch writes and write new blocks, and after a reopen
/// the peer catches up to exactly the same records.
#[test]
fn restored_backup_takes_back_its_own_writes_from_blocks() {
    let (dir, backup, peer_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let id = {
        let a = open(dir.path());
        for i in 0..3 {
            a.put(format!("early{i}"), "v").expect("put");
        }
        a.node_id()
    };
    copy_dir(dir.path(), backup.path());

    let peer = open(peer_dir.path());
    let last_before_restore = {
        let a = open(dir.path());
        a.write(batch("b", "batch")).expect("batch");
        a.put("b20", "over").expect("overwrite inside a block");
        a.delete("b05").expect("delete");
        assert_verified(&a);
        pull(&peer, &a);
        a.version_vector().get(id)
    };

    std::fs::remove_dir_all(dir.path()).expect("remove");
    copy_dir(backup.path(), dir.path());
    let a = open(dir.path());
    assert_eq!(a.node_id(), id);
    assert_eq!(a.version_vector().get(id), 3, "the restored store is the backup");
    pull(&a, &peer);
    assert_verified(&a);
    assert_eq!(a.get("b20").expect("get").as_deref(), Some(&b"over"[..]));
    assert_eq!(a.get("b05").expect("get"), None);
    let first = a.put("b21", "after").expect("put");
    assert!(
        first.seq > last_before_restore,
        "seq {} reused: the peer holds this node's writes up to {last_before_restore}",
        first.seq
    );
    a.put("b17", "again").expect("overwrite of an own write the peer holds in a block");
    a.write(batch("c", "batch2")).expect("batch");
    assert_verified(&a);

    drop(a);
    let a = open(dir.path());
    assert_verified(&a);
    let after_reopen = a.put("z", "z").expect("put");
    assert!(after_reopen.seq > first.seq + 41, "seq {} reused after the reopen", after_reopen.seq);
    pull(&peer, &a);
    assert_verified(&peer);
    assert_eq!(all_records(&peer), all_records(&a));
}
