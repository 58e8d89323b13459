//! Discovery announcements: the UDP datagram a node sends to its LAN to say
//! "a node of this cluster accepts peers on this port". Pure encoding and
//! checking; the node runtime sends and receives them (`node/discovery.rs`).
//!
//! A datagram is the postcard encoding of an [`Announcement`] followed by a
//! 32-byte tag: keyed BLAKE2b over the encoding, with the cluster secret as
//! key and a personalization string of its own (so the tag can be nothing
//! else the secret authenticates). Only holders of the secret can announce,
//! and a recorded announcement is accepted again only while it is fresh
//! ([`MAX_AGE_MS`]). The listen address is inside the tag; only when it is
//! unspecified (a node listening on every interface) does the datagram's
//! source address, which a replayer can forge, take its place.

use crate::secure::Secret;
use crate::version::NodeId;
use blake2::digest::consts::U32;
use blake2::digest::Mac;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Magic bytes that open every announcement.
pub const ANNOUNCE_MAGIC: [u8; 4] = *b"MKVA";
/// Announcement format spoken by this build.
pub const ANNOUNCE_VERSION: u16 = 1;
/// Largest announcement datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 512;
/// Announcements further than this from our clock (either way) are refused.
pub const MAX_AGE_MS: u64 = 30_000;
const TAG_LEN: usize = 32;
const PERSONA: &[u8; 16] = b"meshkv-announce1";

type Tagger = blake2::Blake2bMac<U32>;

/// What a node announces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Must equal [`ANNOUNCE_MAGIC`].
    pub magic: [u8; 4],
    /// Must equal [`ANNOUNCE_VERSION`].
    pub version: u16,
    /// The sender's cluster name.
    pub cluster: String,
    /// The sender's node id.
    pub node: NodeId,
    /// Where it accepts peers; an unspecified IP stands for the address the
    /// datagram comes from.
    pub listen: SocketAddr,
    /// When it was sent: milliseconds since the Unix epoch.
    pub sent_ms: u64,
}

/// Why a datagram was not accepted as an announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// Larger than [`MAX_DATAGRAM`], or too short to hold a tag.
    #[error("datagram of {0} bytes is not an announcement")]
    Size(usize),
    /// The tag does not match: not sealed with our secret (or altered).
    #[error("announcement not sealed with this cluster's secret")]
    Forged,
    /// Authentic but not decodable, or of another format or version.
    #[error("malformed announcement")]
    Malformed,
    /// Authentic, but sent further than [`MAX_AGE_MS`] from now.
    #[error("announcement sent {age_ms} ms away from now")]
    Stale {
        /// How far from our clock, either way.
        age_ms: u64,
    },
}

impl Announcement {
    /// An announcement of `node` of `cluster`, listening on `listen`, sent
    /// at `sent_ms`.
    pub fn new(cluster: &str, node: NodeId, listen: SocketAddr, sent_ms: u64) -> Self {
        Announcement {
            magic: ANNOUNCE_MAGIC,
            version: ANNOUNCE_VERSION,
            cluster: cluster.into(),
            node,
            listen,
            sent_ms,
        }
    }

    /// The address to dial for the announcement received from `from`.
    pub fn dial_addr(&self, from: SocketAddr) -> SocketAddr {
        if self.listen.ip().is_unspecified() {
            // Keeps an IPv6 sender's scope (a link-local address needs it).
            let mut addr = from;
            addr.set_port(self.listen.port());
            addr
        } else {
            self.listen
        }
    }

    /// The datagram: the encoding and its tag under `secret`. `None` if it
    /// would exceed [`MAX_DATAGRAM`] (a cluster name of hundreds of bytes).
    pub fn seal(&self, secret: &Secret) -> Option<Vec<u8>> {
        let mut out = postcard::to_stdvec(self).ok()?;
        let tag = tagger(secret).chain_update(&out).finalize().into_bytes();
        out.extend_from_slice(&tag);
        (out.len() <= MAX_DATAGRAM).then_some(out)
    }

