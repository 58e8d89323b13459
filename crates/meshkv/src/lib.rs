//! meshkv: an embedded key-value store (an LSM engine in one directory)
//! whose nodes replicate to each other as equals.
//!
//! Layers, bottom up:
//! - [`version`]: node ids, dots and version vectors;
//! - [`clock`]: the hybrid logical clock;
//! - [`storage`]: the local store — records, the compacted change log,
//!   the convergent merge and the change feed;
//! - [`protocol`]: the replication protocol as a state machine without IO —
//!   messages, framing, the sending and receiving halves of a link;
//! - [`secure`]: the cluster secret and the Noise handshake and transport;
//! - [`node`]: the runtime that drives links over TCP — listener, dialer,
//!   peer registry, discovery, client sessions, metrics;
//! - [`client`]: the remote client of a running node.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let db = meshkv::Db::open(dir.path(), meshkv::Options::default()).unwrap();
//! db.put("hello", "world").unwrap();
//! assert_eq!(db.get("hello").unwrap().as_deref(), Some(&b"world"[..]));
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod clock;
mod net;
pub mod node;
pub mod protocol;
pub mod secure;
pub mod storage;
pub mod version;

pub use clock::Hlc;
pub use storage::{
    Batch, ConflictPolicy, Db, Durability, Entry, Error, KeyRange, Options, Record, Result, ScanOptions,
};
pub use version::{Dot, NodeId, VersionVector};
