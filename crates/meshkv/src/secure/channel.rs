//! The transport after the handshake: a byte stream cut into Noise
//! transport messages, `length (u16 big-endian) ‖ ciphertext`, each carrying
//! at most [`MAX_CHUNK`] bytes of the framed protocol stream. Without a
//! secret both halves pass bytes through unchanged. Pure: the runtime feeds
//! bytes in and writes bytes out.

use super::SecureError;
use snow::StatelessTransportState;
use std::sync::Arc;

/// Noise's limit on one message, tag included.
pub const MAX_MESSAGE: usize = 65_535;
/// Bytes of the authentication tag of each message.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes carried by one transport message.
pub const MAX_CHUNK: usize = MAX_MESSAGE - TAG_LEN;
/// Bytes of a message's length prefix.
pub const LEN_PREFIX: usize = 2;

/// The sending half: turns plaintext into what goes on the wire.
pub enum Sealer {
    /// No secret: bytes go out as they are.
    Plain,
    /// Encrypts with the session keys of a completed handshake.
    Noise {
        /// Keys of both directions (only the sending key is used here).
        cipher: Arc<StatelessTransportState>,
        /// Next message number; never reused.
        nonce: u64,
    },
}

impl Sealer {
    /// Appends the wire form of `plain` to `wire`. Fails only if the
    /// session's nonces are exhausted (2^64 messages); the connection must
    /// then be closed.
    pub fn seal(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> Result<(), SecureError> {
        let Sealer::Noise { cipher, nonce } = self else {
            wire.extend_from_slice(plain);
            return Ok(());
        };
        for chunk in plain.chunks(MAX_CHUNK) {
            let len = chunk.len() + TAG_LEN;
            let start = wire.len();
            wire.extend_from_slice(&(len as u16).to_be_bytes());
            wire.resize(start + LEN_PREFIX + len, 0);
            cipher
                .write_message(*nonce, chunk, &mut wire[start + LEN_PREFIX..])
                .map_err(|e| SecureError::Channel(format!("cannot encrypt: {e}")))?;
            *nonce += 1;
        }
        Ok(())
    }
}

/// The receiving half: turns what arrived on the wire into plaintext,
/// buffering a partial message until the rest arrives.
pub enum Opener {
    /// No secret: bytes come in as they are.
    Plain,
    /// Decrypts and authenticates with a completed handshake's keys.
    Noise {
        /// Keys of both directions (only the receiving key is used here).
        cipher: Arc<StatelessTransportState>,
        /// Number of the next expected message.
        nonce: u64,
        /// Received bytes of an incomplete message.
        pending: Vec<u8>,
    },
}

impl Opener {
    /// Whether bytes come in as they are (no secret).
    pub fn is_plain(&self) -> bool {
        matches!(self, Opener::Plain)
    }

    /// Appends the plaintext of every complete message in `pending ‖ wire`
    /// to `plain`. A message that fails authentication (tampered, replayed,
    /// reordered or under another key) is an error and the stream is dead:
    /// nothing of that message reached `plain`.
    pub fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>) -> Result<(), SecureError> {
        let Opener::Noise { cipher, nonce, pending } = self else {
            plain.extend_from_slice(wire);
            return Ok(());
        };
        pending.extend_from_slice(wire);
        let mut used = 0;
        let result = loop {
            let rest = &pending[used..];
            let Some(header) = rest.get(..LEN_PREFIX) else { break Ok(()) };
            let len = u16::from_be_bytes([header[0], header[1]]) as usize;
            if len <= TAG_LEN {
                break Err(SecureError::Channel(format!("transport message of {len} bytes is too short")));
            }
            let Some(message) = rest.get(LEN_PREFIX..LEN_PREFIX + len) else { break Ok(()) };
            let start = plain.len();
            plain.resize(start + len - TAG_LEN, 0);
            if let Err(e) = cipher.read_message(*nonce, message, &mut plain[start..]) {
                plain.truncate(start);
                break Err(SecureError::Channel(format!("message {nonce} failed authentication: {e}")));
            }
            *nonce += 1;
            used += LEN_PREFIX + len;
        };
        pending.drain(..used);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::{handshake::tests::pair, Secret, Security};
    use proptest::prelude::*;

    #[test]
    fn large_payloads_cross_in_chunks_in_any_split() {
        let (mut a, mut b) = pair(&Security::with_secret(Secret::generate()));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        a.sealer.seal(&data, &mut wire).unwrap();
        assert!(wire.len() > data.len());
        assert!(!wire.windows(64).any(|w| w == &data[1000..1064]), "plaintext visible on the wire");
        let mut plain = Vec::new();
        for piece in wire.chunks(7_001) {
            b.opener.open(piece, &mut plain).unwrap();
        }
        assert_eq!(plain, data);
        // The other direction has its own keys and nonces.
        let mut back = Vec::new();
        b.sealer.seal(b"pong", &mut back).unwrap();
        let mut got = Vec::new();
        a.opener.open(&back, &mut got).unwrap();
        assert_eq!(got, b"pong");
    }

    #[test]
    fn tampering_and_replay_are_detected() {
        let (mut a, mut b) = pair(&Security::with_secret(Secret::generate()));
        let mut wire = Vec::new();
        a.sealer.seal(b"first", &mut wire).unwrap();
        let replay = wire.clone();
        let mut plain = Vec::new();
        b.opener.open(&wire, &mut plain).unwrap();
        assert!(b.opener.open(&replay, &mut plain).is_err(), "a replayed message must fail");
        let mut wire = Vec::new();
        a.sealer.seal(b"second", &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let (_, mut c) = pair(&Security::with_secret(Secret::generate()));
        assert!(c.opener.open(&wire, &mut plain).is_err(), "a message under other keys must fail");
    }

    proptest! {
        #[test]
        fn arbitrary_wire_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (_, mut b) = pair(&Security::with_secret(Secret::generate()));
            let mut plain = Vec::new();
            let _ = b.opener.open(&bytes, &mut plain);
            prop_assert!(plain.is_empty());
        }
    }
}
