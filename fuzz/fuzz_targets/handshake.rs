//! The connection handshake and the encrypted channel on arbitrary bytes.
//! The first byte picks the side and its secrets, the second how the rest
//! is cut into reads. Nothing panics; an initiator never accepts a
//! responder that did not prove the secret; after a responder's handshake
//! (which a replayed first message can complete) no forged byte decrypts;
//! plaintext mode passes bytes through unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::secure::{Handshake, Secret, Security};
use std::sync::OnceLock;

/// The fuzzing secrets; `make-seeds` builds its first messages with the
/// same ones, so seeds get past authentication.
fn secrets() -> &'static (Security, Security) {
    static S: OnceLock<(Security, Security)> = OnceLock::new();
    S.get_or_init(|| {
        let full = Secret::parse(&"3c".repeat(32)).expect("secret");
        let ro = Secret::parse(&"a7".repeat(32)).expect("secret");
        (
            Security::with_secret(full.clone()),
            Security { secret: Some(full), read_only_secret: Some(ro), ..Security::default() },
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let [choice, step, rest @ ..] = data else { return };
    let (one, both) = secrets();
    let plain = Security::default();
    let choice = choice % 5;
    let mut hs = match choice {
        0 => Handshake::responder(one),
        1 => Handshake::responder(both),
        2 => Handshake::responder(&plain),
        3 => Handshake::initiator(one).expect("initiator"),
        _ => Handshake::initiator(&plain).expect("initiator"),
    };
    let _ = hs.take_output();
    let mut pieces = rest.chunks((*step as usize).max(1));
    for piece in pieces.by_ref() {
        match hs.read(piece) {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => {
                let _ = hs.take_output();
                return;
            }
        }
    }
    let Some(mut done) = hs.established() else { return };
    assert!(choice != 3, "an initiator accepted a responder that did not prove the secret");
    let secured = choice < 2;
    assert!(!secured || done.plain.is_empty(), "forged bytes decrypted right after the handshake");
    let mut expected = done.plain.clone();
    let mut out = done.plain.clone();
    for piece in pieces {
        expected.extend_from_slice(piece);
        if done.opener.open(piece, &mut out).is_err() {
            break;
        }
    }
    if secured {
        assert_eq!(out, done.plain, "forged bytes decrypted");
    } else {
        assert_eq!(out, expected, "plaintext was altered");
    }
});
