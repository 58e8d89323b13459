//! Whether a store's directory is the one its node id was given to.
//!
//! A copy of a data directory (a backup restored with `cp`, `tar` or
//! `rsync`, a clone made to start another node) that went on writing under
//! the original's id would issue dots the original issued too, and its
//! vector would claim the original's later writes it never received
//! (docs/ALGORITHM.md §10). Copying creates new files, so the store records
//! the inode number and birth time of its engine directory and of its marker
//! file, which every open writes afresh; an open that finds either changed
//! takes a new node id: the original's writes become those of a foreign
//! origin this store holds up to where the copy was taken, and its peers
//! send it the rest. Copies that keep those files (an in-place overwrite, a
//! block-level image, a rolled-back VM or file-system snapshot) are not
//! detected.

use super::changelog;
use super::db::{marker_tmp, rename_marker, write_marker, ENGINE_DIR, MARKER_FILE};
use super::error::{Error, Result};
use super::keys;
use super::options::Options;
use crate::version::NodeId;
use fjall::{Database, Keyspace, OwnedWriteBatch, PersistMode};
use std::path::Path;

/// Change-log writes, and their bytes, per batch while a copy's blocks are
/// split.
const SPLIT_BATCH_OPS: usize = 1 << 16;
const SPLIT_BATCH_BYTES: usize = 64 << 20;

/// What tells a file apart from a copy of it: its inode number and birth
/// time (0 where the file system does not keep one). Copying makes a new
/// file, and a file system may reuse a freed inode number for it, but not
/// its birth time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    ino: u64,
    born_ns: u64,
}

impl FileIdentity {
    fn of(file: &Path) -> Result<Option<FileIdentity>> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(file)
                .map_err(|source| Error::Io { context: format!("cannot read {}", file.display()), source })?;
            let born_ns = meta
                .created()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            Ok(Some(FileIdentity { ino: meta.ino(), born_ns }))
        }
        #[cfg(not(unix))]
        {
            let _ = file;
            Ok(None)
        }
    }

    /// Whether `self` (recorded) may be `now`: a birth time either side
    /// lacks is not compared.
    fn same_file(self, now: FileIdentity) -> bool {
        self.ino == now.ino && (self.born_ns == 0 || now.born_ns == 0 || self.born_ns == now.born_ns)
    }
}

/// The identities of the engine directory and of the marker file (the
/// new marker, where a first open was cut off before renaming it).
fn dir_identity(path: &Path) -> Result<Option<[FileIdentity; 2]>> {
    let engine = FileIdentity::of(&path.join(ENGINE_DIR))?;
    let marker = path.join(MARKER_FILE);
    let marker = FileIdentity::of(&if marker.exists() { marker } else { marker_tmp(path) })?;
    Ok(engine.zip(marker).map(|(e, m)| [e, m]))
}

/// What `meta` holds: the engine directory's identity, then those the
/// marker may have (the one written by the last open, and while an open
/// replaces it, the next one too).
fn encode(ids: &[FileIdentity]) -> Vec<u8> {
    ids.iter().flat_map(|f| [f.ino, f.born_ns]).flat_map(u64::to_be_bytes).collect()
}

fn decode(v: &[u8]) -> Option<(FileIdentity, Vec<FileIdentity>)> {
    if !matches!(v.len(), 32 | 48) {
        return None;
    }
    let n: Vec<u64> = v.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default())).collect();
    let mut ids = n.chunks_exact(2).map(|p| FileIdentity { ino: p[0], born_ns: p[1] });
    let engine = ids.next()?;
    Some((engine, ids.collect()))
}

/// Writes the marker afresh (a new file renamed over the old one) and
/// records its identity, first as the next one beside the current, so an
/// open cut off anywhere in between finds one it knows. A marker replaced
/// since the store last wrote it (say by `rsync` restoring a backup onto
/// the live directory) then reads as a copy.
pub(crate) fn renew(path: &Path, engine: &Database, meta: &Keyspace) -> Result<()> {
    let tmp = marker_tmp(path);
    write_marker(path, &tmp)?;
    let marker = path.join(MARKER_FILE);
    let current = if marker.exists() { FileIdentity::of(&marker)? } else { None };
    if let (Some(eng), Some(next)) = (FileIdentity::of(&path.join(ENGINE_DIR))?, FileIdentity::of(&tmp)?) {
        let ids: Vec<FileIdentity> = std::iter::once(eng).chain(current).chain([next]).collect();
        let mut batch = OwnedWriteBatch::with_capacity(engine.clone(), 1).durability(Some(PersistMode::SyncData));
        batch.insert(meta, keys::META_DIR_IDENTITY, encode(&ids));
        batch.commit()?;
    }
    rename_marker(path, &tmp)
}

