//! The live change feed: every committed change, local or replicated, in
//! commit order. Backed by a bounded broadcast ring, so a slow subscriber is
//! told it lagged instead of blocking writers or growing memory.

use super::encoded::EncodedRecord;
use super::range::KeyRange;
use super::record::Record;
use crate::version::{Dot, NodeId, VersionVector};
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Where a committed change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A write made on this node.
    Local,
    /// A record merged from a peer.
    Remote,
}

/// A detected conflict: concurrent writes to one key and the one that won.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The version reads now return.
    pub winner: Dot,
    /// The concurrent versions that did not win.
    pub losers: Vec<Dot>,
}

/// One key's new state.
#[derive(Clone, Debug)]
pub struct Change {
    /// The user key.
    pub key: Vec<u8>,
    /// Its record after the commit, as encoded if it was at hand, decoded
    /// on first use otherwise: replication forwards the encoding and never
    /// needs the decoded form.
    encoded: Option<EncodedRecord>,
    decoded: OnceLock<Record>,
    /// Set if the change settled concurrent writes.
    pub conflict: Option<Conflict>,
}

impl Change {
    /// A change to `record`; `encoded`, if given, must be its encoding.
    pub(crate) fn new(
        key: Vec<u8>,
        record: Record,
        encoded: Option<EncodedRecord>,
        conflict: Option<Conflict>,
    ) -> Self {
        Change { key, encoded, decoded: OnceLock::from(record), conflict }
    }

    /// A change to the record `encoded`, decoded only if asked for.
    pub(crate) fn encoded(key: Vec<u8>, encoded: EncodedRecord) -> Self {
        Change { key, encoded: Some(encoded), decoded: OnceLock::new(), conflict: None }
    }

    /// The key's record after the commit.
    pub fn record(&self) -> &Record {
        self.decoded.get_or_init(|| match &self.encoded {
            Some(e) => e.decode(),
            None => unreachable!("a change holds its record decoded, encoded or both"),
        })
    }

    /// Dots of the record's current versions.
    pub(crate) fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        let (encoded, decoded) = match &self.encoded {
            Some(e) => (Some(e.dots()), None),
            None => (None, Some(self.record().dots())),
        };
        encoded.into_iter().flatten().chain(decoded.into_iter().flatten())
    }

    /// About how many bytes the key and record take.
    pub(crate) fn approx_len(&self) -> usize {
        self.key.len() + self.encoded.as_ref().map_or_else(|| self.record().encoded_len_hint(), EncodedRecord::len)
    }

    /// The record in its storage encoding.
    pub(crate) fn to_encoded(&self) -> EncodedRecord {
        match &self.encoded {
            Some(e) => e.clone(),
            None => EncodedRecord::from_record(self.record()),
        }
    }
}

/// One atomic commit as published on the feed.
#[derive(Debug)]
pub struct Commit {
    /// Position in this process's commit order (starts at 1 after open).
    pub id: u64,
    /// Local write or merged remote records.
    pub source: Source,
    /// For remote records: the peer they came from, if known.
    pub from: Option<NodeId>,
    /// The changed keys.
    pub changes: Vec<Change>,
    /// The node's version vector right after this commit.
    pub vv: VersionVector,
}

/// Why a subscription yielded no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The subscriber fell behind and `missed` commits were dropped for it.
    /// It keeps receiving newer commits; use `changes_since` to catch up.
    #[error("subscriber lagged: {missed} commits were dropped")]
    Lagged {
        /// Number of commits skipped.
        missed: u64,
    },
    /// The store was dropped.
    #[error("the store is closed")]
    Closed,
}

/// A live stream of changes within a key range. See [`Db::subscribe`](super::Db::subscribe).
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Commit>>,
    range: KeyRange,
    current: Option<(Arc<Commit>, usize)>,
}

impl Subscription {
    pub(crate) fn new(rx: broadcast::Receiver<Arc<Commit>>, range: KeyRange) -> Self {
        Subscription { rx, range, current: None }
    }

    /// Waits for the next change in range.
    pub async fn recv(&mut self) -> Result<Change, FeedError> {
        loop {
            if let Some(c) = self.next_buffered() {
                return Ok(c);
            }
            let commit = self.rx.recv().await.map_err(recv_err)?;
            self.current = Some((commit, 0));
        }
    }

    /// Blocking variant of [`recv`](Self::recv) for non-async callers.
    /// Must not be called from within an async runtime.
    pub fn blocking_recv(&mut self) -> Result<Change, FeedError> {
        loop {
            if let Some(c) = self.next_buffered() {
                return Ok(c);
            }
            let commit = self.rx.blocking_recv().map_err(recv_err)?;
            self.current = Some((commit, 0));
        }
    }

    /// The next change if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<Change>, FeedError> {
        loop {
            if let Some(c) = self.next_buffered() {
                return Ok(Some(c));
            }
            match self.rx.try_recv() {
                Ok(commit) => self.current = Some((commit, 0)),
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Lagged(missed)) => return Err(FeedError::Lagged { missed }),
                Err(TryRecvError::Closed) => return Err(FeedError::Closed),
            }
        }
    }

    /// The next whole commit if one is ready, unfiltered (for replication).
    pub fn try_recv_commit(&mut self) -> Result<Option<Arc<Commit>>, FeedError> {
        self.current = None;
        match self.rx.try_recv() {
            Ok(commit) => Ok(Some(commit)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Lagged(missed)) => Err(FeedError::Lagged { missed }),
            Err(TryRecvError::Closed) => Err(FeedError::Closed),
        }
    }

    /// Waits for the next whole commit, unfiltered (for replication).
    pub async fn recv_commit(&mut self) -> Result<Arc<Commit>, FeedError> {
        self.current = None;
        self.rx.recv().await.map_err(recv_err)
    }

    fn next_buffered(&mut self) -> Option<Change> {
        let (commit, idx) = self.current.as_mut()?;
        while *idx < commit.changes.len() {
            let change = &commit.changes[*idx];
            *idx += 1;
            if self.range.contains(&change.key) {
                return Some(change.clone());
            }
        }
        self.current = None;
        None
    }
}

/// A conflict settled by a merge, as published to
/// [`Db::subscribe_conflicts`](super::Db::subscribe_conflicts).
#[derive(Clone, Debug)]
pub struct ConflictEvent {
    /// The key written concurrently.
    pub key: Vec<u8>,
    /// Which version won and which lost.
    pub conflict: Conflict,
}

/// Conflicts held per conflict subscriber before it is told it lagged.
pub(crate) const CONFLICT_FEED_CAPACITY: usize = 1024;

/// A live stream of the conflicts merges settle, apart from the change
/// feed: a subscriber costs nothing until a conflict happens, and a burst of
/// writes does not make it lag.
pub struct ConflictSubscription {
    rx: broadcast::Receiver<Arc<ConflictEvent>>,
}

impl ConflictSubscription {
    pub(crate) fn new(rx: broadcast::Receiver<Arc<ConflictEvent>>) -> Self {
        ConflictSubscription { rx }
    }

    /// Waits for the next conflict. [`FeedError::Lagged`] counts conflicts
    /// dropped for this subscriber (they are still counted by
    /// [`Db::conflict_count`](super::Db::conflict_count)).
    pub async fn recv(&mut self) -> Result<Arc<ConflictEvent>, FeedError> {
        self.rx.recv().await.map_err(recv_err)
    }
}

fn recv_err(e: RecvError) -> FeedError {
    match e {
        RecvError::Lagged(missed) => FeedError::Lagged { missed },
        RecvError::Closed => FeedError::Closed,
    }
}
