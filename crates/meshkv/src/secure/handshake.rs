//! The connection handshake, before any protocol frame: a plaintext
//! preamble (magic and security mode), then with a secret the Noise
//! `NNpsk0` pattern. A state machine fed received bytes; it never does IO.
//!
//! ```text
//! initiator → responder   "MKV1" mode  [len ‖ psk, e]     (mode 1 only)
//! responder → initiator   "MKV1" mode  [len ‖ e, ee]      (len 0: refused)
//! ```
//!
//! Each side sends its preamble even when the modes differ, so both can
//! say clearly which side lacks a secret. Noise message 1 authenticates the
//! initiator (only a holder of the pre-shared key can produce its tag);
//! message 2 authenticates the responder and, mixing two fresh ephemeral
//! keys, gives both directions session keys no recording can replay.

use super::channel::{Opener, Sealer, LEN_PREFIX};
use super::{Access, SecureError, Security};
use crate::protocol::MAGIC;
use snow::{Builder, HandshakeState};
use std::sync::Arc;

/// The Noise protocol: pre-shared key mixed in first, X25519 ephemeral
/// keys, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Preamble security mode: no secret, frames in plaintext.
pub const MODE_PLAIN: u8 = 0;
/// Preamble security mode: Noise with the cluster secret.
pub const MODE_NOISE_PSK: u8 = 1;
/// Bytes of a preamble.
pub const PREAMBLE_LEN: usize = 5;
/// Largest handshake message accepted (the real ones are 48 bytes).
const MAX_HANDSHAKE_MESSAGE: usize = 256;

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Opened the connection.
    Initiator,
    /// Accepted it.
    Responder,
}

/// A completed handshake: the two halves of the transport and what the
/// other side may do.
pub struct Established {
    /// Encrypts what we send.
    pub sealer: Sealer,
    /// Decrypts what we receive.
    pub opener: Opener,
    /// For a responder, the access the initiator's secret grants
    /// ([`Access::Full`] without secrets); for an initiator, `Full`.
    pub access: Access,
    /// Plaintext that arrived right behind the handshake.
    pub plain: Vec<u8>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let encrypted = matches!(self.sealer, Sealer::Noise { .. });
        f.debug_struct("Established").field("access", &self.access).field("encrypted", &encrypted).finish()
    }
}

enum Stage {
    /// Waiting for the other side's preamble (the initiator holds the Noise
    /// state it started with message 1).
    Preamble(Option<Box<HandshakeState>>),
    /// Responder waiting for Noise message 1.
    Message1,
    /// Initiator waiting for Noise message 2.
    Message2(Box<HandshakeState>),
    /// Finished or failed; nothing more is read.
    Over,
}

/// One side's handshake in progress.
pub struct Handshake {
    side: Side,
    security: Security,
    stage: Stage,
    input: Vec<u8>,
    output: Vec<u8>,
    done: Option<Established>,
}

fn preamble(mode: u8) -> [u8; PREAMBLE_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], mode]
}

fn builder<'a>(secret: &'a super::Secret, prologue: &'a [u8]) -> Result<Builder<'a>, snow::Error> {
    let params = NOISE_PARAMS.parse().unwrap_or_else(|_| unreachable!("valid constant"));
    Builder::new(params).psk(0, secret.bytes())?.prologue(prologue)
}

fn internal(e: snow::Error) -> SecureError {
    SecureError::Malformed(format!("noise: {e}"))
}

impl Handshake {
    /// Starts the side that opened the connection; its first bytes are
    /// ready in [`Handshake::take_output`].
    pub fn initiator(security: &Security) -> Result<Handshake, SecureError> {
        let mode = security.mode();
        let mut output = preamble(mode).to_vec();
        let noise = match &security.secret {
            Some(secret) => {
                let mut hs = builder(secret, &preamble(mode)).and_then(|b| b.build_initiator()).map_err(internal)?;
                write_message(&mut hs, &mut output)?;
                Some(Box::new(hs))
            }
            None => None,
        };
        Ok(Handshake::new(Side::Initiator, security, Stage::Preamble(noise), output))
    }

