//! Discovery announcements on arbitrary datagrams: never panics, and only
//! a datagram sealed with the cluster secret opens. The first byte picks
//! the mode: 0 opens the bytes as they are (a stranger's datagram, or a
//! seed sealed with the fuzzing secret); 1 builds an announcement from
//! them, seals it and checks that it opens to the same announcement.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::protocol::announce::{Announcement, MAX_AGE_MS};
use meshkv::secure::Secret;
use meshkv::NodeId;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// The fuzzing secret; `make_seeds` seals its seeds with the same one.
fn secret() -> &'static Secret {
    static S: OnceLock<Secret> = OnceLock::new();
    S.get_or_init(|| Secret::parse(&"3c".repeat(32)).expect("secret"))
}

/// "Now" for every check: the seeds are sealed at this time.
const NOW: u64 = 1_790_000_000_000;

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    if mode % 2 == 0 {
        if let Ok(a) = Announcement::open(rest, secret(), NOW) {
            assert!(a.sent_ms.abs_diff(NOW) <= MAX_AGE_MS, "a stale announcement opened");
            assert_eq!(a.seal(secret()).as_deref(), Some(rest), "an opened datagram is not its own sealing");
        }
        return;
    }
    let [a, b, c, d, e, f, g, h, p0, p1, skew, name @ ..] = rest else { return };
    let node = NodeId(u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]));
    let listen = SocketAddr::from(([127, 0, 0, 1], u16::from_le_bytes([*p0, *p1])));
    let sent_ms = NOW + u64::from(*skew) * 1_000 - 128_000;
    let cluster = String::from_utf8_lossy(name);
    let announcement = Announcement::new(&cluster, node, listen, sent_ms);
    let Some(datagram) = announcement.seal(secret()) else { return };
    match Announcement::open(&datagram, secret(), NOW) {
        Ok(opened) => assert_eq!(opened, announcement),
        Err(e) => assert!(sent_ms.abs_diff(NOW) > MAX_AGE_MS, "a fresh sealed announcement refused: {e}"),
    }
});
