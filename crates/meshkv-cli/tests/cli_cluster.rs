//! Two `meshkv serve` children replicating: `--peer` on one, a `--config`
//! file on the other; writes on either are read on the other and `status`
//! shows the live link.

mod cli_support;

use cli_support::{eventually, Server};

#[test]
fn two_nodes_replicate_and_report_their_peer() {
    let a = Server::start(&["--cluster", "test"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("b.toml");
    // `data` is relative to the config file; the flags given by the test
    // (--data, --listen) override the file's.
    std::fs::write(&config, format!("data = \"ignored\"\npeers = [\"{}\"]\ncluster = \"test\"\n", a.addr)).unwrap();
    let b = Server::start(&["--config", config.to_str().unwrap()]);
    let with_cluster = |s: &Server, args: &[&str]| {
        let mut all = vec!["--cluster", "test"];
        all.extend_from_slice(args);
        s.run(&all)
    };

    with_cluster(&a, &["put", "from/a", "1"]).ok();
    with_cluster(&b, &["put", "from/b", "2"]).ok();
    eventually(10, "replication both ways", || {
        with_cluster(&a, &["get", "from/b"]).code() == Some(0) && with_cluster(&b, &["get", "from/a"]).code() == Some(0)
    });
    assert_eq!(with_cluster(&b, &["get", "from/a"]).ok(), "1");

    let a_id = serde_json::from_str::<serde_json::Value>(with_cluster(&a, &["status", "--json"]).ok().trim()).unwrap()
        ["node_id"]
        .clone();
    eventually(10, "a live link with no lag", || {
        let st: serde_json::Value = serde_json::from_str(with_cluster(&b, &["status", "--json"]).ok().trim()).unwrap();
        let peers = st["peers"].as_array().unwrap().clone();
        st["keys"] == 2
            && peers.len() == 1
            && peers[0]["addr"] == a.addr.as_str()
            && peers[0]["node_id"] == a_id
            && peers[0]["state"] == "live"
            && peers[0]["lag"] == 0
            && peers[0]["sync"].is_null()
    });
    assert!(!dir.path().join("ignored").exists());
}
