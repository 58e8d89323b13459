//! Key encodings of the three keyspaces.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `data` | `k` ‖ user key (the engine forbids empty keys; users may not) | encoded [`Record`](super::Record) |
//! | `log`  | origin (8 B, big-endian) ‖ seq (8 B, big-endian) | user key |
//! | `meta` | `node_id`, `seq_reserved`, `hlc`, `vv` ‖ origin (8 B BE) | `u64` big-endian |
//! | `meta` | `dir_identity` | inode and birth time (2 × `u64` BE) of the engine directory, then of the marker file, and while an open replaces the marker, of the new one |
//! | `meta` | `resume` ‖ peer (8 B BE) | postcard `ResumePoint` (log-order vector or key-order point) |
//!
//! Big-endian integers make the log sort by origin, then seq, so "what is
//! new from origin `o` after seq `s`" is one range scan.

use super::options::KEY_LEN_CEILING;
use crate::version::{Dot, NodeId};
use std::ops::Bound;

/// Prefix of every data-keyspace key.
const DATA_PREFIX: u8 = b'k';

/// The data-keyspace key of a user key.
pub(crate) fn data_key(user: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(user);
    k
}

/// The data-keyspace key of a user key as an engine slice: one copy, and
/// none on the heap for short keys (the engine stores those inline).
pub(crate) fn data_slice(user: &[u8]) -> fjall::Slice {
    const STACK: usize = 64;
    if user.len() < STACK {
        let mut buf = [0u8; STACK];
        buf[0] = DATA_PREFIX;
        buf[1..=user.len()].copy_from_slice(user);
        fjall::Slice::new(&buf[..=user.len()])
    } else {
        fjall::Slice::from(data_key(user))
    }
}

/// The user key inside a data-keyspace key.
pub(crate) fn user_key(data: &[u8]) -> &[u8] {
    data.get(1..).unwrap_or_default()
}

/// Maps bounds on user keys to bounds on data-keyspace keys.
/// The data-keyspace bounds of user-key bounds. A bound longer than any
/// storable key is cut to one byte past the longest storable key: every
/// storable key compares with the cut bound as with the whole one (their
/// first difference, or the key's end, comes before the cut), and the
/// engine refuses keys past 64 KiB.
pub(crate) fn data_bounds(b: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let map = |b: Bound<Vec<u8>>| b.map(|k| data_key(&k[..k.len().min(KEY_LEN_CEILING + 1)]));
    (map(b.0), map(b.1))
}

/// Whether `key` is too long to be stored (so it holds nothing).
pub(crate) fn unstorable(key: &[u8]) -> bool {
    key.len() > KEY_LEN_CEILING
}

/// Length of an encoded log key.
pub(crate) const LOG_KEY_LEN: usize = 16;

pub(crate) const META_NODE_ID: &[u8] = b"node_id";
pub(crate) const META_SEQ_RESERVED: &[u8] = b"seq_reserved";
pub(crate) const META_HLC: &[u8] = b"hlc";
pub(crate) const META_DIR_IDENTITY: &[u8] = b"dir_identity";
pub(crate) const META_VV_PREFIX: &[u8] = b"vv";
pub(crate) const META_RESUME_PREFIX: &[u8] = b"resume";

/// The change-log key of `dot`.
pub(crate) fn log_key(dot: Dot) -> [u8; LOG_KEY_LEN] {
    let mut k = [0u8; LOG_KEY_LEN];
    k[..8].copy_from_slice(&dot.origin.0.to_be_bytes());
    k[8..].copy_from_slice(&dot.seq.to_be_bytes());
    k
}

/// Parses a change-log key.
pub(crate) fn parse_log_key(k: &[u8]) -> Option<Dot> {
    let k: &[u8; LOG_KEY_LEN] = k.try_into().ok()?;
    let (o, s) = k.split_at(8);
    Some(Dot::new(NodeId(u64::from_be_bytes(o.try_into().ok()?)), u64::from_be_bytes(s.try_into().ok()?)))
}

/// The meta key holding the version-vector entry of `origin`.
pub(crate) fn vv_key(origin: NodeId) -> Vec<u8> {
    let mut k = META_VV_PREFIX.to_vec();
    k.extend_from_slice(&origin.0.to_be_bytes());
    k
}

/// The meta key of the catch-up resume point for `peer`.
pub(crate) fn resume_key(peer: NodeId) -> Vec<u8> {
    let mut k = META_RESUME_PREFIX.to_vec();
    k.extend_from_slice(&peer.0.to_be_bytes());
    k
}

/// Parses a version-vector meta key.
pub(crate) fn parse_vv_key(k: &[u8]) -> Option<NodeId> {
    let rest = k.strip_prefix(META_VV_PREFIX)?;
    Some(NodeId(u64::from_be_bytes(rest.try_into().ok()?)))
}

/// Encodes a `u64` meta value.
pub(crate) fn u64_value(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decodes a `u64` meta value.
pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_slice_matches_data_key_for_short_and_long_keys() {
        for len in [0, 1, 19, 20, 62, 63, 64, 1000] {
            let user: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(&data_slice(&user)[..], &data_key(&user)[..], "key of {len} bytes");
            assert_eq!(user_key(&data_slice(&user)), &user[..]);
        }
    }

    #[test]
    fn log_keys_sort_by_origin_then_seq() {
        let a = log_key(Dot::new(NodeId(1), 300));
        let b = log_key(Dot::new(NodeId(2), 1));
        let c = log_key(Dot::new(NodeId(2), 2));
        assert!(a < b && b < c);
        assert_eq!(parse_log_key(&c), Some(Dot::new(NodeId(2), 2)));
        assert_eq!(parse_log_key(b"short"), None);
        assert_eq!(parse_vv_key(&vv_key(NodeId(7))), Some(NodeId(7)));
    }
}
