//! Framing: `length (u32 big-endian) ‖ payload`, where the payload is a
//! postcard-encoded [`Message`]. Pure functions over byte buffers; the
//! runtime and the simulation feed them whatever bytes arrived.

use super::message::{Message, MAGIC, PROTOCOL_VERSION};

/// Default maximum frame size: the largest record (16 MiB value plus key and
/// metadata) must fit, and nothing larger is ever buffered.
pub const DEFAULT_MAX_FRAME: usize = 17 * 1024 * 1024;
/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// A frame that cannot be decoded. The connection must be closed; nothing
/// from it has been applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The payload is a handshake of another protocol version, whose
    /// messages this build cannot read.
    #[error("the other side speaks protocol version {theirs}, this build {ours}: run one version in a cluster")]
    OtherVersion {
        /// The version the handshake names.
        theirs: u16,
        /// [`PROTOCOL_VERSION`].
        ours: u16,
    },
}

/// Appends the frame of `msg` to `out`; returns the frame's length.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    // Serializing into a Vec cannot fail for these types.
    let out_vec = std::mem::take(out);
    let mut out_vec = postcard::to_extend(msg, out_vec).unwrap_or_else(|_| unreachable!("in-memory encode"));
    let len = (out_vec.len() - start - HEADER_LEN) as u32;
    out_vec[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    *out = out_vec;
    out.len() - start
}

/// Whether [`decode`] of `buf` has an answer without more bytes: a whole
/// frame, or a length prefix over `max_frame`.
pub fn frame_ready(buf: &[u8], max_frame: usize) -> bool {
    let Some(header) = buf.get(..HEADER_LEN) else { return false };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    len > max_frame || buf.len() - HEADER_LEN >= len
}

/// Decodes one frame from the front of `buf`. Returns the message and the
/// bytes consumed, `Ok(None)` if more bytes are needed.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Message, usize)>, CodecError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max_frame {
        return Err(CodecError::TooLarge { len, max: max_frame });
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Ok(None) };
    let (msg, rest) =
        postcard::take_from_bytes::<Message>(payload).map_err(|e| other_version(payload, e.to_string()))?;
    if !rest.is_empty() {
        // A newer `Hello` that only appends fields decodes as ours with
        // bytes left over.
        return Err(other_version(payload, format!("{} trailing bytes", rest.len())));
    }
    Ok(Some((msg, HEADER_LEN + len)))
}

/// The error for a payload that does not decode as one whole message:
/// [`CodecError::OtherVersion`] if it opens like a `Hello` of another
/// version, else [`CodecError::Malformed`] with `why`.
fn other_version(payload: &[u8], why: String) -> CodecError {
    match hello_version(payload) {
        Some(theirs) if theirs != PROTOCOL_VERSION => CodecError::OtherVersion { theirs, ours: PROTOCOL_VERSION },
        _ => CodecError::Malformed(why),
    }
}

