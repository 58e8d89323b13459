//! The cluster secret: 32 random bytes shared by every node and client of a
//! cluster, kept in a file as one line of 64 hex digits.

use super::SecureError;
use rand::RngCore;
use std::fmt;
use std::path::Path;
use zeroize::Zeroize;

/// Bytes in a secret (the Noise pre-shared key length).
pub const SECRET_LEN: usize = 32;

/// A cluster secret. `Debug` never shows the bytes; they are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// A new secret from the operating system's random source (through
    /// `rand`'s thread-local CSPRNG, seeded from the OS).
    pub fn generate() -> Secret {
        let mut bytes = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Secret(bytes)
    }

    /// Parses the text form: 64 hex digits, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Secret, SecureError> {
        let text = text.trim();
        let bad = || SecureError::BadSecret(format!("expected {} hex digits", SECRET_LEN * 2));
        if text.len() != SECRET_LEN * 2 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; SECRET_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err(SecureError::BadSecret("the secret is all zeros".into()));
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file (see [`Secret::parse`]).
    pub fn load(path: &Path) -> Result<Secret, SecureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecureError::BadSecret(format!("cannot read secret file {}: {e}", path.display())))?;
        Secret::parse(&text)
            .map_err(|e| SecureError::BadSecret(format!("secret file {}: {}", path.display(), e.detail())))
    }

    /// The text form written to secret files.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_roundtrips_and_rejects_garbage() {
        let s = Secret::generate();
        assert_eq!(Secret::parse(&format!("  {}\n", s.to_hex())).unwrap(), s);
        assert!(Secret::parse("abc").is_err());
        assert!(Secret::parse(&"zz".repeat(32)).is_err());
        assert!(Secret::parse(&"00".repeat(32)).is_err());
        assert!(Secret::parse(&"é".repeat(32)).is_err());
        assert_ne!(Secret::generate(), s);
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}
