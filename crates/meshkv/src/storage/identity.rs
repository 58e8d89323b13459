//! Whether a store's directory is the one its node id was given to.
//!
//! A copy of a data directory (a backup restored with `cp`, `tar` or
//! `rsync`, a clone made to start another node) that went on writing under
//! the original's id would issue dots the original issued too, and its
//! vector would claim the original's later writes it never received
//! (docs/ALGORITHM.md §10). Copying creates new files, so the store records
//! the inode of its marker file, and an open that finds another one takes a
//! new node id: the original's writes become those of a foreign origin this
//! store holds up to where the copy was taken, and its peers send it the
//! rest. A copy that keeps inode numbers (a block-level image, a rolled-back
//! VM or filesystem snapshot) is not detected.

use super::changelog;
use super::db::MARKER_FILE;
use super::error::{Error, Result};
use super::keys;
use crate::version::NodeId;
use fjall::{Database, Keyspace, OwnedWriteBatch, PersistMode};
use std::path::Path;

/// Change-log writes per batch while a copy's blocks are split.
const SPLIT_BATCH_OPS: usize = 1 << 16;

/// The marker file's inode number, on platforms that have them.
fn marker_inode(path: &Path) -> Result<Option<u64>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path.join(MARKER_FILE)).map_err(|source| Error::Io {
            context: format!("cannot read {MARKER_FILE} in {}", path.display()),
            source,
        })?;
        Ok(Some(meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

/// Records the marker file's inode as the store's own (after the store
/// was created, or its marker rewritten).
pub(crate) fn record(path: &Path, engine: &Database, meta: &Keyspace) -> Result<()> {
    let Some(ino) = marker_inode(path)? else { return Ok(()) };
    let mut batch = OwnedWriteBatch::with_capacity(engine.clone(), 1).durability(Some(PersistMode::SyncData));
    batch.insert(meta, keys::META_MARKER_INODE, keys::u64_value(ino).to_vec());
    batch.commit()?;
    Ok(())
}

/// The node id this open writes under: `id`, or a new one if the directory
/// is a copy of the store `id` was given to and `new_id_for_copies` is set.
pub(crate) fn check(
    path: &Path,
    engine: &Database,
    (meta, log): (&Keyspace, &Keyspace),
    id: NodeId,
    new_id_for_copies: bool,
) -> Result<NodeId> {
    let Some(ino) = marker_inode(path)? else { return Ok(id) };
    let recorded = match meta.get(keys::META_MARKER_INODE)? {
        // Created before stores recorded it: nothing to compare yet.
        None => return record(path, engine, meta).map(|()| id),
        Some(v) => keys::parse_u64(&v).ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            detail: "meta key \"marker_inode\" is malformed".into(),
        })?,
    };
    if recorded == ino {
        return Ok(id);
    }
    if !new_id_for_copies {
        tracing::warn!(path = %path.display(), node_id = %id, "the data directory is a copy; keeping its node id as configured");
        return record(path, engine, meta).map(|()| id);
    }
    let new = loop {
        let candidate = NodeId::random();
        if candidate != id {
            break candidate;
        }
    };
    let corrupt = |detail: &str| Error::Corrupt { path: path.to_path_buf(), detail: detail.into() };
    let new_batch = || OwnedWriteBatch::with_capacity(engine.clone(), 64).durability(Some(PersistMode::SyncData));
    // Own dots may be grouped in blocks; a foreign origin's never are. The
    // blocks are split in bounded batches: until the last batch below
    // records the new inode, every open redoes this, and skips what an
    // interrupted one split already.
    let (mut batch, mut ops, mut last) = (new_batch(), 0, 0);
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
            batch.insert(log, keys::log_key(dot), user_key.to_vec());
        }
        if ops >= SPLIT_BATCH_OPS {
            std::mem::replace(&mut batch, new_batch()).commit()?;
            ops = 0;
        }
    }
    // Local commits do not store the own vector entry (storage/db.rs); a
    // foreign origin's is read from `meta` alone.
    let stored = meta.get(keys::vv_key(id))?.and_then(|v| keys::parse_u64(&v)).unwrap_or(0);
    batch.insert(meta, keys::vv_key(id), keys::u64_value(stored.max(last)).to_vec());
    batch.insert(meta, keys::META_NODE_ID, keys::u64_value(new.0).to_vec());
    batch.remove(meta, keys::META_SEQ_RESERVED);
    batch.insert(meta, keys::META_MARKER_INODE, keys::u64_value(ino).to_vec());
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
