//! Protocol messages: the versioned vocabulary two nodes speak.

use super::request::{RemoteError, Request, Response};
use crate::storage::{EncodedRecord, KeySkip, Position, ResumePoint};
use crate::version::{Dot, NodeId, VersionVector};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::SocketAddr;

/// Magic bytes that open every handshake.
pub const MAGIC: [u8; 4] = *b"MKV1";
/// Protocol version spoken by this build. 2: key-order catch-ups
/// ([`CatchUpOrder`]) and typed resume points. 3: records in their storage
/// encoding ([`Item::record`]). 4: peer exchange ([`Message::Peers`]). 5: clients
/// stop watches ([`Request::Unwatch`](super::request::Request::Unwatch)), and
/// [`Hello::max_frame`]. 6: [`Hello::incarnation`]. 7: a [`Message::Digest`]
/// names the writes its sender holds above its vector.
pub const PROTOCOL_VERSION: u16 = 7;
/// Most addresses one [`Message::Peers`] may carry.
pub const MAX_SHARED_PEERS: usize = 64;
/// Most held writes one [`Message::Digest`] may name.
pub const MAX_HELD_DOTS: usize = 1024;

/// Which way data flows on a link, as seen by the node that configures it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Send and receive.
    #[default]
    Sync,
    /// Only send our data to the peer.
    Push,
    /// Only receive the peer's data.
    Pull,
}

impl Mode {
    /// Whether this side sends its data.
    pub fn sends(self) -> bool {
        matches!(self, Mode::Sync | Mode::Push)
    }

    /// Whether this side accepts the peer's data.
    pub fn receives(self) -> bool {
        matches!(self, Mode::Sync | Mode::Pull)
    }
}

/// What kind of endpoint opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A replicating node.
    Peer,
    /// A remote client (not a replica).
    Client,
}

/// The first message on every connection, in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`MAGIC`].
    pub magic: [u8; 4],
    /// Protocol version of the sender.
    pub version: u16,
    /// Cluster name; nodes of different clusters refuse each other.
    pub cluster: String,
    /// The sender's node id.
    pub node: NodeId,
    /// Replica or client.
    pub role: Role,
    /// What the sender wants on this link.
    pub mode: Mode,
    /// Fingerprint of the conflict policy; must match the peer's.
    pub policy: u64,
    /// Largest frame the sender accepts (0: not stated). A node states
    /// it to clients, which then refuse larger requests themselves.
    pub max_frame: u64,
    /// Random, nonzero, new each time the node starts (0: not stated, as
    /// on peer links and from clients). A client that reconnects to another
    /// incarnation does not re-send the writes it sent before: the node's
    /// memory of their replies is gone (docs/ALGORITHM.md §6).
    pub incarnation: u64,
}

impl Hello {
    /// The `Hello` a side sends a newer version ahead of its refusal (see
    /// [`version_refusal`]): magic and version only, every other field
    /// empty, as the other side was not admitted (it learns no cluster, node
    /// or policy, as with any other refusal).
    pub fn version_only() -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster: String::new(),
            node: NodeId(0),
            role: Role::Peer,
            mode: Mode::Sync,
            policy: 0,
            max_frame: 0,
            incarnation: 0,
        }
    }
}

/// What a side sends, in order, to refuse a `Hello` of protocol version
/// `theirs`: `Close { VersionMismatch }`, whose frame every version with
/// clients decodes alike (the variant and the reason have kept their
/// places since version 1), so an older side learns why. A newer side gets
/// [`Hello::version_only`] ahead of it: every version from this one on
/// reads the version of a `Hello` it cannot decode (the codec's
/// `CodecError::OtherVersion`), so it can name both. An older one could
/// not (a version-5 side finds a version-6 `Hello` malformed and would not
/// read the `Close` behind it).
pub fn version_refusal(theirs: u16) -> Vec<Message> {
    let close = Message::Close { reason: CloseReason::VersionMismatch };
    if theirs > PROTOCOL_VERSION {
        vec![Message::Hello(Hello::version_only()), close]
    } else {
        vec![close]
    }
}

/// One key's record in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The user key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its record at the sender, in the storage encoding: streamed as
    /// stored and stored as received. A record that is not well formed
    /// fails the decoding of the whole message.
    pub record: EncodedRecord,
}

/// How a catch-up stream is ordered (docs/ALGORITHM.md §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatchUpOrder {
    /// Change-log order (origin, then seq): O(difference) reads.
    Log,
    /// Key order: one sequential pass over the sender's data.
    Key {
        /// A resumed key-order stream also skips what the receiver's
        /// [`ResumePoint::Key`] says it holds.
        skip: Option<KeySkip>,
    },
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CloseReason {
    /// Orderly shutdown.
    Shutdown,
    /// The peer is this node itself.
    SelfConnection,
    /// Another connection to the same peer is kept instead.
    Duplicate,
    /// Different cluster name.
    WrongCluster,
    /// Different conflict policy.
    PolicyMismatch,
    /// Unsupported protocol version.
    VersionMismatch,
    /// The peer broke the protocol.
    ProtocolError,
    /// Nothing was heard from the peer for too long.
    Timeout,
    /// The local store failed.
    StorageError,
    /// The node is at its connection limit; try again later.
    Overloaded,
    /// The credentials presented do not allow this (a peer link over a
    /// client secret).
    Unauthorized,
}

