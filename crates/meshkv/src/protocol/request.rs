//! The client vocabulary: requests a remote client sends over a connection
//! whose `Hello` has [`Role::Client`](super::Role::Client), and the replies.

use crate::storage::{Entry, KeyRange, ScanOptions};
use crate::version::{Dot, NodeId, VersionVector};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One operation of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    /// Store a value.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

/// Keys of one `GetMany`, or operations of one `Write`, at most. Decoding
/// refuses more: each costs the node far more memory decoded than the few
/// bytes it takes on the wire, so the frame limit alone would not bound it.
pub const MAX_REQUEST_ITEMS: usize = 1 << 16;

/// Decodes a list of at most [`MAX_REQUEST_ITEMS`] items.
fn bounded<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "at most {MAX_REQUEST_ITEMS} items")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > MAX_REQUEST_ITEMS {
                return Err(serde::de::Error::invalid_length(hint, &self));
            }
            let mut out = Vec::with_capacity(hint);
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX_REQUEST_ITEMS {
                    return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// The value of one key.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The values of several keys, from one snapshot.
    GetMany {
        /// The keys (at most [`MAX_REQUEST_ITEMS`]).
        #[serde(deserialize_with = "bounded")]
        keys: Vec<serde_bytes::ByteBuf>,
    },
    /// Atomic puts and deletes (a single put or delete is a batch of one).
    Write {
        /// The operations (at most [`MAX_REQUEST_ITEMS`]).
        #[serde(deserialize_with = "bounded")]
        ops: Vec<BatchOp>,
    },
    /// Opens a cursor and returns its first chunk.
    Scan {
        /// What to iterate.
        options: ScanOptions,
        /// Entries per chunk.
        chunk: u32,
    },
    /// The next chunk of an open cursor.
    ScanMore {
        /// The cursor.
        cursor: u64,
    },
    /// Closes a cursor early.
    ScanClose {
        /// The cursor.
        cursor: u64,
    },
    /// Streams changes within `range` as [`Message::Watch`](super::Message::Watch) events.
    Watch {
        /// Which keys.
        range: KeyRange,
    },
    /// The node's status.
    Status,
    /// Stops a watch (unknown ids are ignored).
    Unwatch {
        /// The id from [`Response::Watching`].
        watch: u64,
    },
}

impl Request {
    /// Whether the request changes data (refused on a read-only listener,
    /// remembered for at-most-once retries).
    pub fn is_write(&self) -> bool {
        matches!(self, Request::Write { .. })
    }

    /// Keys or operations it carries, for those that carry a list.
    pub fn items(&self) -> usize {
        match self {
            Request::GetMany { keys } => keys.len(),
            Request::Write { ops } => ops.len(),
            _ => 0,
        }
    }
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The value of a `Get`.
    Value(Option<serde_bytes::ByteBuf>),
    /// The values of a `GetMany`, in request order.
    Values(Vec<Option<serde_bytes::ByteBuf>>),
    /// A `Write` was applied; its last dot.
    Written(Option<Dot>),
    /// A chunk of a scan.
    Chunk {
        /// The cursor to ask for more with (meaningless once `done`).
        cursor: u64,
        /// The entries.
        entries: Vec<Entry>,
        /// No more entries follow.
        done: bool,
    },
    /// A watch was started; events carry this id.
    Watching {
        /// The watch id.
        watch: u64,
    },
    /// The node's status.
    Status(Status),
    /// Done, nothing to report.
    Ok,
}

/// A node's status as reported to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node's id.
    pub node_id: NodeId,
    /// Its cluster name.
    pub cluster: String,
    /// Where it listens.
    pub listen: Option<String>,
    /// Its version vector.
    pub version_vector: VersionVector,
    /// Live keys (tombstones excluded), counted from a snapshot.
    pub keys: u64,
    /// Conflicts settled since start.
    pub conflicts: u64,
    /// Its peers.
    pub peers: Vec<PeerInfo>,
}

/// One peer in a [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Address.
    pub addr: String,
    /// Node id, once known.
    pub node_id: Option<NodeId>,
    /// `connecting`, `connected` (catching up) or `live`.
    pub state: String,
    /// Writes this node covers that the peer is not known to cover
    /// (0 once the link is live and idle).
    pub lag: u64,
    /// While a catch-up from this peer runs: records applied so far and an
    /// upper bound of the total.
    pub sync: Option<(u64, u64)>,
}

/// Stable error codes a client can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The key does not exist (used by tools; `Get` returns `None` instead).
    NotFound,
    /// The listener is read-only.
    ReadOnly,
    /// A validation hook refused the write; the message is the hook's.
    Rejected,
    /// The request was malformed or exceeded a limit.
    BadRequest,
    /// The connection was lost and the request was not retried (retry
    /// off, or a write sent to a node that restarted before answering), or
    /// no reply came within the request timeout: a write may or may not
    /// have been applied.
    ConnectionLost,
    /// The client is not allowed in.
    Unauthorized,
    /// The node failed (storage error); nothing was applied.
    Internal,
}

impl ErrorCode {
    /// The code's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not-found",
            ErrorCode::ReadOnly => "read-only",
            ErrorCode::Rejected => "rejected",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::ConnectionLost => "connection-lost",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct RemoteError {
    /// The stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl RemoteError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError { code, message: message.into() }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}
