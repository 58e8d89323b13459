//! A data directory restored from a backup, or copied to start another
//! node, is told apart from its original at open and takes a new node id:
//! it never issues the original's dots again nor claims the original's later
//! writes, which it receives from peers, and the writes of both reach
//! everyone. Restoring a backup is the ordinary way to recover a node's
//! disk; a copy that kept the id would lose writes without an error
//! (docs/ALGORITHM.md §10).
//!
//! A copy that is not detected (a block-level image) keeps the id; it still
//! takes back from a peer the writes it made after the backup, and never
//! issues their seqs again.

use meshkv::{Batch, Db, Options, Record, VersionVector};
use std::path::Path;

fn open(dir: &Path) -> Db {
    Db::open(dir, Options::default()).expect("open")
}

/// Opens `dir` as if a copy of it were not detected.
fn open_undetected(dir: &Path) -> Db {
    Db::open(dir, Options { new_id_for_copies: false, ..Options::default() }).expect("open")
}

fn temp_dirs<const N: usize>() -> [tempfile::TempDir; N] {
    std::array::from_fn(|_| tempfile::tempdir().expect("tempdir"))
}

/// Creates a store in `dir` holding `b`, closes it and returns its id.
fn closed_store(dir: &Path, b: Batch) -> meshkv::NodeId {
    let db = open(dir);
    db.write(b).expect("batch");
    db.node_id()
}

