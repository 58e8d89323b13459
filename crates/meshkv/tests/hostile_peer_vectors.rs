//! Version vectors from a peer are decoded only in their canonical form and
//! bounded: a shuffled vector (whose inserts would hold the writer lock for
//! a time quadratic in its length) closes the link as a protocol error, and
//! a peer inventing origins cannot make a node track more than
//! `MAX_ORIGINS` (past which its own messages would no longer fit a frame
//! and honest peers would be cut off). Local writes and honest replication
//! go on.

mod common;
use common::{eventually, RawPeer};

use meshkv::node::Node;
use meshkv::protocol::{codec, CatchUpOrder, CloseReason, Message, Mode};
use meshkv::storage::{EncodedRecord, Record, Version};
use meshkv::version::MAX_ORIGINS;
use meshkv::{Db, Dot, Hlc, NodeId, Options, VersionVector};

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A `CaughtUp { id, vv }` frame listing `entries` in the order given: the
/// public API builds only sorted vectors, the wire can carry any.
fn caught_up_frame(id: u64, entries: &[(u64, u64)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for v in [4, id, entries.len() as u64] {
        varint(v, &mut payload);
    }
    for &(o, s) in entries {
        varint(o, &mut payload);
        varint(s, &mut payload);
    }
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

fn catch_up_start() -> Vec<u8> {
    let empty = VersionVector::new();
    let mut out = Vec::new();
    codec::encode(&Message::CatchUpStart { since: empty.clone(), snapshot: empty, order: CatchUpOrder::Log }, &mut out);
    out
}

async fn open_node(dir: &tempfile::TempDir) -> Node {
    common::start(Db::open(dir.path(), Options::default()).expect("open")).await
}

#[test]
fn the_hand_encoded_frame_is_the_codecs() {
    let entries = [(3u64, 7u64), (300, 1), (1 << 40, 2)];
    let vv: VersionVector = entries.iter().map(|&(o, s)| (NodeId(o), s)).collect();
    let mut ours = Vec::new();
    codec::encode(&Message::CaughtUp { id: 9, vv }, &mut ours);
    assert_eq!(caught_up_frame(9, &entries), ours);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shuffled_vector_closes_the_link_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open_node(&dir).await;
    let mut peer = RawPeer::connect(a.local_addr().expect("bound")).await;
    peer.digest().await;
    let descending: Vec<(u64, u64)> = (1..=50_000u64).rev().map(|o| (o << 20, 1)).collect();
    peer.send(&[catch_up_start(), caught_up_frame(1, &descending)].concat()).await;
    assert_eq!(peer.close_reason().await, Some(CloseReason::ProtocolError));
    assert_eq!(a.db().version_vector().len(), 0, "none of its origins was taken");
    a.db().put("k", "v").expect("local writes go on");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_origins_stop_at_the_limit_and_honest_peers_still_sync() {
    let (da, db_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = open_node(&da).await;
    let addr = a.local_addr().expect("bound");
    let mut peer = RawPeer::connect(addr).await;
    peer.digest().await;
    let invented = |from: u64, n: u64| (from..from + n).map(|o| (o, 1)).collect::<Vec<_>>();
    // Just under the limit: a lot, but a peer may know that many.
    let under = MAX_ORIGINS as u64 - 10;
    peer.send(&[catch_up_start(), caught_up_frame(1, &invented(1_000, under))].concat()).await;
    eventually("the first vector applied", || a.db().version_vector().len() as u64 == under).await;
    // Past it: refused whole.
    peer.send(&[catch_up_start(), caught_up_frame(2, &invented(1_000 + under, 100))].concat()).await;
    assert_eq!(peer.close_reason().await, Some(CloseReason::ProtocolError));
    assert_eq!(a.db().version_vector().len() as u64, under, "nothing of the refused vector was taken");

    // An honest node still replicates both ways.
    a.db().put("from-a", "1").expect("put");
    let mut b = open_node(&db_dir).await;
    b.db().put("from-b", "2").expect("put");
    b.add_peer(addr, Mode::Sync);
    eventually("both ways", || {
        b.db().get("from-a").expect("get").is_some() && a.db().get("from-b").expect("get").is_some()
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The limit keeps room for this node's own origin, which its first write
/// adds; a record whose causal context names more origins than the limit
/// (a union of many versions' contexts) is still stored, read and
/// overwritten: the limit bounds the node's vector, not records.
#[test]
fn the_limit_leaves_room_for_our_own_origin_and_does_not_bound_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let own = db.node_id();
    let others =
        |n: usize| -> VersionVector { (1..).map(NodeId).filter(|o| *o != own).take(n).map(|o| (o, 1)).collect() };
    let none = Vec::<(Vec<u8>, EncodedRecord)>::new;
    let e = db.apply(none(), Some(&others(MAX_ORIGINS))).expect_err("no room left for our own writes");
    assert!(matches!(e, meshkv::Error::TooManyOrigins { .. }), "{e}");
    db.apply(none(), Some(&others(MAX_ORIGINS - 1))).expect("with room for our own origin");
    db.put("own", "v").expect("our first write");
    assert_eq!(db.version_vector().len(), MAX_ORIGINS);

    let deps: VersionVector = (1..=MAX_ORIGINS as u64 + 5).map(|o| (NodeId(o), 1)).collect();
    let remote = Record::single(Version {
        dot: Dot::new(NodeId(1 << 40), 1),
        hlc: Hlc::new(1_000, 0),
        deps,
        value: Some(b"r".to_vec()),
    });
    db.apply([(b"k".to_vec(), remote)], None).expect("applied");
    assert_eq!(db.get("k").expect("readable").as_deref(), Some(&b"r"[..]));
    db.put("k", "local").expect("overwrite");
    assert_eq!(db.get("k").expect("readable").as_deref(), Some(&b"local"[..]));
    assert!(db.verify().expect("verify").is_ok());
}
