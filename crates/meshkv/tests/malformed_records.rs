//! A peer that sends records which are not well formed — no versions, a
//! winner out of range, an unknown format — is cut off with a protocol
//! error before anything of that batch is applied, and the node goes on
//! replicating and serving. (Before records travelled in their checked
//! storage encoding, one without versions reached the merge and panicked
//! the link's task.)

mod common;

use common::{start, RawPeer};
use meshkv::protocol::{codec, CatchUpOrder, CloseReason, Item, Message};
use meshkv::storage::{EncodedRecord, Record, Version};
use meshkv::{Db, Dot, Hlc, NodeId, Options, VersionVector};
use std::time::Duration;

/// A well-formed record of one version by `origin`, holding a value that
/// marks its bytes so they can be found in a frame.
fn record(origin: NodeId, seq: u64, marker: &str) -> EncodedRecord {
    let version = Version {
        dot: Dot::new(origin, seq),
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        deps: VersionVector::new(),
        value: Some(format!("value-{marker}").into_bytes()),
    };
    EncodedRecord::from_record(&Record::single(version))
}

/// Keys `a-good` and `b-bad` written by `origin`; the second holds `marker`.
fn two_items(origin: NodeId, marker: &str) -> Vec<Item> {
    vec![
        Item { key: b"a-good".to_vec(), record: record(origin, 1, "good") },
        Item { key: b"b-bad".to_vec(), record: record(origin, 2, marker) },
    ]
}

/// The frames of a catch-up of `items` from `origin`, with the encoding of
/// the record of key `bad` replaced by `corrupt` of it (same length).
fn catch_up_frames(origin: NodeId, items: Vec<Item>, bad: &[u8], corrupt: impl Fn(&mut [u8])) -> Vec<u8> {
    let snapshot: VersionVector = [(origin, items.len() as u64)].into_iter().collect();
    let target = items.iter().find(|i| i.key == bad).map(|i| i.record.as_bytes().to_vec());
    let mut out = Vec::new();
    codec::encode(
        &Message::CatchUpStart { since: VersionVector::new(), snapshot: snapshot.clone(), order: CatchUpOrder::Log },
        &mut out,
    );
    let start = out.len();
    codec::encode(&Message::CatchUp { id: 1, items, position: None }, &mut out);
    if let Some(target) = target {
        let at = out[start..]
            .windows(target.len())
            .position(|w| w == target.as_slice())
            .map(|p| start + p)
            .expect("the record's bytes are in the frame");
        corrupt(&mut out[at..at + target.len()]);
    }
    codec::encode(&Message::CaughtUp { id: 2, vv: snapshot }, &mut out);
    out
}

/// Turns a record's encoding into one that is not well formed.
type Corruption = fn(&mut [u8]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_close_the_link_and_apply_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let node = start(db.clone()).await;
    let addr = node.local_addr().expect("addr");

    let corruptions: [(&str, Corruption); 3] = [
        // The version count (right after the format byte) set to zero.
        ("no versions", |b| b[1] = 0),
        // The winner (the last byte) names a second version that is not there.
        ("winner out of range", |b| *b.last_mut().expect("byte") = 1),
        // A format this build does not know.
        ("unknown format", |b| b[0] = 0x7f),
    ];
    for (what, corrupt) in corruptions {
        let result = tokio::time::timeout(Duration::from_secs(20), async {
            let mut peer = RawPeer::connect(addr).await;
            peer.digest().await;
            let origin = peer.node;
            let frames = catch_up_frames(origin, two_items(origin, "bad"), b"b-bad", corrupt);
            peer.send(&frames).await;
            (origin, peer.close_reason().await)
        })
        .await;
        let (origin, reason) = result.unwrap_or_else(|_| panic!("{what}: the node neither applied nor closed"));
        assert_eq!(reason, Some(CloseReason::ProtocolError), "{what}");
        assert_eq!(db.get("a-good").expect("get"), None, "{what}: part of a refused batch was applied");
        assert_eq!(db.version_vector().get(origin), 0, "{what}: the vector covers a refused batch");
    }

    // The node still replicates: the same batch, well formed, is applied.
    let mut peer = RawPeer::connect(addr).await;
    peer.digest().await;
    let origin = peer.node;
    peer.send(&catch_up_frames(origin, two_items(origin, "fixed"), b"none", |_| {})).await;
    common::eventually("the well-formed batch is applied", || db.version_vector().get(origin) == 2).await;
    assert_eq!(db.get("a-good").expect("get").as_deref(), Some(&b"value-good"[..]));
    assert_eq!(db.get("b-bad").expect("get").as_deref(), Some(&b"value-fixed"[..]));

    // And it still takes local writes; the store is consistent.
    db.put("local", "ok").expect("put after the attack");
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    node.shutdown().await;
}

/// Well-formed bytes with an impossible history: versions whose causal
/// context names themselves, or that name each other in a cycle. The merge
/// used to drop every version of such a union and panic; now the link goes
/// on and the store keeps a record for every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_histories_never_empty_a_record_or_stop_the_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let local = db.put("k", "local").expect("put");
    let node = start(db.clone()).await;
    let addr = node.local_addr().expect("addr");

    let mut peer = RawPeer::connect(addr).await;
    peer.digest().await;
    let origin = peer.node;
    let version = |seq: u64, deps: &[(NodeId, u64)], value: &str| Version {
        dot: Dot::new(origin, seq),
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        deps: deps.iter().copied().collect(),
        value: Some(value.as_bytes().to_vec()),
    };
    // Over the local write, and naming its own dot.
    let own = version(1, &[(local.origin, local.seq), (origin, 1)], "self-aware");
    // Two siblings that each claim to have seen the other.
    let siblings = (vec![version(2, &[(origin, 3)], "left"), version(3, &[(origin, 2)], "right")], 0u32);
    let cycle: Record = postcard::from_bytes(&postcard::to_stdvec(&siblings).expect("encode")).expect("a record");
    let items = vec![
        Item { key: b"k".to_vec(), record: EncodedRecord::from_record(&Record::single(own)) },
        Item { key: b"z".to_vec(), record: EncodedRecord::from_record(&cycle) },
    ];
    peer.send(&catch_up_frames(origin, items, b"none", |_| {})).await;
    common::eventually("the catch-up is applied", || db.version_vector().get(origin) == 2).await;
    assert_eq!(db.get("k").expect("get").as_deref(), Some(&b"self-aware"[..]), "it supersedes the local write");
    assert_eq!(db.get("z").expect("get"), None, "nothing of the cycle is stored");
    db.put("after", "ok").expect("the store still takes writes");
    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    node.shutdown().await;
}