/// Replaces `dir` with a copy of `backup`.
fn restore(backup: &Path, dir: &Path) {
    std::fs::remove_dir_all(dir).expect("remove");
    copy_dir(backup, dir);
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
/// another; a peer takes all of it. The backup is restored where the copy
/// goes undetected and catches up from the peer: its next write gets a seq
/// above all of them, it can overwrite its own batch writes and write new
/// blocks, and after a reopen the peer catches up to exactly the same
/// records.
#[test]
fn an_undetected_restore_takes_back_its_own_writes_from_blocks() {
    let [dir, backup, peer_dir] = temp_dirs();
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

    restore(backup.path(), dir.path());
    let a = open_undetected(dir.path());
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
    let a = open_undetected(dir.path());
    assert_verified(&a);
    let after_reopen = a.put("z", "z").expect("put");
    assert!(after_reopen.seq > first.seq + 41, "seq {} reused after the reopen", after_reopen.seq);
    pull(&peer, &a);
    assert_verified(&peer);
    assert_eq!(all_records(&peer), all_records(&a));
}

/// The backup holds a 40-key batch (in change-log blocks). After it the
/// original writes another batch, overwrites a key of the first and deletes
/// another; a peer takes it all; then the original is lost. The restored
/// store writes before it hears from any peer, into the backup's blocks
/// too. Under a new id none of its writes collides with the original's, it
/// receives the original's later writes, and it and the peer end up
/// identical, with every write of both.
#[test]
fn a_restored_backup_takes_a_new_id_and_the_originals_later_writes() {
    let [dir, backup, peer_dir] = temp_dirs();
    let (id, in_backup) = {
        let a = open(dir.path());
        a.write(batch("early", "v")).expect("batch");
        (a.node_id(), a.version_vector().get(a.node_id()))
    };
    copy_dir(dir.path(), backup.path());
    let peer = open(peer_dir.path());
    {
        let original = open(dir.path());
        assert_eq!(original.node_id(), id, "a reopen in place keeps the id");
        original.write(batch("late", "original")).expect("batch");
        original.put("early07", "overwritten by the original").expect("put");
        original.delete("early09").expect("delete");
        pull(&peer, &original);
    }

    restore(backup.path(), dir.path());
    let restored = open(dir.path());
    let new_id = restored.node_id();
    assert_ne!(new_id, id, "the restored copy kept the original's id");
    assert_eq!(restored.version_vector().get(id), in_backup, "covers the original up to the backup");
    assert_eq!(restored.version_vector().get(new_id), 0);
    assert_verified(&restored);
    restored.put("early03", "overwritten after the restore").expect("put into a backup block");
    restored.write(batch("restored", "new")).expect("batch");
    assert_verified(&restored);

    pull(&peer, &restored);
    pull(&restored, &peer);
    for db in [&peer, &restored] {
        assert_verified(db);
        for prefix in ["early", "late", "restored"] {
            for i in (0..40).filter(|i| !(prefix == "early" && *i == 9)) {
                assert!(db.get(format!("{prefix}{i:02}")).expect("get").is_some(), "{prefix}{i:02} lost");
            }
        }
        assert_eq!(db.get("early09").expect("get"), None, "the original's delete");
        assert_eq!(db.get("early07").expect("get").as_deref(), Some(&b"overwritten by the original"[..]));
        assert_eq!(db.get("early03").expect("get").as_deref(), Some(&b"overwritten after the restore"[..]));
    }
    assert_eq!(all_records(&peer), all_records(&restored));
    assert_eq!(peer.version_vector(), restored.version_vector());

    drop(restored);
    let reopened = open(dir.path());
    assert_eq!(reopened.node_id(), new_id, "the new id is the store's from now on");
    assert_verified(&reopened);
}

/// A store copied to start a second node, both running: the copy writes
/// under a new id, the original under its own, and a peer linked with
/// both ends up with every write of each, as do they.
#[test]
fn a_copy_running_beside_its_original_loses_nothing() {
    let [dir, copy, peer_dir] = temp_dirs();
    let id = closed_store(dir.path(), batch("shared", "before the copy"));
    copy_dir(dir.path(), copy.path());
    let (original, clone, peer) = (open(dir.path()), open(copy.path()), open(peer_dir.path()));
    assert_eq!(original.node_id(), id);
    assert_ne!(clone.node_id(), id);
    for (db, name) in [(&original, "original"), (&clone, "clone")] {
        db.write(batch(name, name)).expect("batch");
        db.put(format!("only-{name}"), name).expect("put");
    }
    for _ in 0..2 {
        pull(&peer, &original);
        pull(&peer, &clone);
        pull(&original, &peer);
        pull(&clone, &peer);
    }
    for db in [&original, &clone, &peer] {
        assert_verified(db);
        for name in ["original", "clone"] {
            assert_eq!(db.get(format!("only-{name}")).expect("get").as_deref(), Some(name.as_bytes()));
            assert_eq!(db.get(format!("{name}39")).expect("get").as_deref(), Some(name.as_bytes()));
        }
        assert_eq!(all_records(db), all_records(&peer));
    }
}

/// A copy whose own writes fill more change-log blocks than one batch
/// splits: after the open every block is split into single entries, the
/// store verifies, and its vector covers the old id up to its last write.
#[test]
fn a_large_copy_splits_all_its_blocks() {
    let [dir, copy] = temp_dirs();
    let (id, last) = {
        let a = open(dir.path());
        for round in 0..100 {
            let mut b = Batch::new();
            for i in 0..1000 {
                b.put(format!("k{round:03}-{i:03}"), "v");
            }
            a.write(b).expect("batch");
        }
        (a.node_id(), a.version_vector().get(a.node_id()))
    };
    copy_dir(dir.path(), copy.path());
    let c = open(copy.path());
    assert_ne!(c.node_id(), id);
    assert_eq!(c.version_vector().get(id), last);
    assert_verified(&c);
    c.put("k050-500", "overwritten").expect("put");
    assert_verified(&c);
    assert_eq!(all_records(&c).len(), 100_000);
}

/// Restoring only the engine directory of a backup (the marker file stays)
/// is a copy too: the store takes a new id and the original's later writes
/// from a peer.
#[test]
fn restoring_only_the_engine_directory_takes_a_new_id() {
    let [dir, backup, peer_dir] = temp_dirs();
    let id = closed_store(dir.path(), batch("early", "v"));
    copy_dir(dir.path(), backup.path());
    let peer = open(peer_dir.path());
    {
        let original = open(dir.path());
        original.write(batch("late", "original")).expect("batch");
        pull(&peer, &original);
    }
    let engine = dir.path().join("engine");
    std::fs::remove_dir_all(&engine).expect("remove engine");
    copy_dir(&backup.path().join("engine"), &engine);

    let restored = open(dir.path());
    assert_ne!(restored.node_id(), id, "the restored engine kept the original's id");
    assert_eq!(restored.get("late00").expect("get"), None, "the backup's data");
    restored.put("after", "restore").expect("put");
    pull(&restored, &peer);
    pull(&peer, &restored);
    assert_eq!(restored.get("late39").expect("get").as_deref(), Some(&b"original"[..]));
    assert_eq!(all_records(&peer), all_records(&restored));
    assert_verified(&restored);
}

/// `rm -rf` and then `cp -a` of the backup: the file system may give the
/// new marker file the inode number the old one just freed (ext4 does), but
/// not its birth time, so the copy is still told apart.
#[cfg(target_os = "linux")]
#[test]
fn a_backup_restored_with_cp_a_over_a_removed_directory_is_detected() {
    let [parent] = temp_dirs();
    let (dir, backup) = (parent.path().join("data"), parent.path().join("backup"));
    let id = {
        let a = open(&dir);
        a.put("k", "v").expect("put");
        a.node_id()
    };
    let cp = |from: &Path, to: &Path| {
        let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
        assert!(status.success(), "cp -a failed");
    };
    cp(&dir, &backup);
    std::fs::remove_dir_all(&dir).expect("remove");
    cp(&backup, &dir);
    assert_ne!(open(&dir).node_id(), id, "the restored copy kept the original's id");
}

/// Copies `backup` onto the live directory `dir` the way `rsync -a
/// --delete` does: a file whose size and modification time match is left
/// alone, any other is written to a temporary file renamed over it,
/// directories stay, and files the backup lacks are removed.
#[cfg(target_os = "linux")]
fn rsync_onto(backup: &Path, dir: &Path) {
    for entry in std::fs::read_dir(backup).expect("read_dir") {
        let (entry, target) = {
            let entry = entry.expect("entry");
            let target = dir.join(entry.file_name());
            (entry, target)
        };
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            rsync_onto(&entry.path(), &target);
            continue;
        }
        let same = std::fs::metadata(&target)
            .is_ok_and(|t| t.len() == meta.len() && t.modified().ok() == meta.modified().ok());
        if !same {
            let tmp = dir.join(".rsync-tmp");
            std::fs::copy(entry.path(), &tmp).expect("copy");
            std::fs::rename(&tmp, &target).expect("rename");
        }
    }
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        if !backup.join(entry.file_name()).exists() {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).expect("remove");
            } else {
                std::fs::remove_file(path).expect("remove");
            }
        }
    }
}

