//! A `Hello` of another protocol version is refused with a reason the
//! other version can read, over real TCP on loopback: an older side gets
//! `Close { VersionMismatch }` (a frame every version decodes alike), a
//! newer one our version first, so it can name both; the refusing node's
//! event names both versions, and a client refused by a node of another
//! version says which versions meet.

mod common;

use common::{loopback, raw_handshake};
use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::codec::{self, DEFAULT_MAX_FRAME};
use meshkv::protocol::{CloseReason, Hello, Message, Mode, Role, MAGIC, PROTOCOL_VERSION};
use meshkv::secure::{Handshake, Security};
use meshkv::{Db, NodeId, Options};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const OLDER: u16 = PROTOCOL_VERSION - 1;
const NEWER: u16 = PROTOCOL_VERSION + 1;

fn hello(version: u16, role: Role) -> Hello {
    Hello {
        magic: MAGIC,
        version,
        cluster: "meshkv".into(),
        node: NodeId(77),
        role,
        mode: Mode::Sync,
        policy: 0,
        max_frame: 0,
        incarnation: 0,
    }
}

/// How another version's `Hello` is laid out.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Ours: the fields match and only the version differs.
    Ours,
    /// Ours without its last field (`incarnation` 0, one byte), as version
    /// 5 had it: it does not decode here.
    LastFieldDropped,
    /// Ours with one more field behind it, as a later version may add: it
    /// decodes here with a byte left over.
    FieldAppended,
}

/// The frame of `hello` in `layout`.
fn frame(hello: &Hello, layout: Layout) -> Vec<u8> {
    let mut payload = postcard::to_stdvec(&Message::Hello(hello.clone())).expect("encode");
    match layout {
        Layout::Ours => {}
        Layout::LastFieldDropped => {
            payload.pop();
        }
        Layout::FieldAppended => payload.push(1),
    }
    [&(payload.len() as u32).to_be_bytes()[..], &payload].concat()
}

/// Decodes every frame of `bytes`, which must hold whole frames only.
fn decode_all(mut bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (msg, used) = codec::decode(bytes, DEFAULT_MAX_FRAME).expect("decodes").expect("a whole frame");
        out.push(msg);
        bytes = &bytes[used..];
    }
    out
}

/// Sends `first` as the first frame of a plaintext connection to `addr`;
/// returns everything the node sends back until it closes.
async fn answer_to(addr: SocketAddr, first: &[u8]) -> Vec<u8> {
    let (mut s, mut sealer) = raw_handshake(addr, &Security::default()).await;
    let mut wire = Vec::new();
    sealer.seal(first, &mut wire).expect("seal");
    s.write_all(&wire).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the node closes the connection")
        .expect("read");
    got
}

async fn start() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let node = Node::start(db, NodeConfig { listen: loopback(), ..NodeConfig::default() }).await.expect("start");
    (dir, node)
}

/// A peer or client of an older version gets `Close { VersionMismatch }`
/// alone, as the bytes every version decodes: whether its `Hello` decodes
/// here (the link or the client session refuses it) or not (the codec
/// reads its version). The node's event names both versions.
#[tokio::test]
async fn an_older_version_gets_a_close_it_decodes() {
    let (_dir, node) = start().await;
    let addr = node.local_addr().expect("listening");
    let mut events = node.events();
    for layout in [Layout::LastFieldDropped, Layout::Ours] {
        for role in [Role::Peer, Role::Client] {
            let got = answer_to(addr, &frame(&hello(OLDER, role), layout)).await;
            assert_eq!(got, [0, 0, 0, 2, 12, 5], "{layout:?} {role:?}: {:?}", decode_all(&got));
            assert_eq!(decode_all(&got), [Message::Close { reason: CloseReason::VersionMismatch }]);
        }
    }
    let named = format!("protocol version {OLDER}, this build {PROTOCOL_VERSION}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv()).await.expect("an event names both versions");
        if let Ok(NodeEvent::Error { message, .. }) = event {
            if message.contains(&named) {
                break;
            }
        }
    }
    node.shutdown().await;
}

/// A peer or client of a newer version gets a `Hello` that states our
/// version (and nothing else) ahead of the `Close`, so it can name both.
#[tokio::test]
async fn a_newer_version_gets_our_version_ahead_of_the_close() {
    let (_dir, node) = start().await;
    let addr = node.local_addr().expect("listening");
    for layout in [Layout::FieldAppended, Layout::Ours] {
        for role in [Role::Peer, Role::Client] {
            let got = decode_all(&answer_to(addr, &frame(&hello(NEWER, role), layout)).await);
            let Some(Message::Hello(ours)) = got.first() else { panic!("{layout:?} {role:?}: {got:?}") };
            assert_eq!((ours.magic, ours.version), (MAGIC, PROTOCOL_VERSION));
            assert_eq!((ours.cluster.as_str(), ours.node), ("", NodeId(0)), "no more than the version");
            assert_eq!(got[1..], [Message::Close { reason: CloseReason::VersionMismatch }], "{layout:?} {role:?}");
        }
    }
    node.shutdown().await;
}

/// A stand-in node on loopback that completes the plaintext handshake,
/// reads the client's `Hello` and answers with `reply`; returns its address.
async fn fake_node(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind(loopback().expect("loopback")).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut hs = Handshake::responder(&Security::default());
        let mut buf = vec![0u8; 1024];
        let mut input = loop {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "the client closed during the handshake");
            if hs.read(&buf[..n]).expect("handshake") {
                s.write_all(&hs.take_output()).await.expect("write");
                break hs.established().expect("established").plain;
            }
        };
        while !codec::frame_ready(&input, DEFAULT_MAX_FRAME) {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "the client closed before its hello");
            input.extend_from_slice(&buf[..n]);
        }
        let Ok(Some((Message::Hello(h), _))) = codec::decode(&input, DEFAULT_MAX_FRAME) else { panic!("no hello") };
        assert_eq!(h.version, PROTOCOL_VERSION);
        s.write_all(&reply).await.expect("write");
        let _ = s.shutdown().await;
        // Until the client is done reading.
        let _ = s.read(&mut buf).await;
    });
    addr
}

fn encoded(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for msg in msgs {
        codec::encode(msg, &mut out);
    }
    out
}

async fn connect_error(addr: SocketAddr) -> String {
    let opts = ClientOptions { connect_timeout: Duration::from_secs(10), ..ClientOptions::default() };
    Client::connect(addr, opts).await.err().expect("refused").to_string()
}

/// A client refused by a newer node names both versions: from the node's
/// `Hello`, whether it decodes here or not.
#[tokio::test]
async fn a_client_refused_by_a_newer_node_names_both_versions() {
    let close = Message::Close { reason: CloseReason::VersionMismatch };
    for layout in [Layout::FieldAppended, Layout::Ours] {
        let reply = [frame(&hello(NEWER, Role::Peer), layout), encoded(std::slice::from_ref(&close))].concat();
        let err = connect_error(fake_node(reply).await).await;
        let named = format!("the node speaks protocol version {NEWER}, this client {PROTOCOL_VERSION}");
        assert!(err.contains(&named), "{layout:?}: {err}");
    }
}

/// A client refused by a node that only says `VersionMismatch` (an older
/// node of this behaviour) names its own version.
#[tokio::test]
async fn a_client_refused_without_a_version_names_its_own() {
    let reply = encoded(&[Message::Close { reason: CloseReason::VersionMismatch }]);
    let err = connect_error(fake_node(reply).await).await;
    let named = format!("does not speak this client's protocol version {PROTOCOL_VERSION}");
    assert!(err.contains(&named), "{err}");
}
