//! Writes the committed seed corpus: real frames of every message kind
//! (from a real store's records), their payloads, and real handshake
//! openings made with the fuzzing secrets.
//!
//! `cargo run --example make_seeds` (from `fuzz/`); rerun when the protocol changes.

use meshkv::protocol::announce::Announcement;
use meshkv::protocol::{
    codec, BatchOp, CatchUpOrder, CloseReason, Hello, Item, Message, Mode, Request, Response, Role, MAGIC,
    PROTOCOL_VERSION,
};
use meshkv::secure::{Handshake, Secret, Security};
use meshkv::storage::{KeySkip, Position, ResumePoint};
use meshkv::{Db, Dot, KeyRange, NodeId, Options, ScanOptions, VersionVector};
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let messages = messages();
    let mut all = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let mut frame = Vec::new();
        codec::encode(msg, &mut frame);
        let decoded = codec::decode(&frame, codec::DEFAULT_MAX_FRAME);
        assert!(matches!(decoded, Ok(Some((_, n))) if n == frame.len()), "seed {i} must decode: {decoded:?}");
        write(&root.join("message_decode"), i, &frame[codec::HEADER_LEN..]);
        // frame_decode: a split byte, then the frame.
        write(&root.join("frame_decode"), i, &[&[(frame.len() / 2) as u8], &frame[..]].concat());
        all.extend_from_slice(&frame);
    }
    write(&root.join("frame_decode"), messages.len(), &[&[7u8], &all[..]].concat());

    let full = Secret::parse(&"3c".repeat(32)).expect("secret");
    let ro = Secret::parse(&"a7".repeat(32)).expect("secret");
    let mut seeds = Vec::new();
    for (choice, secret) in [(0u8, Some(full.clone())), (1, Some(ro)), (2, None)] {
        let security = Security { secret, ..Security::default() };
        let opening = Handshake::initiator(&security).expect("initiator").take_output();
        seeds.push([&[choice, 255][..], &opening, b"\x00\x20garbage after the handshake......"].concat());
        seeds.push([&[choice, 3][..], &opening].concat());
    }
    let responder_reply = [&MAGIC[..], &[1, 0, 48], &[0x5a; 48]].concat();
    seeds.push([&[3u8, 255][..], &responder_reply].concat());
    seeds.push([&[3u8, 255][..], &MAGIC[..], &[1, 0, 0]].concat());
    seeds.push([&[4u8, 255][..], &MAGIC[..], &[0], b"\x00\x00\x00\x01\x09"].concat());
    for (i, seed) in seeds.iter().enumerate() {
        write(&root.join("handshake"), i, seed);
    }
    // announce: mode 0 with datagrams sealed at the target's "now", mode 1 with field bytes.
    let now = 1_790_000_000_000;
    let listen = std::net::SocketAddr::from(([0, 0, 0, 0], 7420));
    let sealed = |cluster: &str, sent_ms: u64| {
        Announcement::new(cluster, NodeId(42), listen, sent_ms).seal(&full).expect("fits")
    };
    let announces = [
        [&[0u8][..], &sealed("meshkv", now)].concat(),
        [&[0u8][..], &sealed("prod", now - 60_000)].concat(),
        [&[1u8][..], &[42, 0, 0, 0, 0, 0, 0, 0, 0x1c, 0x1d, 128], b"meshkv"].concat(),
    ];
    for (i, seed) in announces.iter().enumerate() {
        write(&root.join("announce"), i, seed);
    }
    println!(
        "wrote {} frame seeds, {} handshake seeds and {} announcement seeds under {}",
        messages.len() + 1,
        seeds.len(),
        announces.len(),
        root.display()
    );
}

fn write(dir: &Path, i: usize, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{i:02}")), bytes).expect("write seed");
}

/// One or more messages of every kind, with records from a real store.
fn messages() -> Vec<Message> {
    let dir = std::env::temp_dir().join(format!("meshkv-seeds-{}", std::process::id()));
    let db = Db::open(&dir, Options::default()).expect("open");
    db.put("alpha", "one").expect("put");
    db.put(vec![0u8, 0xff], vec![7u8; 40]).expect("put");
    db.put("gone", "x").expect("put");
    db.delete("gone").expect("delete");
    let items: Vec<Item> = db
        .changes_since(&VersionVector::new())
        .expect("changes")
        .map(|r| r.map(|(key, record)| Item { key, record: record.into() }))
        .collect::<Result<_, _>>()
        .expect("items");
    let vv = db.version_vector();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        cluster: "meshkv".into(),
        node: db.node_id(),
        role: Role::Peer,
        mode: Mode::Sync,
        policy: 1,
        max_frame: codec::DEFAULT_MAX_FRAME as u64,
        incarnation: 0x5eed_1dea_2026,
    };
    let ops = vec![BatchOp::Put { key: b"k".to_vec(), value: b"v".to_vec() }, BatchOp::Delete { key: b"d".to_vec() }];
    let out = vec![
        Message::Hello(hello.clone()),
        Message::Hello(Hello { role: Role::Client, node: NodeId(42), incarnation: 0, ..hello }),
        Message::Digest { vv: vv.clone(), resume: Some(ResumePoint::Log(VersionVector::new())), held: Vec::new() },
        Message::Digest {
            vv: vv.clone(),
            resume: Some(ResumePoint::Key {
                since: VersionVector::new(),
                key: b"alpha".to_vec(),
                snapshot: vv.clone(),
            }),
            held: vec![Dot::new(NodeId(9), 15), Dot::new(NodeId(9), 17)],
        },
        Message::CatchUpStart { since: VersionVector::new(), snapshot: vv.clone(), order: CatchUpOrder::Log },
        Message::CatchUpStart {
            since: VersionVector::new(),
            snapshot: vv.clone(),
            order: CatchUpOrder::Key { skip: Some(KeySkip { key: b"alpha".to_vec(), covered: vv.clone() }) },
        },
        Message::CatchUp { id: 1, items: items.clone(), position: None },
        Message::CatchUp { id: 1, items: items.clone(), position: Some(Position::Key(b"alpha".to_vec())) },
        Message::CaughtUp { id: 2, vv: vv.clone() },
        Message::Live { id: 3, items, vv },
        Message::Ack { id: 3 },
        Message::Ping,
        Message::Request { id: 1, request: Request::Get { key: b"alpha".to_vec() } },
        Message::Request { id: 2, request: Request::GetMany { keys: vec![serde_bytes::ByteBuf::from(b"a".to_vec())] } },
        Message::Request { id: 3, request: Request::Write { ops } },
        Message::Request {
            id: 4,
            request: Request::Scan { options: ScanOptions::range(KeyRange::prefix("a")), chunk: 10 },
        },
        Message::Request { id: 5, request: Request::ScanMore { cursor: 1 } },
        Message::Request { id: 6, request: Request::Watch { range: KeyRange::all() } },
        Message::Request { id: 7, request: Request::Status },
        Message::Request { id: 8, request: Request::ScanClose { cursor: 1 } },
        Message::Request { id: 9, request: Request::Unwatch { watch: 1 } },
        Message::Reply { id: 1, result: Ok(Response::Value(Some(b"one".to_vec().into()))) },
        Message::Watch { watch: 1, key: b"alpha".to_vec(), value: None },
        Message::WatchLagged { watch: 1, missed: 3 },
        Message::Peers {
            listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 7420))),
            known: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 7421))],
        },
        Message::Close { reason: CloseReason::Unauthorized },
    ];
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    out
}
