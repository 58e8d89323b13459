//! A connection that replays a recorded handshake (message 1 travels in
//! clear) and follows it with bytes that are not ciphertext of the session
//! is refused before it reaches a link, through the same rate-limited
//! warning as a wrong secret: an eavesdropper cannot flood the log.

mod common;

use common::loopback;
use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::secure::{Handshake, Secret, Security};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A global subscriber that counts WARN events from meshkv and keeps their messages.
struct WarnCounter;
static WARNS: AtomicUsize = AtomicUsize::new(0);
static MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Msg(String);
impl tracing::field::Visit for Msg {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        if *e.metadata().level() == tracing::Level::WARN && e.metadata().target().starts_with("meshkv") {
            WARNS.fetch_add(1, Ordering::SeqCst);
            let mut m = Msg(String::new());
            e.record(&mut m);
            MESSAGES.lock().unwrap().push(m.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| tracing::subscriber::set_global_default(WarnCounter).expect("global subscriber"));
}

/// Sends `bytes` on a fresh connection and reads until the node closes it.
async fn hit(addr: SocketAddr, bytes: &[u8], then: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 4096];
    if !then.is_empty() {
        // The node's preamble and Noise message 2 (5 + 2 + 48 bytes).
        let mut got = 0;
        while got < 55 {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return,
                Ok(Ok(n)) => got += n,
            }
        }
        let _ = s.write_all(then).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// ALGORITHM.md §9: failed authentications are logged at warning level at
/// most once per 5 s. The attacker holds no secret, only one honest
/// client's first flight (preamble and Noise message 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_handshake_then_garbage_is_refused_under_the_rate_limit() {
    install();
    let secret = Secret::generate();
    let (_d, db) = common::temp_store();
    let security = Security::with_secret(secret.clone());
    let node = Node::start(db, NodeConfig { listen: loopback(), security: security.clone(), ..NodeConfig::default() })
        .await
        .expect("start");
    let addr = node.local_addr().unwrap();
    let mut events = node.events();

    // What an eavesdropper records from any honest client's connection.
    let recorded = Handshake::initiator(&security).expect("hs").take_output();
    // The attacker has no secret from here on.
    drop(secret);
    let mut garbage = vec![0x00, 0x20];
    garbage.extend_from_slice(&[0xAB; 0x20]);

    // Baseline: wrong-secret flood (rate-limited as documented).
    let wrong = Handshake::initiator(&Security::with_secret(Secret::generate())).expect("hs").take_output();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = WARNS.load(Ordering::SeqCst);
    for _ in 0..20 {
        hit(addr, &wrong, &[]).await;
    }
    let wrong_warns = WARNS.load(Ordering::SeqCst) - before;

    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = WARNS.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        hit(addr, &recorded, &garbage).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replay_warns = WARNS.load(Ordering::SeqCst) - before;
    let elapsed = started.elapsed();
    let mut errors = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let NodeEvent::Error { message, .. } = ev {
            errors.push(message);
        }
    }
    let sample: Vec<String> = MESSAGES.lock().unwrap().iter().rev().take(3).cloned().collect();
    assert!(
        errors.iter().any(|e| e.contains("malformed first frame")),
        "the refusals are reported as node events: {errors:?}; last warnings: {sample:?}"
    );
    assert!(wrong_warns <= 1, "baseline: wrong-secret refusals are rate-limited ({wrong_warns})");
    assert!(
        replay_warns <= 2,
        "20 unauthenticated connections (replayed message 1 + garbage) in {elapsed:?} logged {replay_warns} warnings"
    );
}
