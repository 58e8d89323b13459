//! Authenticated, encrypted connections: the cluster secret, the handshake
//! that proves both sides hold it, and the encrypted transport behind it.
//! Pure state machines over bytes; the runtime (`net`) moves the bytes.
//!
//! Noise (`NNpsk0`, through the `snow` crate) with the cluster secret as
//! pre-shared key: both sides authenticate before any protocol frame, every
//! byte after the handshake is encrypted and authenticated, and fresh
//! ephemeral keys per connection give forward secrecy. Without a secret the
//! same preamble runs and frames travel in plaintext (loopback only, which
//! the node and the CLI enforce).

mod channel;
mod handshake;
mod secret;

pub use channel::{Opener, Sealer, MAX_CHUNK};
pub use handshake::{Established, Handshake, Side, NOISE_PARAMS};
pub use secret::{Secret, SECRET_LEN};

/// What the other side of a connection may do, decided by the secret it
/// proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Everything: replicate as a peer, read and write as a client.
    Full,
    /// Client reads and writes (the client secret), through the session's
    /// read-only setting and write hook; peer links are closed.
    Client,
    /// Client reads only (the read-only secret); writes are refused and
    /// peer links are closed.
    ReadOnly,
}

impl Access {
    /// Whether this access may replicate as a peer.
    pub fn may_peer(self) -> bool {
        self == Access::Full
    }
}

/// The secrets a node or client holds. Without `secret` connections are
/// plaintext and unauthenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// The cluster secret: full access; the secret a node dials peers with.
    /// A client connects with whichever secret it was given, here.
    pub secret: Option<Secret>,
    /// A secret a node accepts from clients, granting reads and writes but
    /// no peer link (so write hooks and read-only listeners cannot be
    /// bypassed by replicating). Needs `secret`.
    pub client_secret: Option<Secret>,
    /// A secret a node accepts from clients, granting reads only. Needs
    /// `secret`.
    pub read_only_secret: Option<Secret>,
}

impl Security {
    /// Security with one (full-access) secret.
    pub fn with_secret(secret: Secret) -> Security {
        Security { secret: Some(secret), ..Security::default() }
    }

    /// Whether connections are authenticated and encrypted.
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// Checks that the client secrets come with a cluster secret and that
    /// no two secrets are equal (a connection proves one secret; equal
    /// ones would grant the wider access).
    pub fn check(&self) -> Result<(), String> {
        let extra = [("client", &self.client_secret), ("read-only", &self.read_only_secret)];
        for (name, secret) in extra {
            if secret.is_some() && self.secret.is_none() {
                return Err(format!("a {name} secret needs the cluster secret as well"));
            }
            if secret.is_some() && secret == &self.secret {
                return Err(format!("the {name} secret equals the cluster secret: it would grant replication"));
            }
        }
        if self.client_secret.is_some() && self.client_secret == self.read_only_secret {
            return Err("the read-only secret equals the client secret: it would grant writes".into());
        }
        Ok(())
    }

    fn mode(&self) -> u8 {
        if self.is_enabled() {
            handshake::MODE_NOISE_PSK
        } else {
            handshake::MODE_PLAIN
        }
    }
}

/// Why a secret could not be loaded or a connection could not be secured.
/// A failed handshake leaves nothing behind: no protocol frame was read or
/// written, and the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// A secret file or text is unusable.
    #[error("bad secret: {0}")]
    BadSecret(String),
    /// The other side does not speak the meshkv protocol.
    #[error("the other side does not speak meshkv")]
    NotMeshkv,
    /// The other side requires a cluster secret and none is configured here.
    #[error("the other side requires a cluster secret; none is configured here")]
    NeedSecret,
    /// This side requires a cluster secret and the other side has none.
    #[error("the other side has no cluster secret; this side requires one")]
    UnexpectedPlain,
    /// The secrets differ: refused by the responder, or (as responder) the
    /// initiator's secret matched none of ours.
    #[error("wrong cluster secret: the handshake was refused")]
    WrongSecret,
    /// The responder could not prove it holds our secret.
    #[error("the other side could not prove it holds the cluster secret")]
    Unauthenticated,
    /// Handshake bytes that follow no valid form.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// An encrypted message failed authentication (tampered, replayed, cut)
    /// or could not be encrypted; the stream is dead.
    #[error("secure channel broken: {0}")]
    Channel(String),
}

impl SecureError {
    /// The message without the variant's prefix.
    pub(crate) fn detail(&self) -> String {
        match self {
            SecureError::BadSecret(m) | SecureError::Malformed(m) | SecureError::Channel(m) => m.clone(),
            other => other.to_string(),
        }
    }
}
