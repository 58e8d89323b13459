//! A peer's life in the node runtime: events report each link once
//! (a losing duplicate dial or a replaced link is not announced nor
//! reported gone), a peer removed mid-handshake is not linked, re-adding a
//! peer leaves one dial loop, shutdown is prompt with silent peers and
//! half-open sockets and leaves the store free to reopen, is bounded even
//! when a write hook never returns, and a push-only link reports `Live`.

mod common;
use common::{eventually, loopback};

use meshkv::node::{Node, NodeConfig, NodeEvent, PeerState};
use meshkv::protocol::Mode;
use meshkv::{Db, Options};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

async fn start_cfg(dir: &tempfile::TempDir, cfg: NodeConfig) -> Node {
    let db = Db::open(dir.path(), Options::default()).expect("open");
    Node::start(db, NodeConfig { listen: loopback(), ..cfg }).await.expect("start")
}

async fn start(dir: &tempfile::TempDir) -> Node {
    start_cfg(dir, NodeConfig::default()).await
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<NodeEvent>) -> Vec<NodeEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

/// A second (losing) dial to an already linked peer produces no
/// `Disconnected` for a connection that was never announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_duplicate_dial_is_neither_announced_nor_reported_gone() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = start(&d1).await;
    let n2 = start(&d2).await;
    let (mut small, mut large) = if n1.db().node_id() < n2.db().node_id() { (n1, n2) } else { (n2, n1) };
    let mut small_events = small.events();
    let mut large_events = large.events();
    let (small_addr, large_addr) = (small.local_addr().unwrap(), large.local_addr().unwrap());
    let large_id = large.db().node_id();
    let small_id = small.db().node_id();
    // The smaller node dials first: its link is the one both keep.
    small.add_peer(large_addr, Mode::Sync);
    eventually("linked", || small.peers().iter().any(|p| p.node_id == Some(large_id) && p.state == PeerState::Live))
        .await;
    // The larger node dials too: its connection loses (Duplicate).
    large.add_peer(small_addr, Mode::Sync);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(small.peers().iter().any(|p| p.node_id == Some(large_id)), "link still up");
    for (who, events, peer) in
        [("small", drain(&mut small_events), large_id), ("large", drain(&mut large_events), small_id)]
    {
        let mut connected: Vec<SocketAddr> = Vec::new();
        let mut up = 0i64;
        for e in &events {
            match e {
                NodeEvent::Connected { peer: p, addr } if *p == peer => {
                    connected.push(*addr);
                    up += 1;
                }
                NodeEvent::Disconnected { peer: p, addr, .. } if *p == peer => {
                    up -= 1;
                    assert!(
                        connected.contains(addr),
                        "{who}: Disconnected({addr}) for a connection never announced Connected; events: {events:?}"
                    );
                }
                _ => {}
            }
        }
        assert_eq!(up, 1, "{who}: connected minus disconnected while the link is up; events: {events:?}");
    }
    small.shutdown().await;
    large.shutdown().await;
}

/// Accepts connections, waits `delay`, then forwards them to `target`.
/// Returns its address and a flag set once it accepted a connection.
async fn delaying_proxy(target: SocketAddr, delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(loopback().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut out) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// A peer removed while its dial is in the handshake does not stay linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_during_its_handshake_is_not_linked() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = start(&d1).await;
    let b = start(&d2).await;
    let (proxy, accepted) = delaying_proxy(b.local_addr().unwrap(), Duration::from_millis(800)).await;
    a.add_peer(proxy, Mode::Sync);
    // Removed while the dial waits on the proxy, before its handshake.
    eventually("the dial reached the proxy", || accepted.load(Ordering::SeqCst) > 0).await;
    a.remove_peer(proxy);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b_id = b.db().node_id();
    let linked = a.peers().into_iter().filter(|p| p.node_id == Some(b_id)).collect::<Vec<_>>();
    assert!(linked.is_empty(), "removed peer is still linked: {linked:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Shutdown with one static peer that accepts TCP but never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_a_silent_peer() {
    let silent = TcpListener::bind(loopback().unwrap()).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            socks.push(s);
        }
    });
    let d = tempfile::tempdir().unwrap();
    let mut a = start(&d).await;
    a.add_peer(silent_addr, Mode::Sync);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    a.shutdown().await;
    let took = t.elapsed();
    held.abort();
    // Before the fix it waited out its 5 s bound.
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
}

/// After shutdown, a socket still in its handshake is closed promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_still_in_their_handshake() {
    let d = tempfile::tempdir().unwrap();
    let a = start(&d).await;
    let mut s = TcpStream::connect(a.local_addr().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.shutdown().await;
    let mut buf = [0u8; 64];
    let res = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(res.is_ok(), "the node still holds a handshaking socket 3 s after shutdown returned");
}