/// The node id this open writes under: `id`, or a new one (`requested` if
/// given) if the directory is a copy of the store `id` was given to and
/// `opts.new_id_for_copies` is set.
pub(crate) fn check(
    path: &Path,
    engine: &Database,
    (meta, log): (&Keyspace, &Keyspace),
    id: NodeId,
    opts: &Options,
) -> Result<NodeId> {
    let corrupt = |detail: &str| Error::Corrupt { path: path.to_path_buf(), detail: detail.into() };
    let Some([engine_now, marker_now]) = dir_identity(path)? else { return Ok(id) };
    let (engine_was, markers) = match meta.get(keys::META_DIR_IDENTITY)? {
        // Created before stores recorded it: nothing to compare yet.
        None => return Ok(id),
        Some(v) => decode(&v).ok_or_else(|| corrupt("meta key \"dir_identity\" is malformed"))?,
    };
    let marker_known = match markers.split_last() {
        Some((last, earlier)) => {
            let tmp = marker_tmp(path);
            marker_now.same_file(*last)
                // An open cut off between recording the next marker and
                // renaming it over this one: the next is still the new file.
                || (earlier.iter().any(|m| m.same_file(marker_now))
                    && tmp.exists()
                    && FileIdentity::of(&tmp)?.is_some_and(|t| t.same_file(*last)))
        }
        None => false,
    };
    if engine_was.same_file(engine_now) && marker_known {
        return Ok(id);
    }
    if !opts.new_id_for_copies {
        tracing::warn!(path = %path.display(), node_id = %id, "the data directory is a copy; keeping its node id as configured");
        return Ok(id);
    }
    take_new_id(path, engine, (meta, log), id, opts.new_node_id, [engine_now, marker_now])
}

/// Makes the copy's store write under a new id (`requested` if given) and
/// records `now` as its identity; returns the new id.
fn take_new_id(
    path: &Path,
    engine: &Database,
    (meta, log): (&Keyspace, &Keyspace),
    id: NodeId,
    requested: Option<NodeId>,
    now: [FileIdentity; 2],
) -> Result<NodeId> {
    let corrupt = |detail: &str| Error::Corrupt { path: path.to_path_buf(), detail: detail.into() };
    let new = match requested.filter(|r| r.0 != 0 && *r != id) {
        Some(requested) => requested,
        None => loop {
            let candidate = NodeId::random();
            if candidate != id {
                break candidate;
            }
        },
    };
    let new_batch = || OwnedWriteBatch::with_capacity(engine.clone(), 64).durability(Some(PersistMode::SyncData));
    // Own dots may be grouped in blocks; a foreign origin's never are. The
    // blocks are split in bounded batches: until the last batch below
    // records the new identity, every open redoes this, and skips what an
    // interrupted one split already.
    let (mut batch, mut ops, mut bytes, mut last) = (new_batch(), 0, 0, 0);
    for guard in log.range(changelog::range(id, 0)) {
        let (k, v) = guard.into_inner()?;
        let dots = changelog::decode_entry(&k, &v).ok_or_else(|| corrupt("malformed change-log entry"))?;
        last = dots.last().map_or(last, |(d, _)| d.seq);
        if k.len() == keys::LOG_KEY_LEN {
            continue;
        }
        batch.remove(log, k.to_vec());
        ops += 1 + dots.len();
        for (dot, user_key) in dots {
            bytes += keys::LOG_KEY_LEN + user_key.len();
            batch.insert(log, keys::log_key(dot), user_key.to_vec());
        }
        if ops >= SPLIT_BATCH_OPS || bytes >= SPLIT_BATCH_BYTES {
            std::mem::replace(&mut batch, new_batch()).commit()?;
            (ops, bytes) = (0, 0);
        }
    }
    // Local commits do not store the own vector entry (storage/db.rs); a
    // foreign origin's is read from `meta` alone.
    let stored = match meta.get(keys::vv_key(id))? {
        None => 0,
        Some(v) => keys::parse_u64(&v).ok_or_else(|| corrupt("malformed version-vector entry"))?,
    };
    batch.insert(meta, keys::vv_key(id), keys::u64_value(stored.max(last)).to_vec());
    batch.insert(meta, keys::META_NODE_ID, keys::u64_value(new.0).to_vec());
    batch.remove(meta, keys::META_SEQ_RESERVED);
    batch.insert(meta, keys::META_DIR_IDENTITY, encode(&now));
    batch.commit()?;
    tracing::warn!(
        path = %path.display(),
        old = %id,
        new = %new,
        "the data directory is a copy of node {id}'s (a restored backup or a clone): it now writes as node {new}, \
         and takes node {id}'s later writes from its peers like any other's (docs/ALGORITHM.md §10)"
    );
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_birth_times_compare_only_when_both_are_known() {
        let (e, m1, m2) = (
            FileIdentity { ino: 7, born_ns: 1_700_000_000_123_456_789 },
            FileIdentity { ino: 9, born_ns: 0 },
            FileIdentity { ino: 11, born_ns: 3 },
        );
        assert_eq!(decode(&encode(&[e, m1])), Some((e, vec![m1])));
        assert_eq!(decode(&encode(&[e, m1, m2])), Some((e, vec![m1, m2])));
        assert_eq!(decode(&encode(&[e, m1])[..31]), None);
        assert_eq!(decode(&encode(&[e])), None);
        let f = FileIdentity { ino: 7, born_ns: 5 };
        assert!(f.same_file(f));
        assert!(f.same_file(FileIdentity { ino: 7, born_ns: 0 }));
        assert!(!f.same_file(FileIdentity { ino: 7, born_ns: 6 }), "a reused inode number");
        assert!(!f.same_file(FileIdentity { ino: 8, born_ns: 5 }));
    }
}
