//! Errors of the storage layer. Each variant says what state it leaves.

use std::path::PathBuf;

/// Result alias for storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the local store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key exceeded the configured limit. Nothing was written.
    #[error("key of {len} bytes exceeds the limit of {max} bytes (nothing written)")]
    KeyTooLarge {
        /// Length of the offending key.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A value exceeded the configured limit. Nothing was written.
    #[error("value of {len} bytes exceeds the limit of {max} bytes (nothing written)")]
    ValueTooLarge {
        /// Length of the offending value.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The directory is open in another `Db` (this or another process).
    /// Nothing was changed.
    #[error("store at {path} is locked: it is already open in this or another process")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The directory exists but does not hold a meshkv store. It was left
    /// untouched.
    #[error("{path} is not a meshkv store: {reason}")]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// Why it was not recognized.
        reason: String,
    },
    /// The store's files are damaged or from an unknown format version. Nothing
    /// was modified; restore from a replica or a backup.
    #[error("store at {path} is corrupt or unreadable: {detail}")]
    Corrupt {
        /// The data directory.
        path: PathBuf,
        /// What failed to read.
        detail: String,
    },
    /// Records from a peer name one of this node's own writes with a seq no
    /// real history reaches (at or above 2^62). Nothing was applied.
    #[error("a peer's records name our own write seq {seq}, beyond any this node can issue (nothing applied)")]
    ImpossibleOwnSeq {
        /// The offending seq.
        seq: u64,
    },
    /// Applying would make this node's version vector name more origins
    /// than [`MAX_ORIGINS`](crate::version::MAX_ORIGINS) (a hostile or
    /// broken peer inventing them). Nothing was applied.
    #[error("a peer's vector would make this node track {origins} origins, over the limit of {max} (nothing applied)")]
    TooManyOrigins {
        /// Origins the vector would name.
        origins: usize,
        /// The limit.
        max: usize,
    },
    /// A record read back from disk failed to decode. The store is left as
    /// it is; the key is unreadable until repaired by a newer write or replica.
    #[error("record for key {key:?} is corrupt")]
    CorruptRecord {
        /// The affected key.
        key: Vec<u8>,
    },
    /// An I/O error outside the engine (marker file, directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine failed (for example a full disk). The operation
    /// that returned this was not applied, except that the records of a
    /// large catch-up batch written straight into tables may already be
    /// readable: their change-log entries are then added before the next
    /// commit (or at reopen). After a failed journal write the engine
    /// refuses further writes until the store is reopened.
    #[error("storage engine error (operation not applied): {0}")]
    Engine(fjall::Error),
    /// An earlier write failed inside the engine (a full disk, an I/O
    /// error), so it refuses every write from then on; reads still work.
    /// Nothing was written. Reopening the store (restarting the node) once
    /// the cause is fixed recovers everything acknowledged.
    #[error(
        "the store refuses writes since an earlier write failed (full disk or I/O error; operation not \
         applied): restart once the cause is fixed"
    )]
    RefusingWrites,
}

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Poisoned => Error::RefusingWrites,
            e => Error::Engine(e),
        }
    }
}