/// Removing and re-adding a peer quickly leaves one dial loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_and_re_adding_a_peer_leaves_one_dial_loop() {
    let listener = TcpListener::bind(loopback().unwrap()).await.unwrap();
    let target = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let d = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_millis(500),
        ..NodeConfig::default()
    };
    let mut a = start_cfg(&d, cfg).await;
    a.add_peer(target, Mode::Sync);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.remove_peer(target);
        a.add_peer(target, Mode::Sync);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dials = accepted.load(Ordering::SeqCst) - before;
    a.shutdown().await;
    task.abort();
    // One dial loop dials about every 500 ms: about 6 in 3 s.
    assert!(dials <= 15, "{dials} dials in 3 s to one peer (expected ~6 from one dial loop)");
}

/// The pusher reports a push-only link `Live` once its catch-up went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_only_link_reports_live() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = start(&d1).await;
    let b = start(&d2).await;
    a.add_peer(b.local_addr().unwrap(), Mode::Push);
    a.db().put("k", "v").unwrap();
    eventually("pushed", || b.db().get("k").unwrap().is_some()).await;
    a.db().put("k2", "v").unwrap();
    eventually("pushed live", || b.db().get("k2").unwrap().is_some()).await;
    let b_id = b.db().node_id();
    eventually("the pusher reports the link live", || {
        let st: Vec<_> = a.peers().into_iter().filter(|p| p.node_id == Some(b_id)).collect();
        !st.is_empty() && st.iter().all(|p| p.state == PeerState::Live)
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A client that stops reading replies holds its session in a write until
/// the idle timeout; shutdown aborts it after its 5 s bound. The store must
/// be free to open again once `shutdown` returns (a restart on the same
/// directory), not still held by the aborted session.
#[tokio::test(flavor = "current_thread")]
async fn the_store_can_be_reopened_once_shutdown_returns_with_a_client_that_does_not_read() {
    use meshkv::protocol::{codec, Message, Request};
    use tokio::io::AsyncWriteExt;
    let d = tempfile::tempdir().unwrap();
    let a = start(&d).await;
    a.db().put("big", vec![7u8; 4 << 20]).unwrap();
    let mut raw = TcpStream::connect(a.local_addr().unwrap()).await.unwrap();
    let mut out = b"MKV1\x00".to_vec();
    codec::encode(&common::client_hello(), &mut out);
    for id in 1..=64 {
        codec::encode(&Message::Request { id, request: Request::Get { key: b"big".to_vec() } }, &mut out);
    }
    raw.write_all(&out).await.unwrap();
    // 256 MiB of replies, never read: the session blocks writing them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    a.shutdown().await;
    eprintln!("shutdown took {:?}", t.elapsed());
    match Db::open(d.path(), Options::default()) {
        Ok(db) => assert_eq!(db.get("big").unwrap().map(|v| v.len()), Some(4 << 20)),
        Err(e) => panic!("reopening the store right after shutdown returned: {e}"),
    }
    drop(raw);
}

/// A write hook blocked far longer than shutdown's bounds holds a runtime
/// worker, and with it the session and the store: no abort can drop that
/// task. Shutdown gives up on it after its 5 s bound and
/// `SHUTDOWN_RELEASE_WAIT` (with a warning) instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_though_a_write_hook_never_does() {
    use meshkv::client::{Client, ClientOptions};
    use meshkv::node::{ServerOptions, SHUTDOWN_RELEASE_WAIT};
    use meshkv::protocol::BatchOp;
    use std::sync::Mutex;
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(Some((entered_tx, release_rx)));
    let hook = Arc::new(move |_: &[BatchOp]| {
        if let Some((entered, release)) = gate.lock().expect("gate").take() {
            let _ = entered.send(());
            let _ = release.recv_timeout(Duration::from_secs(120));
        }
        Ok(())
    });
    let d = tempfile::tempdir().unwrap();
    let server = ServerOptions { hook: Some(hook), ..ServerOptions::default() };
    let a = start_cfg(&d, NodeConfig { server, ..NodeConfig::default() }).await;
    let options = ClientOptions { retry: false, ..ClientOptions::default() };
    let client = Client::connect(a.local_addr().unwrap(), options).await.expect("connect");
    let put = tokio::spawn(async move { client.put("k", "v").await });
    tokio::time::timeout(Duration::from_secs(20), entered_rx).await.expect("the write reaches the hook").unwrap();

    let bound = Duration::from_secs(5) + SHUTDOWN_RELEASE_WAIT;
    let t = Instant::now();
    let stopped = tokio::time::timeout(bound + Duration::from_secs(5), a.shutdown()).await;
    let took = t.elapsed();
    // Released before asserting, so that the test's runtime can end.
    release_tx.send(()).expect("release the hook");
    let _ = tokio::time::timeout(Duration::from_secs(20), put).await;
    assert!(stopped.is_ok(), "shutdown still waiting for the blocked hook after {took:?}");
    assert!(took < bound + Duration::from_secs(3), "shutdown took {took:?}");
}
