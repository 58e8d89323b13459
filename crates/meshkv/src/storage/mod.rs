//! The local store: records, the compacted change log, version vectors,
//! the merge and the change feed, on the fjall LSM engine.

mod apply;
mod changelog;
mod db;
mod encoded;
mod error;
mod feed;
mod filter;
mod identity;
mod ingest;
mod keys;
mod log;
mod merge;
mod options;
mod pending;
mod policy;
mod range;
mod read;
mod record;
mod verify;
mod write;

pub use apply::{ApplyContext, ApplyReport};
pub use db::Db;
pub use encoded::EncodedRecord;
pub use error::{Error, Result};
pub use feed::{Change, Commit, Conflict, ConflictEvent, ConflictSubscription, FeedError, Source, Subscription};
pub use filter::KeyFilterStats;
pub use log::{ChangesSince, KeySkip, Position, ResumePoint};
pub use options::{Durability, Options, KEY_LEN_CEILING, VALUE_LEN_CEILING};
pub use policy::{Choice, ConflictPolicy, ResolverFn};
pub use range::KeyRange;
pub use read::{Entry, Scan, ScanOptions, Snapshot};
pub use record::{Record, Version};
pub use verify::IntegrityReport;
pub use write::Batch;

impl Db {
    /// A live stream of every change to keys in `range`, local or
    /// replicated, starting now.
    pub fn subscribe(&self, range: KeyRange) -> Subscription {
        Subscription::new(self.inner.feed.subscribe(), range)
    }

    /// A live stream of the conflicts that merges settle from now on
    /// (the same ones the change feed marks in [`Change::conflict`]).
    pub fn subscribe_conflicts(&self) -> ConflictSubscription {
        ConflictSubscription::new(self.inner.conflict_feed.subscribe())
    }
}
