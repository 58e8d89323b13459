//! A validation hook refuses writes with `ErrorCode::Rejected` and the
//! hook's own message; a batch with one refused op is refused whole; the
//! node keeps serving everyone.

mod common;
use common::start_serving;

use meshkv::client::{Client, ClientOptions};
use meshkv::node::ServerOptions;
use meshkv::protocol::{BatchOp, ErrorCode};
use meshkv::{Db, Options};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const MESSAGE: &str = "keys under forbidden/ are not allowed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_rejects_forbidden_keys_with_its_message_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    db.put("keep", "me").expect("local write");
    let calls = Arc::new(AtomicUsize::new(0));
    let hook = common::forbid_prefix(b"forbidden/", MESSAGE, &calls);
    let node = start_serving(db, ServerOptions { hook: Some(hook), ..ServerOptions::default() }).await;
    let addr = node.local_addr().expect("bound");
    let client = Client::connect(addr, ClientOptions::default()).await.expect("connect");
    let vv_before = node.db().version_vector();

    // A forbidden put: Rejected with exactly the hook's message.
    let err = client.put("forbidden/x", "nope").await.expect_err("forbidden put");
    assert_eq!(err.code, ErrorCode::Rejected, "{err}");
    assert_eq!(err.message, MESSAGE);
    assert_eq!(node.db().get("forbidden/x").expect("local"), None, "a rejected put is not applied");

    // A forbidden delete is refused the same way.
    let err = client.delete("forbidden/y").await.expect_err("forbidden delete");
    assert_eq!(err.code, ErrorCode::Rejected, "{err}");
    assert_eq!(err.message, MESSAGE);

    // A batch with one forbidden op is rejected whole.
    let err = client
        .batch(vec![
            BatchOp::Put { key: b"ok/1".to_vec(), value: b"1".to_vec() },
            BatchOp::Put { key: b"forbidden/z".to_vec(), value: b"z".to_vec() },
            BatchOp::Delete { key: b"keep".to_vec() },
        ])
        .await
        .expect_err("batch with a forbidden op");
    assert_eq!(err.code, ErrorCode::Rejected, "{err}");
    assert_eq!(err.message, MESSAGE);
    let db = node.db();
    assert_eq!(db.get("ok/1").expect("local"), None, "no op of a rejected batch is applied");
    assert_eq!(db.get("forbidden/z").expect("local"), None);
    assert_eq!(db.get("keep").expect("local"), Some(b"me".to_vec()), "the batch's delete was not applied");
    assert_eq!(db.version_vector(), vv_before, "nothing was written");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the hook saw each write once");

    // Other writes pass the hook and are applied.
    client.put("allowed/1", "yes").await.expect("allowed put");
    client.put("not-forbidden/forbidden/", "yes").await.expect("only the prefix is forbidden");
    client
        .batch(vec![
            BatchOp::Put { key: b"ok/2".to_vec(), value: b"2".to_vec() },
            BatchOp::Delete { key: b"keep".to_vec() },
        ])
        .await
        .expect("allowed batch");
    assert_eq!(client.get("allowed/1").await.expect("get"), Some(b"yes".to_vec()));
    assert_eq!(db.get("not-forbidden/forbidden/").expect("local"), Some(b"yes".to_vec()));
    assert_eq!(db.get("ok/2").expect("local"), Some(b"2".to_vec()));
    assert_eq!(db.get("keep").expect("local"), None);
    assert_eq!(calls.load(Ordering::SeqCst), 6);

    // The hook does not see local writes on the node's own Db.
    db.put("forbidden/local", "the hook guards remote clients only").expect("local write");
    assert_eq!(calls.load(Ordering::SeqCst), 6);

    // The node keeps serving: the same client after a rejection, and a second client.
    let err = client.put("forbidden/again", "no").await.expect_err("still forbidden");
    assert_eq!((err.code, err.message.as_str()), (ErrorCode::Rejected, MESSAGE));
    client.put("allowed/2", "after").await.expect("put after a rejection");
    let second = Client::connect(addr, ClientOptions::default()).await.expect("second client");
    let err = second.put("forbidden/second", "no").await.expect_err("forbidden for every client");
    assert_eq!((err.code, err.message.as_str()), (ErrorCode::Rejected, MESSAGE));
    second.put("allowed/3", "second").await.expect("second client's put");
    assert_eq!(second.get("allowed/1").await.expect("get"), Some(b"yes".to_vec()));
    assert_eq!(client.get("allowed/3").await.expect("get"), Some(b"second".to_vec()));
    assert_eq!(db.get("forbidden/second").expect("local"), None);
    assert_eq!(db.get("forbidden/again").expect("local"), None);
    assert_eq!(db.get("allowed/2").expect("local"), Some(b"after".to_vec()));

    drop((client, second));
    node.shutdown().await;
}
