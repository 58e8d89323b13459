//! Pipelined writes are committed in groups, yet every request keeps its
//! own outcome: its own dot, a hook rejection or size refusal that touches
//! no other request, read-your-writes for a read later in the pipeline, and
//! at-most-once application of a re-sent request id.

mod common;

use meshkv::client::{Client, ClientOptions};
use meshkv::node::ServerOptions;
use meshkv::protocol::{codec, BatchOp, ErrorCode, Message, RemoteError, Request, Response};
use meshkv::secure::Security;
use meshkv::{Db, Dot, KeyRange, Options};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_VALUE: usize = 1024;
const FORBIDDEN: &str = "forbidden/ is off limits";

fn put(key: &str, value: &[u8]) -> Request {
    Request::Write { ops: vec![BatchOp::Put { key: key.into(), value: value.to_vec() }] }
}

/// A raw client connection: sends a burst of requests in one socket write
/// and reads the replies back.
struct Raw {
    socket: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        let (mut socket, mut sealer) = common::raw_handshake(addr, &Security::default()).await;
        let (mut frame, mut wire) = (Vec::new(), Vec::new());
        codec::encode(&common::client_hello(), &mut frame);
        sealer.seal(&frame, &mut wire).expect("seal");
        socket.write_all(&wire).await.expect("hello");
        let mut raw = Raw { socket, buf: Vec::new() };
        assert!(matches!(raw.next().await, Message::Hello(_)), "the node answers the hello");
        raw
    }

    async fn next(&mut self) -> Message {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((msg, used)) = codec::decode(&self.buf, codec::DEFAULT_MAX_FRAME).expect("well-formed reply") {
                self.buf.drain(..used);
                return msg;
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.socket.read(&mut chunk))
                .await
                .expect("a reply within 20 s")
                .expect("read");
            assert!(n > 0, "the node closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `burst` in one write; returns the replies, checked to come in
    /// request order.
    async fn burst(&mut self, burst: &[(u64, Request)]) -> Vec<Result<Response, RemoteError>> {
        let mut frames = Vec::new();
        for (id, request) in burst {
            codec::encode(&Message::Request { id: *id, request: request.clone() }, &mut frames);
        }
        self.socket.write_all(&frames).await.expect("send burst");
        let mut results = Vec::new();
        for (want, _) in burst {
            match self.next().await {
                Message::Reply { id, result } => {
                    assert_eq!(id, *want, "replies come in request order");
                    results.push(result);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        results
    }
}

fn written(result: &Result<Response, RemoteError>) -> Dot {
    match result {
        Ok(Response::Written(Some(dot))) => *dot,
        other => panic!("expected a dot, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_of_writes_keeps_per_request_results() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options { max_value_len: MAX_VALUE, ..Options::default() }).expect("open");
    let calls = Arc::new(AtomicUsize::new(0));
    let hook = common::forbid_prefix(b"forbidden/", FORBIDDEN, &calls);
    let node = common::start_serving(db, ServerOptions { hook: Some(hook), ..ServerOptions::default() }).await;
    let db = node.db().clone();
    let me = db.node_id();
    let mut feed = db.subscribe(KeyRange::all());
    let mut raw = Raw::connect(node.local_addr().expect("bound")).await;
    let own_before = db.version_vector().get(me);

    // ids 1..=40 put g/1..g/40; then a second put of g/5 (a key already in
    // the burst), a rejected put, an oversized put, a get of g/5, a batch
    // repeating a key, id 3 again (a retry), 15 more puts, an empty write.
    let mut burst: Vec<(u64, Request)> = (1..=40).map(|i| (i, put(&format!("g/{i}"), b"first"))).collect();
    burst.push((41, put("g/5", b"second")));
    burst.push((42, put("forbidden/x", b"no")));
    burst.push((43, put("big/x", &[7u8; MAX_VALUE + 1])));
    burst.push((44, Request::Get { key: b"g/5".to_vec() }));
    let repeats = vec![
        BatchOp::Put { key: b"g/a".to_vec(), value: b"1".to_vec() },
        BatchOp::Put { key: b"g/a".to_vec(), value: b"2".to_vec() },
        BatchOp::Delete { key: b"g/b".to_vec() },
    ];
    burst.push((45, Request::Write { ops: repeats }));
    burst.push((3, put("g/3", b"retried")));
    burst.extend((46..=60).map(|i| (i, put(&format!("h/{i}"), b"late"))));
    burst.push((61, Request::Write { ops: Vec::new() }));
    let results = raw.burst(&burst).await;
    let result = |id: u64| &results[burst.iter().position(|(i, _)| *i == id).expect("sent")];

    let err = result(42).as_ref().expect_err("rejected");
    assert_eq!((err.code, err.message.as_str()), (ErrorCode::Rejected, FORBIDDEN));
    let err = result(43).as_ref().expect_err("oversized");
    assert_eq!(err.code, ErrorCode::BadRequest, "{err}");
    assert_eq!(db.get("forbidden/x").expect("read"), None, "a rejected put is not applied");
    assert_eq!(db.get("big/x").expect("read"), None, "an oversized put is not applied");
    assert_eq!(result(44), &Ok(Response::Value(Some(b"second".to_vec().into()))), "the get sees the put before it");
    assert_eq!(result(61), &Ok(Response::Written(None)));
    let first_3 = &results[2];
    assert_eq!(result(3), first_3, "a retried id gets the remembered reply");
    assert_eq!(db.get("g/3").expect("read"), Some(b"first".to_vec()), "and is not applied again");

    // Every applied request names its own write, and that write is in the
    // store under its key.
    let retry_at = burst.iter().rposition(|(i, _)| *i == 3).expect("sent");
    let mut applied: Vec<(String, Dot)> = Vec::new();
    for (n, (id, _)) in burst.iter().enumerate() {
        let key = match id {
            41 => "g/5".to_string(),
            45 => "g/b".to_string(),
            1..=40 if n != retry_at => format!("g/{id}"),
            46..=60 => format!("h/{id}"),
            _ => continue,
        };
        applied.push((key, written(&results[n])));
    }
    let distinct: BTreeSet<Dot> = applied.iter().map(|(_, d)| *d).collect();
    assert_eq!(distinct.len(), applied.len(), "each request got its own dot");
    for (key, dot) in &applied {
        assert_eq!(dot.origin, me);
        if key == "g/5" && *dot != written(result(41)) {
            assert!(*dot < written(result(41)), "the first put of g/5 came before the second");
            continue;
        }
        let record = db.get_record(key).expect("read").unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(record.winner().dot, *dot, "{key}: the stored write is the one the reply named");
        let (logged, _) = db.entry(me, dot.seq).expect("log").unwrap_or_else(|| panic!("no log entry for {dot}"));
        assert_eq!(logged, key.as_bytes(), "{dot} is the write of {key}");
    }
    assert_eq!(db.get("g/a").expect("read"), Some(b"2".to_vec()), "within a request the last op wins");
    assert_eq!(db.get("g/b").expect("read"), None);
    // 40 + 1 + 15 puts and two keys of the batch, nothing else.
    assert_eq!(db.version_vector().get(me) - own_before, 58);
    // The hook saw each new write request once (not the retry).
    assert_eq!(calls.load(Ordering::SeqCst), 60);

    // The writes were committed in groups: fewer commits than requests.
    let mut commits = 0;
    let mut changes = 0;
    while let Ok(Some(commit)) = feed.try_recv_commit() {
        commits += 1;
        changes += commit.changes.len();
    }
    assert_eq!(changes, 58, "every applied key reached the feed");
    assert!(commits < 57, "{commits} commits for 57 applied requests: writes were grouped");

    // Re-sent later (as after a reconnect), with other contents: answered
    // from memory, not applied, hook not called.
    let again = [(10, put("g/10", b"changed")), (42, put("ok/now", b"x")), (43, put("small", b"x"))];
    let replies = raw.burst(&again).await;
    assert_eq!(&replies[0], result(10));
    assert_eq!(&replies[1], result(42));
    assert_eq!(&replies[2], result(43));
    assert_eq!(db.get("g/10").expect("read"), Some(b"first".to_vec()));
    assert_eq!(db.get("ok/now").expect("read"), None);
    assert_eq!(db.version_vector().get(me) - own_before, 58);
    assert_eq!(calls.load(Ordering::SeqCst), 60);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_through_one_client_each_get_their_own_dot() {
    const PUTS: usize = 500;
    let dir = tempfile::tempdir().expect("dir");
    let node = common::start(Db::open(dir.path(), Options::default()).expect("open")).await;
    let db = node.db().clone();
    let client = Client::connect(node.local_addr().expect("bound"), ClientOptions::default()).await.expect("connect");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PUTS {
        let client = client.clone();
        // Every tenth put rewrites an earlier key: such puts land in later groups.
        let key = if i % 10 == 9 { format!("k/{}", i - 9) } else { format!("k/{i}") };
        tasks.spawn(async move {
            let dot = client.put(key.clone(), format!("v{i}")).await.expect("put").expect("dot");
            let value = client.get(key.clone()).await.expect("get").expect("present");
            (i, key, dot, value)
        });
    }
    let mut newest: std::collections::HashMap<String, Dot> = std::collections::HashMap::new();
    let mut dots = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(res) = tokio::time::timeout_at(deadline, tasks.join_next()).await.expect("puts finish in 60 s") {
        let (i, key, dot, value) = res.expect("task");
        assert!(dots.insert(dot), "put {i}: dot {dot} given twice");
        assert!(value.starts_with(b"v"), "put {i}: a get after the put sees a value");
        let best = newest.entry(key).or_insert(dot);
        *best = (*best).max(dot);
    }
    for (key, dot) in &newest {
        let record = db.get_record(key).expect("read").expect("present");
        assert_eq!(record.winner().dot, *dot, "{key}: the store holds the newest acknowledged write");
        let (logged, _) = db.entry(dot.origin, dot.seq).expect("log").expect("logged");
        assert_eq!(logged, key.as_bytes(), "{dot} is the write of {key}");
    }
    assert_eq!(dots.len(), PUTS);
    assert_eq!(db.version_vector().get(db.node_id()), PUTS as u64, "each put applied once");
    node.shutdown().await;
}
