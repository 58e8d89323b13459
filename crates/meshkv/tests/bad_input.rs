//! Bad input gets a clear error and loses nothing: oversized keys and
//! values, directories that are not stores, corrupt stores, double opens.

use meshkv::{Batch, Db, Error, Options};
use std::fs;

#[test]
fn oversized_key_or_value_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { max_key_len: 8, max_value_len: 16, ..Options::default() };
    let db = Db::open(dir.path(), opts).expect("open");
    let err = db.put(vec![b'k'; 9], "v").expect_err("key too large");
    assert!(matches!(err, Error::KeyTooLarge { len: 9, max: 8 }), "{err}");
    assert!(err.to_string().contains("exceeds the limit"));
    let err = db.put("k", vec![0u8; 17]).expect_err("value too large");
    assert!(matches!(err, Error::ValueTooLarge { len: 17, max: 16 }), "{err}");
    // One bad operation rejects the whole batch.
    let mut b = Batch::new();
    b.put("ok", "fine").put("k", vec![0u8; 17]);
    assert!(db.write(b).is_err());
    assert_eq!(db.get("ok").expect("get"), None);
    assert!(db.version_vector().is_empty(), "no sequence number was consumed visibly");
    db.put("k", "fits").expect("the store keeps working");
}

/// A first open that crashed between writing its marker and renaming it
/// into place left only `MESHKV.tmp`: the directory opens as a new store.
#[test]
fn a_directory_holding_only_a_half_installed_marker_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("MESHKV.tmp"), "meshkv").expect("write");
    let db = Db::open(dir.path(), Options::default()).expect("opens as a new store");
    db.put("k", "v").expect("put");
    drop(db);
    let db = Db::open(dir.path(), Options::default()).expect("reopens");
    assert_eq!(db.get("k").expect("get"), Some(b"v".to_vec()));
}

/// A first open that crashed after creating the engine, before its marker
/// was renamed into place, opens again with the same node id.
#[test]
fn a_first_open_that_crashed_before_its_marker_opens_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = Db::open(dir.path(), Options::default()).expect("open").node_id();
    fs::rename(dir.path().join("MESHKV"), dir.path().join("MESHKV.tmp")).expect("rename");
    let db = Db::open(dir.path(), Options::default()).expect("opens");
    assert_eq!(db.node_id(), id);
    drop(db);
    assert!(dir.path().join("MESHKV").exists(), "the marker is in place now");
}

/// A store whose engine directory is gone is corrupt, not a new empty
/// store with a new node id.
#[test]
fn a_marker_without_its_engine_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    Db::open(dir.path(), Options::default()).expect("open").put("k", "v").expect("put");
    fs::remove_dir_all(dir.path().join("engine")).expect("remove the engine");
    let err = Db::open(dir.path(), Options::default()).err().expect("refused");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(format!("{err:?}").contains("engine directory is missing"), "{err:?}");
}

/// Parts of the engine lost (a partial copy or restore) make the store
/// corrupt; the engine would otherwise create the missing keyspace afresh
/// and the store would open without its data, or under a new node id.
#[test]
fn a_store_missing_an_engine_keyspace_is_corrupt() {
    let damages = ["engine/keyspaces", "engine/keyspaces/1", "engine/keyspaces/2", "engine/keyspaces/3"];
    for damaged in damages {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = || Options { memtable_bytes: 1 << 20, ..Options::default() };
        {
            let db = Db::open(dir.path(), small()).expect("create");
            for i in 0..3000u32 {
                db.put(i.to_be_bytes(), vec![i as u8; 1000]).expect("put");
            }
        }
        fs::remove_dir_all(dir.path().join(damaged)).expect("damage");
        match Db::open(dir.path(), small()) {
            Err(Error::Corrupt { .. }) => {}
            Err(e) => panic!("{damaged} removed: expected Corrupt, got {e}"),
            Ok(db) => panic!(
                "{damaged} removed: opened with {} of 3000 keys",
                db.scan(meshkv::ScanOptions::default()).count()
            ),
        }
    }
}

#[test]
fn a_directory_with_other_files_is_not_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("notes.txt"), "mine").expect("write");
    let err = Db::open(dir.path(), Options::default()).err().expect("refused");
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert!(err.to_string().contains("not a meshkv store"));
    assert_eq!(fs::read(dir.path().join("notes.txt")).expect("untouched"), b"mine");
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1, "nothing was created");
}

#[test]
fn a_path_that_is_a_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f");
    fs::write(&file, "x").expect("write");
    let err = Db::open(&file, Options::default()).err().expect("refused");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()) && msg.contains("is a file, not a directory"), "{msg}");
    assert_eq!(fs::read(&file).expect("read"), b"x", "the file is left as it was");
}

#[test]
fn opening_an_open_store_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    db.put("k", "v").expect("put");
    let err = Db::open(dir.path(), Options::default()).err().expect("second open refused");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked"));
    assert_eq!(db.get("k").expect("first handle unaffected"), Some(b"v".to_vec()));
    drop(db);
    let db = Db::open(dir.path(), Options::default()).expect("open after close");
    assert_eq!(db.get("k").expect("get"), Some(b"v".to_vec()));
}

#[test]
fn a_damaged_marker_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Db::open(dir.path(), Options::default()).expect("create"));
    fs::write(dir.path().join("MESHKV"), "something else").expect("damage");
    let err = Db::open(dir.path(), Options::default()).err().expect("refused");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

/// Overwrites every file of the engine with garbage: opening must fail with
/// an error, never panic or silently start empty.
#[test]
fn garbage_engine_files_are_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Db::open(dir.path(), Options::default()).expect("create");
        for i in 0..100u32 {
            db.put(i.to_be_bytes(), vec![7u8; 100]).expect("put");
        }
    }
    let mut damaged = 0;
    for entry in walk(&dir.path().join("engine")) {
        let len = fs::metadata(&entry).map(|m| m.len()).unwrap_or(0) as usize;
        fs::write(&entry, vec![0xA5u8; len.max(16)]).expect("damage");
        damaged += 1;
    }
    assert!(damaged > 0);
    let outcome = std::panic::catch_unwind(|| Db::open(dir.path(), Options::default()));
    let result = outcome.expect("open must not panic");
    match result {
        Err(Error::Corrupt { detail, .. }) => assert!(!detail.is_empty()),
        Err(other) => panic!("expected a corruption error, got {other}"),
        Ok(db) => panic!("a garbage store opened with {:?}", db.get(0u32.to_be_bytes())),
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("ls").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.file_name().is_some_and(|n| n != "lock") {
            out.push(p);
        }
    }
    out
}