    /// Starts the side that accepted the connection.
    pub fn responder(security: &Security) -> Handshake {
        Handshake::new(Side::Responder, security, Stage::Preamble(None), Vec::new())
    }

    fn new(side: Side, security: &Security, stage: Stage, output: Vec<u8>) -> Handshake {
        Handshake { side, security: security.clone(), stage, input: Vec::new(), output, done: None }
    }

    /// Bytes to send now (empty if none). After an error, what is returned
    /// here (a preamble or a refusal) should still be sent before closing.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// The finished handshake, once [`Handshake::read`] has returned `true`.
    pub fn established(&mut self) -> Option<Established> {
        self.done.take()
    }

    /// Feeds received bytes. `Ok(true)` once the handshake is complete
    /// (then see [`Handshake::established`]), `Ok(false)` if more bytes are
    /// needed. An error ends the handshake; the connection must be closed.
    pub fn read(&mut self, bytes: &[u8]) -> Result<bool, SecureError> {
        if matches!(self.stage, Stage::Over) {
            return Ok(self.done.is_some());
        }
        self.input.extend_from_slice(bytes);
        let result = self.advance();
        if result.is_err() {
            self.stage = Stage::Over;
        }
        result
    }

    fn advance(&mut self) -> Result<bool, SecureError> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Over) {
                Stage::Preamble(noise) => {
                    if self.input.len() < PREAMBLE_LEN {
                        self.stage = Stage::Preamble(noise);
                        return Ok(false);
                    }
                    let theirs: Vec<u8> = self.input.drain(..PREAMBLE_LEN).collect();
                    self.on_preamble(&theirs, noise)?;
                }
                Stage::Message1 => {
                    let Some(message) = self.take_message()? else {
                        self.stage = Stage::Message1;
                        return Ok(false);
                    };
                    self.on_message1(&message)?;
                }
                Stage::Message2(mut hs) => {
                    let Some(message) = self.take_message()? else {
                        self.stage = Stage::Message2(hs);
                        return Ok(false);
                    };
                    if message.is_empty() {
                        return Err(SecureError::WrongSecret);
                    }
                    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
                    hs.read_message(&message, &mut payload).map_err(|_| SecureError::Unauthenticated)?;
                    self.finish(*hs, Access::Full)?;
                }
                Stage::Over => return Ok(self.done.is_some()),
            }
        }
    }

    fn on_preamble(&mut self, theirs: &[u8], noise: Option<Box<HandshakeState>>) -> Result<(), SecureError> {
        if theirs[..4] != MAGIC {
            return Err(SecureError::NotMeshkv);
        }
        let ours = self.security.mode();
        if self.side == Side::Responder {
            self.output.extend_from_slice(&preamble(ours));
        }
        match (ours, theirs[4]) {
            (_, mode) if mode > MODE_NOISE_PSK => Err(SecureError::Malformed(format!("unknown security mode {mode}"))),
            (MODE_PLAIN, MODE_NOISE_PSK) => Err(SecureError::NeedSecret),
            (MODE_NOISE_PSK, MODE_PLAIN) => Err(SecureError::UnexpectedPlain),
            (MODE_PLAIN, _) => {
                let plain = std::mem::take(&mut self.input);
                self.done =
                    Some(Established { sealer: Sealer::Plain, opener: Opener::Plain, access: Access::Full, plain });
                Ok(())
            }
            _ => {
                self.stage = match (self.side, noise) {
                    (Side::Initiator, Some(hs)) => Stage::Message2(hs),
                    (Side::Responder, _) => Stage::Message1,
                    (Side::Initiator, None) => unreachable!("an initiator with a secret started noise"),
                };
                Ok(())
            }
        }
    }

    /// Tries the cluster secret, then the client and the read-only ones;
    /// the first that authenticates message 1 sets the access.
    fn on_message1(&mut self, message: &[u8]) -> Result<(), SecureError> {
        let prologue = preamble(MODE_NOISE_PSK);
        let candidates = [
            (self.security.secret.clone(), Access::Full),
            (self.security.client_secret.clone(), Access::Client),
            (self.security.read_only_secret.clone(), Access::ReadOnly),
        ];
        for (secret, access) in candidates {
            let Some(secret) = secret else { continue };
            let mut hs = builder(&secret, &prologue).and_then(|b| b.build_responder()).map_err(internal)?;
            let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
            if hs.read_message(message, &mut payload).is_ok() {
                write_message(&mut hs, &mut self.output)?;
                return self.finish(hs, access);
            }
        }
        // An explicit refusal, so an honest client can say "wrong secret".
        self.output.extend_from_slice(&[0, 0]);
        Err(SecureError::WrongSecret)
    }

    fn finish(&mut self, hs: HandshakeState, access: Access) -> Result<(), SecureError> {
        let cipher = Arc::new(hs.into_stateless_transport_mode().map_err(internal)?);
        let mut opener = Opener::Noise { cipher: Arc::clone(&cipher), nonce: 0, pending: Vec::new() };
        let mut plain = Vec::new();
        opener.open(&std::mem::take(&mut self.input), &mut plain)?;
        self.done = Some(Established { sealer: Sealer::Noise { cipher, nonce: 0 }, opener, access, plain });
        Ok(())
    }

    /// A length-prefixed handshake message, if complete.
    fn take_message(&mut self) -> Result<Option<Vec<u8>>, SecureError> {
        let Some(header) = self.input.get(..LEN_PREFIX) else { return Ok(None) };
        let len = u16::from_be_bytes([header[0], header[1]]) as usize;
        if len > MAX_HANDSHAKE_MESSAGE {
            return Err(SecureError::Malformed(format!("handshake message of {len} bytes")));
        }
        if self.input.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let message = self.input[LEN_PREFIX..LEN_PREFIX + len].to_vec();
        self.input.drain(..LEN_PREFIX + len);
        Ok(Some(message))
    }
}