/// Every message after the byte-level framing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Handshake; see [`Hello`].
    Hello(Hello),
    /// "This is what I cover; send me what I lack." Sent by a receiving side.
    /// `resume` continues an interrupted catch-up from this sender.
    Digest {
        /// The receiver's version vector.
        vv: VersionVector,
        /// Resume point of an interrupted catch-up, if any.
        resume: Option<ResumePoint>,
        /// Writes the receiver holds as current versions that `vv` does
        /// not cover, ascending, at most [`MAX_HELD_DOTS`] (a longer list
        /// fails decoding before it is allocated). Mostly writes of a lost
        /// origin above one of its writes nobody has, which no vector can
        /// ever cover: the sender leaves out a record whose versions are
        /// all covered by `vv` or named here, so nodes in sync exchange no
        /// records even then (docs/ALGORITHM.md, I6).
        #[serde(deserialize_with = "bounded_dots")]
        held: Vec<Dot>,
    },
    /// Start of a catch-up read from one snapshot of the sender.
    CatchUpStart {
        /// The version vector the catch-up starts from (what the receiver
        /// is assumed to cover).
        since: VersionVector,
        /// The sender's version vector at that snapshot.
        snapshot: VersionVector,
        /// The order of the stream (and what it skips).
        order: CatchUpOrder,
    },
    /// A batch of catch-up records, in the order [`CatchUpStart`](Message::CatchUpStart) named.
    CatchUp {
        /// Batch number, for acknowledgements.
        id: u64,
        /// The records.
        items: Vec<Item>,
        /// Stream position of the last record (the resume point).
        position: Option<Position>,
    },
    /// The catch-up is complete: the receiver now covers `vv`.
    CaughtUp {
        /// Batch number.
        id: u64,
        /// The snapshot's version vector.
        vv: VersionVector,
    },
    /// Live changes committed after the snapshot, with the sender's version
    /// vector after them (a gapless continuation of the catch-up).
    Live {
        /// Batch number.
        id: u64,
        /// The records.
        items: Vec<Item>,
        /// The sender's version vector after these commits; empty for a
        /// part of a commit too large for one batch but its last.
        vv: VersionVector,
    },
    /// The receiver has durably applied every batch up to `id`.
    Ack {
        /// Highest batch number applied.
        id: u64,
    },
    /// Keep-alive.
    Ping,
    /// A client request (client connections only).
    Request {
        /// Unique per client session and never reused, so a retried request
        /// is recognised and applied at most once.
        id: u64,
        /// What is asked.
        request: Request,
    },
    /// The answer to the request with the same id.
    Reply {
        /// The request's id.
        id: u64,
        /// The outcome.
        result: Result<Response, RemoteError>,
    },
    /// A change seen by a client's watch.
    Watch {
        /// The watch id from [`Response::Watching`].
        watch: u64,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Its new value (`None`: deleted).
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
    /// Events of a watch were dropped because the client read too slowly.
    WatchLagged {
        /// The watch id.
        watch: u64,
        /// How many commits were dropped.
        missed: u64,
    },
    /// The sender closes the connection.
    Close {
        /// Why.
        reason: CloseReason,
    },
    /// Peer exchange: where the sender listens and the listen addresses of
    /// the other peers it is linked to (at most [`MAX_SHARED_PEERS`]; a
    /// longer list fails decoding before it is allocated). Sent only by
    /// nodes with peer exchange on.
    Peers {
        /// Where the sender accepts peers (`None`: it only dials). An
        /// unspecified IP (a listener on all interfaces) stands for the IP
        /// the connection comes from.
        listen: Option<SocketAddr>,
        /// Addresses of the sender's other peers.
        #[serde(deserialize_with = "bounded_addrs")]
        known: Vec<SocketAddr>,
    },
}

impl Message {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Digest { .. } => "digest",
            Message::CatchUpStart { .. } => "catch-up-start",
            Message::CatchUp { .. } => "catch-up",
            Message::CaughtUp { .. } => "caught-up",
            Message::Live { .. } => "live",
            Message::Ack { .. } => "ack",
            Message::Ping => "ping",
            Message::Request { .. } => "request",
            Message::Reply { .. } => "reply",
            Message::Watch { .. } => "watch",
            Message::WatchLagged { .. } => "watch-lagged",
            Message::Close { .. } => "close",
            Message::Peers { .. } => "peers",
        }
    }
}

/// Decodes at most [`MAX_SHARED_PEERS`] addresses: a longer list is refused
/// from its length prefix, before anything is allocated for it.
fn bounded_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    d.deserialize_seq(Bounded::new(MAX_SHARED_PEERS, "socket addresses"))
}

/// Decodes at most [`MAX_HELD_DOTS`] dots, like [`bounded_addrs`].
fn bounded_dots<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Dot>, D::Error> {
    d.deserialize_seq(Bounded::new(MAX_HELD_DOTS, "dots"))
}

/// A sequence visitor that refuses more than `max` elements.
struct Bounded<T> {
    max: usize,
    what: &'static str,
    elements: std::marker::PhantomData<T>,
}

impl<T> Bounded<T> {
    fn new(max: usize, what: &'static str) -> Self {
        Bounded { max, what, elements: std::marker::PhantomData }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "at most {} {}", self.max, self.what)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let too_many = |n: usize| serde::de::Error::invalid_length(n, &self);
        if let Some(n) = seq.size_hint().filter(|n| *n > self.max) {
            return Err(too_many(n));
        }
        let mut out = Vec::new();
        while let Some(element) = seq.next_element()? {
            if out.len() == self.max {
                return Err(too_many(out.len() + 1));
            }
            out.push(element);
        }
        Ok(out)
    }
}
