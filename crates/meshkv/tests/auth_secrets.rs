//! Only holders of the cluster secret get in: peers and clients with a
//! wrong secret, or none, are refused on both sides of the connection and
//! never receive a record; the client secret reads and writes but does not
//! replicate, and the read-only secret only reads.

mod common;

use common::{eventually, loopback, start_secured, Proxy};
use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig, NodeEvent};
use meshkv::protocol::{ErrorCode, Mode};
use meshkv::secure::{Secret, Security};
use meshkv::Db;
use std::time::Duration;
use tokio::sync::broadcast;

const VALUE: &[u8] = b"a value only the cluster may see: 7f3e9a1c";

async fn start_with(db: Db, security: Security) -> Node {
    Node::start(db, NodeConfig { listen: loopback(), security, ..NodeConfig::default() }).await.expect("start")
}

/// Waits for an error event whose message contains `needle`.
async fn error_event(events: &mut broadcast::Receiver<NodeEvent>, needle: &str) -> String {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Error { message, .. }) if message.contains(needle) => return message,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events closed: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("no refusal reported")
}

/// Each node dials the other through a capturing proxy; asserts that the
/// refusal is reported on both nodes and that no record crossed.
async fn assert_refused_both_ways(a: Security, b: Security, needle_a: &str, needle_b: &str) {
    let (_da, db_a) = common::temp_store();
    let (_db, db_b) = common::temp_store();
    db_a.put("from-a", VALUE).expect("put");
    db_b.put("from-b", VALUE).expect("put");
    let mut a = start_with(db_a.clone(), a).await;
    let mut b = start_with(db_b.clone(), b).await;
    let (mut ev_a, mut ev_b) = (a.events(), b.events());
    let to_a = Proxy::start(a.local_addr().expect("addr")).await;
    let to_b = Proxy::start(b.local_addr().expect("addr")).await;
    b.add_peer(to_a.addr(), Mode::Sync);
    a.add_peer(to_b.addr(), Mode::Sync);

    let seen_a = error_event(&mut ev_a, needle_a).await;
    let seen_b = error_event(&mut ev_b, needle_b).await;
    // Let the dialers retry a few times.
    eventually("several refused attempts", || to_a.accepted() >= 2 && to_b.accepted() >= 2).await;

    for (db, foreign) in [(&db_a, "from-b"), (&db_b, "from-a")] {
        assert_eq!(db.get(foreign).expect("get"), None, "a record crossed a refused link ({seen_a} / {seen_b})");
        assert_eq!(db.version_vector().len(), 1, "a foreign origin is covered");
    }
    for proxy in [&to_a, &to_b] {
        let (to_node, from_node) = proxy.captured();
        for bytes in [&to_node, &from_node] {
            assert!(!bytes.windows(VALUE.len()).any(|w| w == VALUE), "the value was on the wire");
        }
        // A refusing node sends its 5-byte preamble and a 2-byte refusal
        // (plus, at most, one Noise handshake message) per attempt: no frame.
        assert!(from_node.len() as u64 <= proxy.accepted() * 64, "{} bytes from a refusing node", from_node.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_different_secrets_refuse_each_other() {
    let (s1, s2) = (Security::with_secret(Secret::generate()), Security::with_secret(Secret::generate()));
    assert_refused_both_ways(s1, s2, "wrong cluster secret", "wrong cluster secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_secret_is_refused_and_refuses() {
    let secured = Security::with_secret(Secret::generate());
    assert_refused_both_ways(secured, Security::default(), "no cluster secret", "requires a cluster secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secrets_cannot_replicate() {
    let (secret, client, read_only) = (Secret::generate(), Secret::generate(), Secret::generate());
    let (_da, db_a) = common::temp_store();
    db_a.put("from-a", VALUE).expect("put");
    let security = Security {
        secret: Some(secret),
        client_secret: Some(client.clone()),
        read_only_secret: Some(read_only.clone()),
    };
    let a = start_with(db_a.clone(), security).await;
    // B holds only a client secret and tries to join as a peer: it would
    // write past the node's read-only setting and write hooks.
    for (name, held) in [("client", client), ("read-only", read_only)] {
        let (_db, db_b) = common::temp_store();
        db_b.put("from-b", VALUE).expect("put");
        let mut b = start_with(db_b.clone(), Security::with_secret(held)).await;
        let mut ev_b = b.events();
        b.add_peer(a.local_addr().expect("addr"), Mode::Sync);
        error_event(&mut ev_b, "Unauthorized").await;
        assert_eq!(db_b.get("from-a").expect("get"), None, "the {name} secret received records");
        assert_eq!(db_a.get("from-b").expect("get"), None, "the {name} secret wrote records");
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_a_secret_and_the_read_only_secret_only_reads() {
    let (secret, client, read_only) = (Secret::generate(), Secret::generate(), Secret::generate());
    let (_d, db) = common::temp_store();
    db.put("k", VALUE).expect("put");
    let node = start_with(
        db.clone(),
        Security {
            secret: Some(secret.clone()),
            client_secret: Some(client.clone()),
            read_only_secret: Some(read_only.clone()),
        },
    )
    .await;
    let addr = node.local_addr().expect("addr");
    let mut events = node.events();
    let connect = |secret: Option<Secret>| {
        Client::connect(addr, ClientOptions { secret, retry: false, ..ClientOptions::default() })
    };

    for (who, secret) in [("no secret", None), ("a wrong secret", Some(Secret::generate()))] {
        match connect(secret).await {
            Ok(_) => panic!("a client with {who} was let in"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Unauthorized, "{who}: {e}");
                assert!(e.message.contains("secret"), "{who}: the error names the secret: {e}");
            }
        }
    }

    // The node saw and reported both refusals too.
    error_event(&mut events, "no cluster secret").await;
    error_event(&mut events, "wrong cluster secret").await;

    let full = connect(Some(secret)).await.expect("the cluster secret connects");
    assert_eq!(full.get("k").await.expect("get").as_deref(), Some(VALUE));
    full.put("k2", "v2").await.expect("a full-access write");
    let writer = connect(Some(client)).await.expect("the client secret connects");
    writer.put("k4", "v4").await.expect("a client-secret write");
    assert_eq!(writer.get("k2").await.expect("get").as_deref(), Some(&b"v2"[..]));

    let reader = connect(Some(read_only)).await.expect("the read-only secret connects");
    assert_eq!(reader.get("k2").await.expect("get").as_deref(), Some(&b"v2"[..]));
    let e = reader.put("k3", "v3").await.expect_err("a read-only client wrote");
    assert_eq!(e.code, ErrorCode::ReadOnly);
    assert_eq!(db.get("k3").expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_secret_refuses_a_node_without_one() {
    let (_d, db) = common::temp_store();
    let node = common::start(db).await;
    let options = ClientOptions { secret: Some(Secret::generate()), retry: false, ..ClientOptions::default() };
    let e = Client::connect(node.local_addr().expect("addr"), options).await.err().expect("connected in plaintext");
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(e.message.contains("no cluster secret"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_same_secret_replicate() {
    let secret = Secret::generate();
    let (_da, db_a) = common::temp_store();
    let (_db, db_b) = common::temp_store();
    let a = start_secured(db_a.clone(), &secret).await;
    let mut b = start_secured(db_b.clone(), &secret).await;
    b.add_peer(a.local_addr().expect("addr"), Mode::Sync);
    db_a.put("k", VALUE).expect("put");
    db_b.put("j", VALUE).expect("put");
    eventually("both records on both nodes", || {
        db_a.get("j").ok().flatten().is_some() && db_b.get("k").ok().flatten().is_some()
    })
    .await;
}
