//! Opening a store: the directory layout, the node id, durable sequence
//! numbers and the state shared by all handles.

use super::changelog;
use super::error::{Error, Result};
use super::feed::{Commit, ConflictEvent, CONFLICT_FEED_CAPACITY};
use super::filter::{FilterScan, KeyFilter, KeyFilterStats};
use super::identity;
use super::keys;
use super::options::Options;
use crate::clock::{Hlc, HybridClock};
use crate::version::{NodeId, Seq, VersionVector};
use fjall::compaction::Leveled;
use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// Name of the marker file that identifies a meshkv data directory.
pub(crate) const MARKER_FILE: &str = "MESHKV";
const MARKER_CONTENT: &str = "meshkv store\nformat 2\n";
/// The marker of stores written before own dots were grouped in change-log
/// blocks. Their log is readable as it is (it only lacks blocks); opening
/// one upgrades the marker, so that older builds refuse the blocks to come.
const MARKER_FORMAT_1: &str = "meshkv store\nformat 1\n";
pub(crate) const ENGINE_DIR: &str = "engine";
/// The engine keyspaces every store has from its first open on.
const KEYSPACES: [&str; 3] = ["data", "log", "meta"];
/// Sequence numbers reserved (durably) ahead of use. After a crash the node
/// continues above the reservation, so no seq is ever handed out twice. Each
/// reservation `fdatasync`s everything buffered, so it is large; a clean
/// close stores the exact last seq instead, so only a crash skips seqs.
pub(crate) const SEQ_RESERVATION: u64 = 1 << 20;
/// How far (in wall milliseconds) the persisted HLC ceiling runs ahead of
/// the clock: a commit writes the ceiling only when the clock passes it,
/// about once a second under steady writes instead of on every commit.
pub(crate) const HLC_RESERVATION_MS: u64 = 1000;

/// A local meshkv store. Cheap to clone; all clones share one open store.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) engine: Database,
    pub(crate) data: Keyspace,
    pub(crate) log: Keyspace,
    pub(crate) meta: Keyspace,
    pub(crate) node_id: NodeId,
    pub(crate) opts: Options,
    pub(crate) writer: Mutex<WriterState>,
    pub(crate) feed: broadcast::Sender<Arc<Commit>>,
    /// Conflicts only (storage/feed.rs, `ConflictSubscription`).
    pub(crate) conflict_feed: broadcast::Sender<Arc<ConflictEvent>>,
    pub(crate) conflicts: AtomicU64,
    /// Local writes (puts and deletes) committed since open.
    pub(crate) local_writes: AtomicU64,
    /// Remote records that changed this store since open.
    pub(crate) remote_applied: AtomicU64,
    /// Own writes up to this seq are known to be on stable storage.
    pub(crate) durable_seq: AtomicU64,
    /// A superset of the keys that hold a record (storage/filter.rs).
    pub(crate) filter: Arc<KeyFilter>,
    /// The open-time scan filling `filter`, joined when the store closes.
    pub(crate) filter_scan: Mutex<Option<FilterScan>>,
    /// Set by [`Db::close_as_if_crashed`]: the last handle's drop skips
    /// what a clean close writes.
    pub(crate) crashed: std::sync::atomic::AtomicBool,
}

/// State only the (single) writer touches, behind `Inner::writer`.
pub(crate) struct WriterState {
    /// Next sequence number for a local write.
    pub next_seq: Seq,
    /// Highest seq durably reserved; `next_seq` must stay at or below it.
    pub reserved: Seq,
    pub clock: HybridClock,
    /// The persisted HLC ceiling: no timestamp above it is on disk, and
    /// the clock restarts above it.
    pub hlc_ceiling: Hlc,
    /// The node's version vector. Remote origins mirror the `vv` meta
    /// keys; this node's own entry is the last seq it committed.
    pub vv: VersionVector,
    /// Number of commits so far in this process (feed ordering).
    pub commit_id: u64,
    /// An ingestion failed after its data tables were registered: the next
    /// commit completes it first (`Inner::finish_failed_ingestion`).
    pub unfinished_ingestion: bool,
    /// Change-log entries of ingested records not written yet.
    pub pending_log: super::pending::PendingLog,
    /// Conflicts counted whose versions the vector does not cover yet.
    pub counted_conflicts: super::merge::CountedConflicts,
}