fn write_message(hs: &mut HandshakeState, out: &mut Vec<u8>) -> Result<(), SecureError> {
    let mut message = [0u8; MAX_HANDSHAKE_MESSAGE];
    let len = hs.write_message(&[], &mut message).map_err(internal)?;
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&message[..len]);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::Secret;
    use super::*;
    use proptest::prelude::*;

    /// Runs both sides to completion in memory, passing bytes one at a time.
    fn run(init: &Security, resp: &Security) -> (Result<Established, SecureError>, Result<Established, SecureError>) {
        let mut i = match Handshake::initiator(init) {
            Ok(h) => h,
            Err(e) => return (Err(e.clone()), Err(e)),
        };
        let mut r = Handshake::responder(resp);
        let (mut i_res, mut r_res) = (None, None);
        for _ in 0..8 {
            for byte in i.take_output() {
                if r_res.is_none() {
                    match r.read(&[byte]) {
                        Ok(true) => r_res = Some(Ok(r.established().expect("done"))),
                        Ok(false) => {}
                        Err(e) => r_res = Some(Err(e)),
                    }
                }
            }
            let out = r.take_output();
            if i_res.is_none() && !out.is_empty() {
                i_res = Some(match i.read(&out) {
                    Ok(true) => Ok(i.established().expect("done")),
                    Ok(false) => continue,
                    Err(e) => Err(e),
                });
            }
        }
        (i_res.expect("initiator finished"), r_res.expect("responder finished"))
    }

    /// Two connected, established ends (initiator, responder).
    pub(crate) fn pair(security: &Security) -> (Established, Established) {
        let (i, r) = run(security, security);
        (i.expect("initiator"), r.expect("responder"))
    }

    #[test]
    fn same_secret_connects_with_full_access() {
        let s = Security::with_secret(Secret::generate());
        let (i, r) = pair(&s);
        assert_eq!((i.access, r.access), (Access::Full, Access::Full));
        assert!(matches!(i.sealer, Sealer::Noise { .. }));
    }

    #[test]
    fn each_secret_grants_its_access() {
        let (full, client, ro) = (Secret::generate(), Secret::generate(), Secret::generate());
        let node = Security {
            secret: Some(full.clone()),
            client_secret: Some(client.clone()),
            read_only_secret: Some(ro.clone()),
        };
        for (secret, access) in [(full, Access::Full), (client, Access::Client), (ro, Access::ReadOnly)] {
            let (i, r) = run(&Security::with_secret(secret), &node);
            assert_eq!(r.expect("accepted").access, access);
            assert!(i.is_ok());
        }
    }

    #[test]
    fn client_secrets_need_a_distinct_cluster_secret() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let ok = Security { secret: Some(a.clone()), client_secret: Some(b.clone()), read_only_secret: None };
        assert_eq!(ok.check(), Ok(()));
        let bad = [
            Security { secret: None, client_secret: Some(b.clone()), read_only_secret: None },
            Security { secret: None, client_secret: None, read_only_secret: Some(b.clone()) },
            Security { secret: Some(a.clone()), client_secret: Some(a.clone()), read_only_secret: None },
            Security { secret: Some(a.clone()), client_secret: None, read_only_secret: Some(a.clone()) },
            Security { secret: Some(a), client_secret: Some(b.clone()), read_only_secret: Some(b) },
        ];
        for security in bad {
            assert!(security.check().is_err(), "{security:?} accepted");
        }
    }

    #[test]
    fn wrong_or_missing_secrets_are_refused_on_both_sides() {
        let a = Security::with_secret(Secret::generate());
        let b = Security::with_secret(Secret::generate());
        let none = Security::default();
        let (i, r) = run(&a, &b);
        assert_eq!((i.err(), r.err()), (Some(SecureError::WrongSecret), Some(SecureError::WrongSecret)));
        let (i, r) = run(&none, &a);
        assert_eq!((i.err(), r.err()), (Some(SecureError::NeedSecret), Some(SecureError::UnexpectedPlain)));
        let (i, r) = run(&a, &none);
        assert_eq!((i.err(), r.err()), (Some(SecureError::UnexpectedPlain), Some(SecureError::NeedSecret)));
        let (i, r) = run(&none, &none);
        assert!(matches!(i.map(|e| e.sealer), Ok(Sealer::Plain)) && r.is_ok());
    }

    #[test]
    fn not_meshkv_is_refused() {
        let mut r = Handshake::responder(&Security::default());
        assert_eq!(r.read(b"GET / HTTP/1.1\r\n"), Err(SecureError::NotMeshkv));
    }

    proptest! {
        #[test]
        fn responder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), secret in any::<bool>()) {
            let security = if secret { Security::with_secret(Secret::generate()) } else { Security::default() };
            let mut r = Handshake::responder(&security);
            let mut framed = b"MKV1".to_vec();
            framed.extend_from_slice(&bytes);
            for input in [&bytes[..], &framed[..]] {
                let mut r2 = Handshake::responder(&security);
                if let Ok(true) = r2.read(input) {
                    // Only a plain responder can finish without a secret.
                    prop_assert!(!secret);
                }
            }
            let _ = r.read(&bytes);
        }

        #[test]
        fn initiator_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut i = Handshake::initiator(&Security::with_secret(Secret::generate())).expect("start");
            let mut framed = b"MKV1\x01".to_vec();
            framed.extend_from_slice(&bytes);
            prop_assert!(!matches!(i.read(&framed), Ok(true)), "random bytes cannot authenticate a responder");
        }
    }
}
