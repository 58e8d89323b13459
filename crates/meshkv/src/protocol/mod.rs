//! The replication protocol: messages, framing and the per-connection state
//! machine. Nothing here does IO: the node runtime (over TCP) and the
//! deterministic simulation (over an in-memory network) drive the same code
//! by feeding it messages, feed commits and clock ticks, and sending what it
//! queues.

pub mod announce;
pub mod codec;
mod link;
pub mod message;
mod receiver;
pub mod request;
mod sender;

pub use link::{Link, LinkConfig, LinkError, LinkEvent};
pub use message::{
    version_refusal, CatchUpOrder, CloseReason, Hello, Item, Message, Mode, Role, MAGIC, MAX_HELD_DOTS,
    MAX_SHARED_PEERS, PROTOCOL_VERSION,
};
pub use request::{BatchOp, ErrorCode, PeerInfo, RemoteError, Request, Response, Status, MAX_REQUEST_ITEMS};