impl Db {
    /// Opens the store in `path`, creating it (and a new node id) if the
    /// directory is missing or empty.
    ///
    /// Fails with [`Error::NotAStore`] for a non-empty directory that is not a
    /// meshkv store, [`Error::Locked`] if the store is already open, and
    /// [`Error::Corrupt`] if its files cannot be read.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let path = path.as_ref().to_path_buf();
        let opts = opts.normalized();
        let found = prepare_dir(&path)?;
        let engine = open_engine(&path, &opts)?;
        let corrupt = |e: fjall::Error| Error::Corrupt { path: path.clone(), detail: format!("{e:?}") };
        if found != Found::New {
            // The engine would create a missing keyspace afresh: a store
            // whose files were lost would open empty, under a new node id.
            let present = engine.list_keyspace_names();
            if let Some(missing) = KEYSPACES.iter().find(|name| !present.iter().any(|p| p.as_ref() == **name)) {
                return Err(Error::Corrupt {
                    path,
                    detail: format!("the engine's `{missing}` keyspace is missing (files deleted or not copied?)"),
                });
            }
        }
        // The engine stores these sizes with a keyspace when it creates it
        // and uses the stored ones from then on.
        let memtable = |bytes: u64| move || KeyspaceCreateOptions::default().max_memtable_size(bytes);
        // Every put reads the key first; pinning all filter blocks (a few
        // bytes per key) keeps the misses of fresh keys off the block cache.
        let data = engine
            .keyspace("data", || memtable(opts.memtable_bytes)().filter_block_pinning_policy(PinningPolicy::all(true)))
            .map_err(corrupt)?;
        // A bootstrap in key order adds log entries in random seq order, so
        // every run it adds to L0 spans the whole log, and each compaction
        // into L1 rewrites all of it: see `LOG_L0_RUNS`. Its last level, and
        // the tables a bootstrap ingests, have no filters: building one
        // buffers a hash of every key of a table, and the log is read in
        // ranges; a point read of an own block that misses (an overwrite of
        // a key written in a small batch) probes that level's table once.
        let log = engine
            .keyspace("log", || {
                memtable(opts.memtable_bytes / 2)()
                    .compaction_strategy(Arc::new(Leveled::default().with_l0_threshold(LOG_L0_RUNS)))
                    .expect_point_read_hits(true)
            })
            .map_err(corrupt)?;
        let meta = engine.keyspace("meta", KeyspaceCreateOptions::default).map_err(corrupt)?;