/// The version a payload names if it opens like a `Hello` of any version:
/// its variant, [`MAGIC`] and the version are the first fields of every
/// version's `Hello`.
fn hello_version(payload: &[u8]) -> Option<u16> {
    let ((variant, magic, version), _) = postcard::take_from_bytes::<(u32, [u8; 4], u16)>(payload).ok()?;
    (variant == 0 && magic == MAGIC).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{version_refusal, CloseReason, Hello, Mode, Role, MAGIC, PROTOCOL_VERSION};
    use crate::version::NodeId;
    use proptest::prelude::*;

    fn hello() -> Message {
        Message::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster: "c".into(),
            node: NodeId(7),
            role: Role::Peer,
            mode: Mode::Sync,
            policy: 1,
            max_frame: 0,
            incarnation: 0,
        })
    }

    #[test]
    fn a_peer_list_decodes_up_to_the_limit_only() {
        use crate::protocol::message::MAX_SHARED_PEERS;
        let addrs = |n: usize| (0..n).map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p as u16 + 1))).collect();
        for n in [0, 1, MAX_SHARED_PEERS] {
            let msg = Message::Peers { listen: None, known: addrs(n) };
            let mut buf = Vec::new();
            encode(&msg, &mut buf);
            assert_eq!(decode(&buf, DEFAULT_MAX_FRAME).expect("decodes").map(|(m, _)| m), Some(msg));
        }
        let mut buf = Vec::new();
        encode(&Message::Peers { listen: None, known: addrs(MAX_SHARED_PEERS + 1) }, &mut buf);
        assert!(decode(&buf, DEFAULT_MAX_FRAME).is_err(), "one address over the limit");
    }

    #[test]
    fn a_digest_names_held_writes_up_to_the_limit_only() {
        use crate::protocol::message::MAX_HELD_DOTS;
        use crate::version::{Dot, VersionVector};
        let digest = |n: usize| Message::Digest {
            vv: VersionVector::new(),
            resume: None,
            held: (1..=n as u64).map(|s| Dot::new(NodeId(9), s)).collect(),
        };
        for n in [0, 1, MAX_HELD_DOTS] {
            let mut buf = Vec::new();
            encode(&digest(n), &mut buf);
            assert_eq!(decode(&buf, DEFAULT_MAX_FRAME).expect("decodes").map(|(m, _)| m), Some(digest(n)));
        }
        let mut buf = Vec::new();
        encode(&digest(MAX_HELD_DOTS + 1), &mut buf);
        assert!(decode(&buf, DEFAULT_MAX_FRAME).is_err(), "one dot over the limit");
    }

    #[test]
    fn roundtrip_and_partial_frames() {
        let mut buf = Vec::new();
        let n = encode(&hello(), &mut buf);
        encode(&Message::Ack { id: 9 }, &mut buf);
        for cut in 0..n {
            assert_eq!(decode(&buf[..cut], DEFAULT_MAX_FRAME), Ok(None));
        }
        let (m, used) = decode(&buf, DEFAULT_MAX_FRAME).expect("ok").expect("frame");
        assert_eq!((m, used), (hello(), n));
        let (m, _) = decode(&buf[n..], DEFAULT_MAX_FRAME).expect("ok").expect("frame");
        assert_eq!(m, Message::Ack { id: 9 });
    }

    /// Frames the payload of `msg` cut by its last `drop` bytes.
    fn frame_without_tail(msg: &Message, drop: usize) -> Vec<u8> {
        let mut payload = postcard::to_stdvec(msg).expect("encode");
        payload.truncate(payload.len() - drop);
        [&(payload.len() as u32).to_be_bytes()[..], &payload].concat()
    }

    /// A `Hello` of the version before (the layout without its last field)
    /// is refused as another version, naming both; a broken `Hello` of this
    /// version stays malformed.
    #[test]
    fn a_hello_of_another_version_is_named_as_such() {
        let Message::Hello(h) = hello() else { unreachable!() };
        let older = Message::Hello(Hello { version: PROTOCOL_VERSION - 1, ..h.clone() });
        // The last field, `incarnation` 0, is one byte.
        let err = decode(&frame_without_tail(&older, 1), DEFAULT_MAX_FRAME).expect_err("refused");
        assert_eq!(err, CodecError::OtherVersion { theirs: PROTOCOL_VERSION - 1, ours: PROTOCOL_VERSION });
        assert!(err.to_string().contains(&format!("protocol version {}", PROTOCOL_VERSION - 1)), "{err}");
        let broken = decode(&frame_without_tail(&Message::Hello(h), 1), DEFAULT_MAX_FRAME).expect_err("refused");
        assert!(matches!(broken, CodecError::Malformed(_)), "{broken:?}");
    }

    /// A `Hello` of the next version that appends a field to ours decodes
    /// as ours with a byte left over: it is refused as another version all
    /// the same; a `Hello` of this version with a byte too many stays
    /// malformed.
    #[test]
    fn a_newer_hello_with_an_appended_field_is_named_as_such() {
        let Message::Hello(h) = hello() else { unreachable!() };
        let newer = Message::Hello(Hello { version: PROTOCOL_VERSION + 1, ..h.clone() });
        let with_tail = |msg: &Message| {
            let mut payload = postcard::to_stdvec(msg).expect("encode");
            payload.push(0);
            [&(payload.len() as u32).to_be_bytes()[..], &payload].concat()
        };
        let err = decode(&with_tail(&newer), DEFAULT_MAX_FRAME).expect_err("refused");
        assert_eq!(err, CodecError::OtherVersion { theirs: PROTOCOL_VERSION + 1, ours: PROTOCOL_VERSION });
        let long = decode(&with_tail(&Message::Hello(h)), DEFAULT_MAX_FRAME).expect_err("refused");
        assert_eq!(long, CodecError::Malformed("1 trailing bytes".into()));
    }

    /// An older version reads the refusal of its `Hello`: the frame of
    /// `Close { VersionMismatch }` has had these bytes in every version
    /// with clients (variant 12, reason 5, behind the same length prefix).
    #[test]
    fn the_version_refusal_of_an_older_side_is_the_close_it_reads() {
        let mut buf = Vec::new();
        for msg in version_refusal(PROTOCOL_VERSION - 1) {
            encode(&msg, &mut buf);
        }
        assert_eq!(buf, [0, 0, 0, 2, 12, 5]);
        assert_eq!(
            version_refusal(PROTOCOL_VERSION + 1),
            [Message::Hello(Hello::version_only()), Message::Close { reason: CloseReason::VersionMismatch }]
        );
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let buf = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(decode(&buf, 1024), Err(CodecError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, 1 << 20);
        }

        /// Arbitrary payloads behind a valid length prefix reach the message
        /// decoder; whatever it accepts round-trips.
        #[test]
        fn arbitrary_payloads_decode_or_fail_cleanly(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            if let Ok(Some((msg, used))) = decode(&frame, DEFAULT_MAX_FRAME) {
                prop_assert_eq!(used, frame.len());
                let mut again = Vec::new();
                encode(&msg, &mut again);
                prop_assert_eq!(decode(&again, DEFAULT_MAX_FRAME).expect("re-encoded").map(|(m, _)| m), Some(msg));
            }
        }
    }
}
