//! A node under hostile input keeps serving: random garbage, truncated
//! handshakes and frames, oversized length prefixes (before and after
//! authentication), tampered ciphertext and a thousand idle connections are
//! thrown at it while a healthy client works. The healthy client sees no
//! error, a new client still gets in, and nothing written is lost.

mod common;

use common::loopback;
use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig};
use meshkv::secure::{Secret, Security};
use meshkv::{Db, Options};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const IDLE_CONNECTIONS: usize = 1000;
const GARBAGE_CONNECTIONS: usize = 300;

/// One hostile connection, chosen by `kind`. Returns the socket when the
/// attack is to hold it open.
async fn attack(addr: SocketAddr, security: &Security, kind: u32, rng: &mut StdRng) -> Option<TcpStream> {
    let mode = if security.is_enabled() { 1u8 } else { 0 };
    let mut noise = vec![0u8; rng.random_range(1..4096)];
    rng.fill_bytes(&mut noise);
    let (mut s, bytes, hold) = match kind {
        // Random bytes from the first byte on.
        0 => (TcpStream::connect(addr).await.ok()?, noise, false),
        // A valid preamble, then random bytes.
        1 => (TcpStream::connect(addr).await.ok()?, [b"MKV1".as_slice(), &[mode], &noise].concat(), false),
        // An oversized handshake message length.
        2 => (TcpStream::connect(addr).await.ok()?, [b"MKV1".as_slice(), &[1, 0xff, 0xff], &noise].concat(), false),
        // A truncated preamble or handshake, then silence.
        3 => (TcpStream::connect(addr).await.ok()?, [b"MKV1".as_slice(), &[mode, 0]].concat(), true),
        // Authenticated, then a 4 GiB frame length prefix.
        4 => {
            let (s, mut sealer) = common::raw_handshake(addr, security).await;
            let mut wire = Vec::new();
            sealer.seal(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3], &mut wire).ok()?;
            (s, wire, false)
        }
        // Authenticated, then well-framed garbage.
        5 => {
            let (s, mut sealer) = common::raw_handshake(addr, security).await;
            let frame = [&(noise.len() as u32).to_be_bytes()[..], &noise].concat();
            let mut wire = Vec::new();
            sealer.seal(&frame, &mut wire).ok()?;
            (s, wire, false)
        }
        // Authenticated, then a truncated frame, then silence.
        6 => {
            let (s, mut sealer) = common::raw_handshake(addr, security).await;
            let mut wire = Vec::new();
            sealer.seal(&[0, 0, 1, 0, 7], &mut wire).ok()?;
            (s, wire, true)
        }
        // Authenticated, then bytes that are not ciphertext of the session.
        _ => {
            let (s, _) = common::raw_handshake(addr, security).await;
            let forged = [&[0x01, 0x00][..], &noise[..noise.len().min(256)]].concat();
            (s, forged, false)
        }
    };
    let _ = s.write_all(&bytes).await;
    hold.then_some(s)
}

async fn survive(security: Security) {
    let _ = rlimit::increase_nofile_limit(8192);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let cfg = NodeConfig { listen: loopback(), security: security.clone(), ..NodeConfig::default() };
    let node = Node::start(db.clone(), cfg).await.expect("start");
    let addr = node.local_addr().expect("addr");
    let options = ClientOptions { secret: security.secret.clone(), retry: false, ..ClientOptions::default() };
    let healthy = Client::connect(addr, options.clone()).await.expect("healthy client");

    // The healthy client works until the attack is over (bounded in count and time).
    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move {
        let started = Instant::now();
        let mut written = 0u32;
        while !*done.borrow_and_update() && written < 50_000 && started.elapsed() < Duration::from_secs(60) {
            let key = format!("healthy/{written:06}");
            healthy.put(key.as_bytes(), key.as_bytes()).await.expect("healthy put failed during the attack");
            let got = healthy.get(key.as_bytes()).await.expect("healthy get failed during the attack");
            assert_eq!(got.as_deref(), Some(key.as_bytes()));
            written += 1;
        }
        written
    });

    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut held = Vec::new();
    for i in 0..GARBAGE_CONNECTIONS {
        let kind = i as u32 % 8;
        if let Some(s) = attack(addr, &security, kind, &mut rng).await {
            held.push(s);
        }
    }
    for i in 0..IDLE_CONNECTIONS {
        match TcpStream::connect(addr).await {
            Ok(s) => held.push(s),
            Err(e) => panic!("idle connection {i} could not connect: {e}"),
        }
    }
    // With every idle socket still open, a new client gets in.
    let newcomer = Client::connect(addr, options.clone()).await.expect("a new client is locked out by idle sockets");
    newcomer.put("newcomer", "in").await.expect("newcomer put");

    let _ = done_tx.send(true);
    let written = worker.await.expect("healthy client");
    assert!(written > 0, "the healthy client made no progress");
    eprintln!("healthy client: {written} puts and gets during the attack");
    drop(held);

    // Nothing was lost, and the store is intact.
    for i in 0..written {
        let key = format!("healthy/{i:06}");
        assert_eq!(db.get(key.as_bytes()).expect("get").as_deref(), Some(key.as_bytes()), "lost {key}");
    }
    assert_eq!(db.get("newcomer").expect("get").as_deref(), Some(&b"in"[..]));
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "store inconsistent after the attack: {report:?}");
    let after = Client::connect(addr, options).await.expect("the node still serves");
    assert_eq!(after.get("newcomer").await.expect("get").as_deref(), Some(&b"in"[..]));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_node_survives_hostile_input() {
    survive(Security::with_secret(Secret::generate())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_node_survives_hostile_input() {
    survive(Security::default()).await;
}