        let mut node_id = load_or_create_node_id(&path, &engine, &meta, &data, opts.new_node_id, found == Found::New)?;
        // Also a first open's: one cut off after recording the marker it was
        // about to install left a store, which may have been copied since.
        if found != Found::OlderFormat {
            node_id = identity::check(&path, &engine, (&meta, &log), node_id, &opts)?;
        }
        // Last: a marker always names a store with an engine and an id. It
        // is written in the current format, before any write can add blocks.
        identity::renew(&path, &engine, &meta)?;
        if found == Found::OlderFormat {
            tracing::info!(path = %path.display(), "upgraded the store's format marker to format 2");
        }
        let read_u64 = |k: &[u8]| -> Result<u64> {
            match meta.get(k).map_err(corrupt)? {
                None => Ok(0),
                Some(v) => keys::parse_u64(&v).ok_or_else(|| Error::Corrupt {
                    path: path.clone(),
                    detail: format!("meta key {:?} is malformed", String::from_utf8_lossy(k)),
                }),
            }
        };
        let reserved = read_u64(keys::META_SEQ_RESERVED)?;
        let hlc_floor = Hlc(read_u64(keys::META_HLC)?);
        let mut vv = read_vv(&path, meta.prefix(keys::META_VV_PREFIX))?;
        // Local commits do not write their own `vv` key: the newest own
        // write still in the change log is the last one committed (commits
        // recover as a prefix, and a local write leaves older own entries
        // below its own). A remote write that removes own entries stores the
        // own `vv` key in its batch, so the maximum of both is exact.
        let corrupt_log = |detail: &str| Error::Corrupt { path: path.clone(), detail: detail.into() };
        vv.raise(node_id, changelog::last_seq(&log, node_id, corrupt_log)?);
        let next_seq = vv.get(node_id).max(reserved) + 1;
        // Taken before any write of this open can land: the scan adds what
        // was stored before, writers add what they create.
        let existing = if data.is_empty().map_err(corrupt)? { None } else { Some(data.approximate_len()) };
        let filter = Arc::new(KeyFilter::new(existing, opts.key_filter_bytes));
        let filter_scan = match existing {
            None => None,
            Some(_) if filter.lock().has_given_up() => None,
            Some(_) => Some(
                FilterScan::start(Arc::clone(&filter), engine.snapshot(), data.clone(), keys::user_key)
                    .map_err(|source| Error::Io { context: "cannot start the key filter scan".into(), source })?,
            ),
        };
        let (feed, _) = broadcast::channel(opts.feed_capacity);
        let (conflict_feed, _) = broadcast::channel(CONFLICT_FEED_CAPACITY);
        tracing::debug!(path = %path.display(), %node_id, next_seq, %vv, "opened store");
        let db = Db {
            inner: Arc::new(Inner {
                path,
                engine,
                data,
                log,
                meta,
                node_id,
                writer: Mutex::new(WriterState {
                    next_seq,
                    reserved,
                    clock: HybridClock::new(hlc_floor),
                    hlc_ceiling: hlc_floor,
                    vv,
                    commit_id: 0,
                    unfinished_ingestion: false,
                    pending_log: Default::default(),
                    counted_conflicts: Default::default(),
                }),
                feed,
                conflict_feed,
                conflicts: AtomicU64::new(0),
                local_writes: AtomicU64::new(0),
                remote_applied: AtomicU64::new(0),
                durable_seq: AtomicU64::new(0),
                filter,
                filter_scan: Mutex::new(filter_scan),
                crashed: std::sync::atomic::AtomicBool::new(false),
                opts,
            }),
        };
        db.finish_ingestion()?;
        Ok(db)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the store was opened with (limits already clamped).
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The node's current version vector.
    pub fn version_vector(&self) -> VersionVector {
        self.inner.lock_writer().vv.clone()
    }

    /// What the in-memory key filter holds (see [`KeyFilterStats`]).
    pub fn key_filter_stats(&self) -> KeyFilterStats {
        self.inner.filter.stats()
    }

    /// Waits until the background scan of an existing store has added every
    /// key stored at open to the key filter, or has failed (then the filter
    /// stays incomplete and writes keep reading every key). Until then writes
    /// read every key; nothing else depends on it. Blocks the thread.
    pub fn wait_for_key_filter(&self) {
        if let Some(scan) = self.inner.filter_scan.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            scan.join();
        }
    }

    /// Drops this handle as a process crash would leave the store: once the
    /// last handle is gone, nothing a clean close writes is written (held-back
    /// change-log entries, the exact seq reservation). What was committed
    /// stays, as the OS would keep it. For crash tests.
    #[doc(hidden)]
    pub fn close_as_if_crashed(self) {
        self.inner.crashed.store(true, Ordering::Relaxed);
    }

    /// Forces everything written so far to stable storage (`fdatasync`).
    pub fn sync(&self) -> Result<()> {
        let covered = self.version_vector().get(self.inner.node_id);
        self.inner.engine.persist(PersistMode::SyncData)?;
        self.inner.durable_seq.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// This node's own writes up to this seq are known to be on stable
    /// storage (under [`Durability::Sync`](super::Durability::Sync): all of them).
    pub fn durable_seq(&self) -> u64 {
        if self.inner.opts.durability == super::Durability::Sync {
            return self.version_vector().get(self.inner.node_id);
        }
        self.inner.durable_seq.load(Ordering::Acquire)
    }

    /// Makes sure this node's own writes up to `seq` are on stable storage
    /// (a no-op under [`Durability::Sync`](super::Durability::Sync), where
    /// every write already is). Replication calls it before a write leaves
    /// its origin, so a power loss can never lose a write a peer holds.
    pub fn ensure_durable(&self, seq: u64) -> Result<()> {
        if self.inner.opts.durability == super::Durability::Sync
            || self.inner.durable_seq.load(Ordering::Acquire) >= seq
        {
            return Ok(());
        }
        self.sync()
    }
}