    /// Checks a datagram's size, tag, format and age (against `now_ms`),
    /// in that order: nothing of an unauthenticated datagram is decoded.
    pub fn open(datagram: &[u8], secret: &Secret, now_ms: u64) -> Result<Announcement, AnnounceError> {
        if datagram.len() > MAX_DATAGRAM || datagram.len() <= TAG_LEN {
            return Err(AnnounceError::Size(datagram.len()));
        }
        let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        tagger(secret).chain_update(body).verify_slice(tag).map_err(|_| AnnounceError::Forged)?;
        let a: Announcement = match postcard::from_bytes(body) {
            Ok(a) => a,
            Err(_) => return Err(AnnounceError::Malformed),
        };
        if a.magic != ANNOUNCE_MAGIC || a.version != ANNOUNCE_VERSION {
            return Err(AnnounceError::Malformed);
        }
        let age_ms = now_ms.abs_diff(a.sent_ms);
        if age_ms > MAX_AGE_MS {
            return Err(AnnounceError::Stale { age_ms });
        }
        Ok(a)
    }
}

fn tagger(secret: &Secret) -> Tagger {
    Tagger::new_with_salt_and_personal(secret.bytes(), &[], PERSONA)
        .unwrap_or_else(|_| unreachable!("a 32-byte key and a 16-byte persona fit BLAKE2b"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    fn any(port: u16) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], port))
    }

    fn sealed(secret: &Secret) -> Vec<u8> {
        Announcement::new("prod", NodeId(7), any(7420), NOW).seal(secret).expect("fits")
    }

    #[test]
    fn a_sealed_announcement_opens_with_the_same_secret_only() {
        let secret = Secret::generate();
        let got = Announcement::open(&sealed(&secret), &secret, NOW + 1_000).expect("opens");
        assert_eq!(got, Announcement::new("prod", NodeId(7), any(7420), NOW));
        assert_eq!(Announcement::open(&sealed(&secret), &Secret::generate(), NOW), Err(AnnounceError::Forged));
    }

    #[test]
    fn altered_short_long_and_stale_datagrams_are_refused() {
        let secret = Secret::generate();
        let good = sealed(&secret);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(Announcement::open(&bad, &secret, NOW), Err(AnnounceError::Forged), "byte {i}");
        }
        assert_eq!(Announcement::open(&good[..TAG_LEN], &secret, NOW), Err(AnnounceError::Size(TAG_LEN)));
        assert!(matches!(Announcement::open(&[0; MAX_DATAGRAM + 1], &secret, NOW), Err(AnnounceError::Size(_))));
        let late = NOW + MAX_AGE_MS + 1;
        assert_eq!(Announcement::open(&good, &secret, late), Err(AnnounceError::Stale { age_ms: MAX_AGE_MS + 1 }));
        let early = NOW - MAX_AGE_MS - 1;
        assert!(matches!(Announcement::open(&good, &secret, early), Err(AnnounceError::Stale { .. })));
    }

    #[test]
    fn authentic_bytes_of_another_format_are_malformed() {
        let secret = Secret::generate();
        let mut other = Announcement::new("prod", NodeId(7), any(7420), NOW);
        other.version = ANNOUNCE_VERSION + 1;
        let datagram = other.seal(&secret).expect("fits");
        assert_eq!(Announcement::open(&datagram, &secret, NOW), Err(AnnounceError::Malformed));
        assert!(Announcement::new(&"x".repeat(600), NodeId(7), any(1), NOW).seal(&secret).is_none(), "over the size");
    }

    #[test]
    fn a_concrete_listen_address_is_dialed_as_announced() {
        let from: SocketAddr = "[fe80::1%3]:40000".parse().expect("address");
        let a = Announcement::new("prod", NodeId(7), "[::]:7420".parse().expect("address"), NOW);
        assert_eq!(a.dial_addr(from), "[fe80::1%3]:7420".parse().expect("address"), "scope kept");
        let a = Announcement::new("prod", NodeId(7), "10.0.0.5:7420".parse().expect("address"), NOW);
        assert_eq!(a.dial_addr(from), "10.0.0.5:7420".parse().expect("address"));
    }
}