/// A backup (`cp -a` of the closed store) restored by `rsync` onto the live
/// directory after the original was opened again: the directories stay and
/// unchanged files are skipped, but every open writes the marker afresh, so
/// the backup's marker replaces it and the copy is told apart.
#[cfg(target_os = "linux")]
#[test]
fn a_backup_rsynced_onto_the_live_directory_is_detected() {
    let [parent, peer_dir] = temp_dirs();
    let (dir, backup) = (parent.path().join("data"), parent.path().join("backup"));
    let id = closed_store(&dir, batch("early", "v"));
    let status = std::process::Command::new("cp").arg("-a").arg(&dir).arg(&backup).status().expect("run cp");
    assert!(status.success());
    let peer = open(peer_dir.path());
    {
        let original = open(&dir);
        assert_eq!(original.node_id(), id);
        original.write(batch("late", "original")).expect("batch");
        pull(&peer, &original);
    }
    rsync_onto(&backup, &dir);
    let restored = open(&dir);
    assert_ne!(restored.node_id(), id, "the rsynced backup kept the original's id");
    assert_eq!(restored.get("late00").expect("get"), None, "the backup's data");
    pull(&restored, &peer);
    assert_eq!(all_records(&peer), all_records(&restored));
}

/// The marker an open replaced does not pass for the store's own when it is
/// put back (as a hard-linked backup would bring it): only the marker the
/// last open wrote does.
#[cfg(unix)]
#[test]
fn a_replaced_marker_put_back_is_a_copy() {
    let [dir] = temp_dirs();
    let id = closed_store(dir.path(), batch("k", "v"));
    let (marker, kept) = (dir.path().join("MESHKV"), dir.path().join("MESHKV.kept"));
    std::fs::hard_link(&marker, &kept).expect("link");
    assert_eq!(open(dir.path()).node_id(), id, "a reopen in place keeps the id");
    std::fs::rename(&kept, &marker).expect("put the old marker back");
    assert_ne!(open(dir.path()).node_id(), id, "an old marker passed for the current one");
}

/// An open cut off after recording its new marker but before renaming it
/// over the old one leaves the old marker and `MESHKV.tmp`: the next open
/// knows both and keeps the id.
#[cfg(unix)]
#[test]
fn an_open_cut_off_before_renaming_its_marker_is_no_copy() {
    let [dir] = temp_dirs();
    let id = closed_store(dir.path(), batch("k", "v"));
    let (marker, kept, tmp) =
        (dir.path().join("MESHKV"), dir.path().join("MESHKV.kept"), dir.path().join("MESHKV.tmp"));
    std::fs::hard_link(&marker, &kept).expect("link");
    drop(open(dir.path()));
    // The state that open would have left, cut off before its rename.
    std::fs::rename(&marker, &tmp).expect("the new marker back to its temporary name");
    std::fs::rename(&kept, &marker).expect("the old marker back");
    let db = open(dir.path());
    assert_eq!(db.node_id(), id, "taken for a copy");
    assert_eq!(db.get("k00").expect("get").as_deref(), Some(&b"v"[..]));
}