impl Drop for Inner {
    /// A clean close: held-back change-log entries are written (or else the
    /// next open restores them), and the reservation shrinks to the last seq
    /// handed out, so the next open continues right after it instead of
    /// above the block.
    fn drop(&mut self) {
        if self.crashed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.write_held_log(&mut self.lock_writer()) {
            tracing::debug!(error = %e, "could not write held-back change-log entries at close");
        }
        let w = self.writer.get_mut().unwrap_or_else(|p| p.into_inner());
        let last = w.next_seq - 1;
        if last >= w.reserved {
            return;
        }
        let mut b =
            fjall::OwnedWriteBatch::with_capacity(self.engine.clone(), 1).durability(Some(PersistMode::SyncData));
        b.insert(&self.meta, keys::META_SEQ_RESERVED, keys::u64_value(last).to_vec());
        if let Err(e) = b.commit() {
            // The larger reservation stays: the next open skips the unused seqs.
            tracing::debug!(error = %e, "could not store the exact seq reservation at close");
        }
    }
}

impl Inner {
    /// Takes the writer lock. A panic while holding it cannot leave storage
    /// half-written (batches are atomic), so a poisoned lock is recovered.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A corruption error for this store.
    pub(crate) fn corrupt(&self, detail: &str) -> Error {
        Error::Corrupt { path: self.path.clone(), detail: detail.into() }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.opts.clock.now_ms()
    }
}

/// Reads every `vv` meta entry from an iterator over that prefix.
fn read_vv(path: &Path, iter: fjall::Iter) -> Result<VersionVector> {
    let mut vv = VersionVector::new();
    for guard in iter {
        let (k, v) = guard.into_inner()?;
        match (keys::parse_vv_key(&k), keys::parse_u64(&v)) {
            (Some(origin), Some(seq)) => vv.raise(origin, seq),
            _ => {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    detail: "malformed version-vector entry".into(),
                })
            }
        }
    }
    Ok(vv)
}

/// What [`prepare_dir`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    Store,
    /// A store whose marker is of an older format, upgraded once it is locked.
    OlderFormat,
    /// No store yet: the marker is installed once the engine and the node
    /// id exist.
    New,
}

/// Creates the directory, or checks that it holds a store. A first open
/// writes `MESHKV.tmp`, creates the engine and the node id, then renames
/// the marker into place; a directory holding just what a first open that
/// crashed left (the temporary marker, perhaps an engine) is opened as
/// new. A marker without an engine directory is corruption: a new empty
/// store with a new node id would silently replace the lost one.
fn prepare_dir(path: &Path) -> Result<Found> {
    let io = |context: &str| io_error(path, context);
    if path.exists() && !path.is_dir() {
        let source = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it is a file, not a directory");
        return Err(io("cannot use as data directory")(source));
    }
    fs::create_dir_all(path).map_err(io("cannot create data directory"))?;
    let marker = path.join(MARKER_FILE);
    let found = match fs::read(&marker) {
        Ok(content) if content == MARKER_CONTENT.as_bytes() => Found::Store,
        Ok(content) if content == MARKER_FORMAT_1.as_bytes() => Found::OlderFormat,
        Ok(_) => {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{MARKER_FILE} marker has unknown content or format version"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::New,
        Err(e) => return Err(io("cannot read marker in")(e)),
    };
    let engine = path.join(ENGINE_DIR);
    if found != Found::New {
        if !engine.is_dir() {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: format!("the {ENGINE_DIR} directory is missing (deleted or not copied?)"),
            });
        }
        return Ok(found);
    }
    let tmp = marker_tmp(path);
    let started = tmp.exists();
    let mut others = fs::read_dir(path)
        .map_err(io("cannot list data directory"))?
        .filter(|e| e.as_ref().map_or(true, |e| e.path() != tmp && !(started && e.path() == engine)));
    if others.next().is_some() {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: format!("the directory is not empty and has no {MARKER_FILE} marker"),
        });
    }
    write_marker(path, &tmp)?;
    Ok(Found::New)
}

