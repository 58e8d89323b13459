//! Helpers shared by the multi-node integration tests.
#![allow(dead_code)]

pub mod link_ends;

use meshkv::node::{Node, NodeConfig};
use meshkv::Db;
use std::net::SocketAddr;
use std::time::Duration;

/// A store with default options in a fresh temporary directory (removed
/// when the returned guard is dropped).
pub fn temp_store() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), meshkv::Options::default()).expect("open");
    (dir, db)
}

/// 127.0.0.1 with an ephemeral port: tests never use any other address.
pub fn loopback() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Polls `check` every 20 ms until it holds; fails after 20 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a node for `db` listening on loopback, with default settings.
pub async fn start(db: Db) -> Node {
    Node::start(db, NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start")
}

/// Opens a raw connection to `addr` and completes an honest handshake with
/// the public sans-IO API (as a buggy or hostile client holding `security`
/// would); returns the socket and the sealer for what it sends next.
pub async fn raw_handshake(
    addr: SocketAddr,
    security: &meshkv::secure::Security,
) -> (tokio::net::TcpStream, meshkv::secure::Sealer) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut hs = meshkv::secure::Handshake::initiator(security).expect("handshake");
    s.write_all(&hs.take_output()).await.expect("write");
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "the node closed an honest handshake");
        if hs.read(&buf[..n]).expect("an honest handshake failed") {
            break;
        }
    }
    (s, hs.established().expect("established").sealer)
}

/// Starts a node for `db` listening on loopback that requires `secret`.
pub async fn start_secured(db: Db, secret: &meshkv::secure::Secret) -> Node {
    let security = meshkv::secure::Security::with_secret(secret.clone());
    Node::start(db, NodeConfig { listen: loopback(), security, ..NodeConfig::default() }).await.expect("start")
}

/// Starts a node for `db` listening on loopback, serving clients with `server`.
pub async fn start_serving(db: Db, server: meshkv::node::ServerOptions) -> Node {
    Node::start(db, NodeConfig { listen: loopback(), server, ..NodeConfig::default() }).await.expect("start")
}

