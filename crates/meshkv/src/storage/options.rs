//! Options for opening a [`Db`](super::Db).

use super::policy::ConflictPolicy;
use crate::clock::{PhysicalClock, SystemClock};
use crate::version::NodeId;
use std::sync::Arc;

/// Hard ceiling for keys: the engine limits keys to 64 KiB and the change log
/// stores the key as a value, so we stay below that.
pub const KEY_LEN_CEILING: usize = 60 * 1024;
/// Hard ceiling for values.
pub const VALUE_LEN_CEILING: usize = 512 * 1024 * 1024;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Written to the operating system before `Ok`: survives a crash of the
    /// process, not a power loss of the machine.
    #[default]
    Buffered,
    /// `fdatasync`ed before `Ok`: survives power loss.
    Sync,
}

/// Options for [`Db::open`](super::Db::open). Start from `Options::default()`.
#[derive(Clone, Debug)]
pub struct Options {
    /// When writes are acknowledged. Default: [`Durability::Buffered`].
    pub durability: Durability,
    /// How concurrent writes are settled. Must be the same on all nodes.
    pub policy: ConflictPolicy,
    /// Largest accepted key, bytes (default 16 KiB, at most [`KEY_LEN_CEILING`]).
    pub max_key_len: usize,
    /// Largest accepted value, bytes (default 16 MiB, at most [`VALUE_LEN_CEILING`]).
    pub max_value_len: usize,
    /// Commits buffered per change-feed subscriber before it is told it
    /// lagged (default 64). Commits hold their records, so this bounds the
    /// feed's memory: a replication batch is up to a few thousand records,
    /// and 256 commits of catch-up batches held about 130 MB on a receiver
    /// whose subscribers fell behind (BENCHMARKS.md, `bench replicate`).
    /// Between 1 and 65 536 (the ring's slots are allocated up front).
    pub feed_capacity: usize,
    /// Block cache size in bytes (default 64 MiB).
    pub cache_bytes: u64,
    /// Memtable size of the data keyspace in bytes (default 32 MiB; the
    /// change log's is half of it, the engine's default is 64 MiB). The
    /// engine keeps up to 4 full memtables per keyspace waiting for their
    /// flush besides the active one, so this bounds the memory a bulk load
    /// or a bootstrap holds in memtables (BENCHMARKS.md, `bench replicate`).
    /// Much smaller memtables cost local write throughput (16 MiB did).
    /// Applies to a store created with these options; an existing store
    /// keeps the sizes it was created with.
    pub memtable_bytes: u64,
    /// Memory budget of the in-memory key filter that lets a write of a new
    /// key skip reading its (absent) old record (default 64 MiB, about 8
    /// bits per key: some 60 million keys). Once it is spent, every write
    /// reads its key first, as with no filter.
    pub key_filter_bytes: usize,
    /// Records an ascending batch of remote records (a gathered key-order
    /// catch-up) must bring to keys holding none before they are written
    /// straight into new engine tables instead of through the memtable
    /// (default 16 384; docs/ALGORITHM.md §5). An ingestion costs several
    /// `fsync`s, so small batches are cheaper through the memtable;
    /// `usize::MAX` never ingests, 0 counts as 1. Stores hold the same
    /// records either way.
    pub ingest_min_records: usize,
    /// Wall clock for the hybrid logical clock.
    pub clock: Arc<dyn PhysicalClock>,
    /// Node id for a store created by this open, or for a copied store
    /// that takes a new one (see `new_id_for_copies`); ignored otherwise,
    /// and where it is the id the copy had. `None` (the default) draws a
    /// random one. Meant for deterministic tests and simulations: two
    /// stores with the same id corrupt each other's replicas.
    pub new_node_id: Option<NodeId>,
    /// Whether an open that finds the directory is a copy of a store (a
    /// restored backup, a clone: its marker file is not the one the store
    /// recorded) gives it a new node id first (default `true`;
    /// docs/ALGORITHM.md §10). Turn it off only where inode numbers change
    /// when nothing was copied (some network and FUSE file systems): a copy
    /// that keeps its id can silently lose writes.
    pub new_id_for_copies: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::default(),
            policy: ConflictPolicy::default(),
            max_key_len: 16 * 1024,
            max_value_len: 16 * 1024 * 1024,
            feed_capacity: 64,
            cache_bytes: 64 * 1024 * 1024,
            memtable_bytes: 32 * 1024 * 1024,
            key_filter_bytes: 64 * 1024 * 1024,
            ingest_min_records: 16 * 1024,
            clock: Arc::new(SystemClock),
            new_node_id: None,
            new_id_for_copies: true,
        }
    }
}

impl std::fmt::Debug for dyn PhysicalClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhysicalClock")
    }
}

impl Options {
    /// Sets the durability.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the conflict policy.
    pub fn policy(mut self, p: ConflictPolicy) -> Self {
        self.policy = p;
        self
    }

    /// Clamps the size limits to their ceilings and the thresholds to their
    /// least meaningful values.
    pub(crate) fn normalized(mut self) -> Self {
        self.max_key_len = self.max_key_len.clamp(1, KEY_LEN_CEILING);
        self.max_value_len = self.max_value_len.min(VALUE_LEN_CEILING);
        // The ring allocates its slots up front.
        self.feed_capacity = self.feed_capacity.clamp(1, 1 << 16);
        self.memtable_bytes = self.memtable_bytes.max(1024 * 1024);
        self.ingest_min_records = self.ingest_min_records.max(1);
        self
    }
}