/// Maps an IO error in the data directory `path` to [`Error::Io`].
fn io_error(path: &Path, context: &str) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{context} {}", path.display());
    move |source| Error::Io { context, source }
}

/// Where a new marker is written before it is renamed over the old one.
pub(crate) fn marker_tmp(path: &Path) -> PathBuf {
    path.join(format!("{MARKER_FILE}.tmp"))
}

/// Renames the new marker `tmp` over the old one, durably.
pub(crate) fn rename_marker(path: &Path, tmp: &Path) -> Result<()> {
    let io = |context: &str| io_error(path, context);
    fs::rename(tmp, path.join(MARKER_FILE)).map_err(io("cannot install marker in"))?;
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(io("cannot sync data directory"))
}

/// Writes the current marker's content to `file`, durably.
pub(crate) fn write_marker(path: &Path, file: &Path) -> Result<()> {
    let io = |context: &str| io_error(path, context);
    let mut f = fs::File::create(file).map_err(io("cannot create marker in"))?;
    f.write_all(MARKER_CONTENT.as_bytes()).map_err(io("cannot write marker in"))?;
    f.sync_all().map_err(io("cannot sync marker in"))?;
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(io("cannot sync data directory"))
}

/// Engine threads that flush memtables and compact tables. fjall 3.1 sizes
/// its pool to the core count (at most 4), and with two workers the first
/// one re-queues every compaction request while the other compacts, spinning
/// a core for as long as the compaction runs (fjall PR #323): a fifth of a
/// 2-vCPU receiver's time during a catch-up of 4M entries
/// (BENCHMARKS.md). With four, a request finds an idle worker; idle workers
/// cost nothing.
const ENGINE_WORKERS: usize = 4;

/// L0 runs of the change log that start a compaction (fjall's default: 4).
/// At 16 the log is rewritten a quarter as often during a bootstrap, and
/// stays under the 20 runs at which fjall starts slowing writes. The engine
/// stores the strategy when it creates the keyspace: older stores keep 4.
const LOG_L0_RUNS: u8 = 16;

fn open_engine(path: &Path, opts: &Options) -> Result<Database> {
    let dir = path.join(ENGINE_DIR);
    // The engine can panic on some kinds of damaged files; report those as
    // corruption instead of taking the caller down.
    let cache = opts.cache_bytes;
    let opened = std::panic::catch_unwind(move || {
        Database::builder(&dir).cache_size(cache).worker_threads(ENGINE_WORKERS).open()
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(fjall::Error::Locked)) => Err(Error::Locked { path: path.to_path_buf() }),
        Ok(Err(e)) => {
            Err(Error::Corrupt { path: path.to_path_buf(), detail: format!("storage engine cannot open: {e:?}") })
        }
        Err(_) => Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: "storage engine failed while recovering its files".into(),
        }),
    }
}

fn load_or_create_node_id(
    path: &Path,
    engine: &Database,
    meta: &Keyspace,
    data: &Keyspace,
    requested: Option<NodeId>,
    new_store: bool,
) -> Result<NodeId> {
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    if let Some(v) = meta.get(keys::META_NODE_ID)? {
        return keys::parse_u64(&v)
            .filter(|id| *id != 0)
            .map(NodeId)
            .ok_or_else(|| corrupt("node id is malformed".into()));
    }
    if !data.is_empty()? {
        return Err(corrupt("node id is missing but the store holds data".into()));
    }
    if !new_store {
        // The marker is written after the id: a store that has one had an id.
        return Err(corrupt("node id is missing".into()));
    }
    let id = requested.filter(|id| id.0 != 0).unwrap_or_else(NodeId::random);
    meta.insert(keys::META_NODE_ID, keys::u64_value(id.0))?;
    engine.persist(PersistMode::SyncAll)?;
    tracing::info!(path = %path.display(), node_id = %id, "created new store");
    Ok(id)
}