/// A loopback TCP proxy in front of a node that can cut connections.
///
/// Accepts on 127.0.0.1 (ephemeral port), dials the target for each accepted
/// connection and copies bytes both ways. [`Proxy::cut`] drops every
/// connection proxied at that moment (later ones keep working);
/// [`Proxy::cut_on_next_request`] drops the next connection on which the
/// client sends anything, without forwarding those bytes, and
/// [`Proxy::cut_on_next_reply`] the next one on which the node sends
/// anything (the request was handled, its reply is lost).
pub struct Proxy {
    addr: SocketAddr,
    shared: std::sync::Arc<ProxyShared>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyShared {
    target: SocketAddr,
    generation: tokio::sync::watch::Sender<u64>,
    armed_request: std::sync::atomic::AtomicBool,
    armed_reply: std::sync::atomic::AtomicBool,
    accepted: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
    /// Every byte forwarded, per direction: [to the node, from the node].
    captured: [std::sync::Mutex<Vec<u8>>; 2],
}

impl Proxy {
    /// Starts a proxy forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind(loopback().expect("loopback")).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let shared = std::sync::Arc::new(ProxyShared {
            target,
            generation,
            armed_request: std::sync::atomic::AtomicBool::new(false),
            armed_reply: std::sync::atomic::AtomicBool::new(false),
            accepted: std::sync::atomic::AtomicU64::new(0),
            dropped: std::sync::atomic::AtomicU64::new(0),
            captured: Default::default(),
        });
        let task = tokio::spawn(proxy_accept(listener, std::sync::Arc::clone(&shared)));
        Proxy { addr, shared, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection proxied right now.
    pub fn cut(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// How many cuts were made so far.
    pub fn cuts(&self) -> u64 {
        *self.shared.generation.borrow()
    }

    /// The next time a client sends bytes on any proxied connection, drop
    /// that connection instead of forwarding them (once).
    pub fn cut_on_next_request(&self) {
        self.shared.armed_request.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next time the node sends bytes on any proxied connection, drop
    /// that connection instead of forwarding them (once).
    pub fn cut_on_next_reply(&self) {
        self.shared.armed_reply.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a `cut_on_next_request` or `cut_on_next_reply` is still pending.
    pub fn armed(&self) -> bool {
        self.shared.armed_request.load(std::sync::atomic::Ordering::SeqCst)
            || self.shared.armed_reply.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections `cut_on_next_request`/`cut_on_next_reply` dropped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections accepted so far (the first connection plus one per reconnect).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every byte forwarded so far: (towards the node, from the node).
    pub fn captured(&self) -> (Vec<u8>, Vec<u8>) {
        let get = |i: usize| self.shared.captured[i].lock().expect("capture").clone();
        (get(0), get(1))
    }

    /// Stops accepting and drops every proxied connection.
    pub fn stop(self) {
        self.cut();
        self.task.abort();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_accept(listener: tokio::net::TcpListener, shared: std::sync::Arc<ProxyShared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Subscribe before dialing: a cut from now on drops this connection.
        let mut cut = shared.generation.subscribe();
        cut.borrow_and_update();
        let shared = std::sync::Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(shared.target).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_rd, client_wr) = client.into_split();
            let (server_rd, server_wr) = server.into_split();
            tokio::select! {
                _ = pump(client_rd, server_wr, &shared.armed_request, &shared, 0) => {}
                _ = pump(server_rd, client_wr, &shared.armed_reply, &shared, 1) => {}
                _ = cut.changed() => {}
            }
            // Both sockets are dropped here: the client and the node each see
            // the connection close.
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    armed: &std::sync::atomic::AtomicBool,
    shared: &ProxyShared,
    direction: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            shared.dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        shared.captured[direction].lock().expect("capture").extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The `Hello` of a client with a fresh random id, for raw connections.
pub fn client_hello() -> meshkv::protocol::Message {
    use meshkv::protocol::{Hello, Message, Mode, Role, MAGIC, PROTOCOL_VERSION};
    Message::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster: "meshkv".into(),
        node: meshkv::NodeId::random(),
        role: Role::Client,
        mode: Mode::Sync,
        policy: 0,
        max_frame: 0,
        incarnation: 0,
    })
}

/// The `Hello` of a peer `node` running the default cluster name and
/// conflict policy, for raw connections.
pub fn peer_hello(node: meshkv::NodeId, mode: meshkv::protocol::Mode) -> meshkv::protocol::Message {
    use meshkv::protocol::{Hello, Message, Role, MAGIC, PROTOCOL_VERSION};
    Message::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster: meshkv::node::NodeConfig::default().link.cluster,
        node,
        role: Role::Peer,
        mode,
        policy: meshkv::ConflictPolicy::LastWriterWins.fingerprint(),
        max_frame: 0,
        incarnation: 0,
    })
}

/// A validation hook refusing, with `message`, any write touching a key
/// under `prefix`; counts its calls in `calls`.
pub fn forbid_prefix(
    prefix: &'static [u8],
    message: &'static str,
    calls: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::sync::Arc<meshkv::node::WriteHook> {
    use meshkv::protocol::BatchOp;
    let calls = std::sync::Arc::clone(calls);
    std::sync::Arc::new(move |ops: &[BatchOp]| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let forbidden = ops.iter().any(|op| match op {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key.starts_with(prefix),
        });
        if forbidden {
            Err(message.to_string())
        } else {
            Ok(())
        }
    })
}

use meshkv::protocol::{codec, Message};

/// A plaintext connection to a node, speaking as a peer that pushes (as a
/// buggy or hostile peer would, through the public codec).
pub struct RawPeer {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
    /// The node id it presented.
    pub node: meshkv::NodeId,
}

impl RawPeer {
    /// Connects and exchanges hellos (as a pushing peer with a fresh id).
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        RawPeer::connect_as(addr, meshkv::protocol::Mode::Push).await
    }

    /// Connects and exchanges hellos as a peer with a fresh id in `mode`.
    pub async fn connect_as(addr: SocketAddr, mode: meshkv::protocol::Mode) -> RawPeer {
        use tokio::io::AsyncWriteExt;
        let node = meshkv::NodeId::random();
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut out = b"MKV1\x00".to_vec();
        codec::encode(&peer_hello(node, mode), &mut out);
        s.write_all(&out).await.expect("send hello");
        let mut peer = RawPeer { s, buf: Vec::new(), node };
        peer.fill(5).await;
        assert_eq!(&peer.buf[..5], b"MKV1\x00", "the node's preamble");
        peer.buf.drain(..5);
        peer
    }

    async fn fill(&mut self, len: usize) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        while self.buf.len() < len {
            let n = self.s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        true
    }

    /// The next message from the node; `None` once it has closed.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some((msg, used)) = codec::decode(&self.buf, codec::DEFAULT_MAX_FRAME).expect("frame from the node")
            {
                self.buf.drain(..used);
                return Some(msg);
            }
            let want = self.buf.len() + 1;
            if !self.fill(want).await {
                return None;
            }
        }
    }

    /// Waits for the node's digest (after its hello).
    pub async fn digest(&mut self) -> meshkv::VersionVector {
        loop {
            match self.recv().await.expect("the node closed before its digest") {
                Message::Digest { vv, .. } => return vv,
                Message::Hello(_) | Message::Ping | Message::Peers { .. } => {}
                other => panic!("unexpected {} before the digest", other.kind()),
            }
        }
    }

    /// Sends already encoded frames.
    pub async fn send(&mut self, frames: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(frames).await.expect("send");
    }

    /// The reason the node closes with (`None`: closed without one).
    pub async fn close_reason(&mut self) -> Option<meshkv::protocol::CloseReason> {
        while let Some(msg) = self.recv().await {
            if let Message::Close { reason } = msg {
                return Some(reason);
            }
        }
        None
    }
}

/// The most bytes written into one file under `dir`: blocks in use, as the
/// engine's journal is preallocated, sparse, far beyond what it holds. The
/// full-disk tests set `RLIMIT_FSIZE` just past it.
pub fn largest_written_file(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut largest = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        let written = if meta.is_dir() { largest_written_file(&entry.path()) } else { meta.blocks() * 512 };
        largest = largest.max(written);
    }
    largest
}
