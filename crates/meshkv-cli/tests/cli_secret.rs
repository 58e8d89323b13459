//! `meshkv secret` and serving with a cluster secret: nodes holding the
//! same secret replicate; client commands need it (flag or environment);
//! a wrong or missing secret exits 2 with a clear message; the client
//! secret reads and writes, the read-only secret only reads, and neither
//! joins as a peer.

mod cli_support;

use cli_support::{eventually, meshkv, run, run_cmd, Server};

fn secret_file(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    let p = path.to_str().unwrap().to_string();
    let r = run(&["secret", "--out", &p]);
    r.ok();
    assert!(r.stderr.contains("wrote a new cluster secret"), "{r:?}");
    p
}

#[test]
fn secret_prints_or_writes_a_private_file_and_never_overwrites() {
    let printed = run(&["secret"]).ok();
    assert_eq!(printed.trim().len(), 64, "{printed:?}");
    assert!(printed.trim().chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(run(&["secret"]).ok(), printed, "two secrets were equal");

    let dir = tempfile::tempdir().unwrap();
    let path = secret_file(dir.path(), "secret");
    let first = std::fs::read_to_string(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    run(&["secret", "--out", &path]).fails(2, "--force");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "an existing secret was overwritten");
    run(&["secret", "--out", &path, "--force"]).ok();
    assert_ne!(std::fs::read_to_string(&path).unwrap(), first);
}

#[test]
fn nodes_and_clients_with_the_secret_work_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "cluster.secret");
    let client = secret_file(dir.path(), "client.secret");
    let read_only = secret_file(dir.path(), "reader.secret");
    let wrong = secret_file(dir.path(), "wrong.secret");

    let a = Server::start(&[
        "--secret-file",
        &secret,
        "--client-secret-file",
        &client,
        "--read-only-secret-file",
        &read_only,
    ]);
    // B takes its secret from its config file.
    let config = dir.path().join("b.toml");
    std::fs::write(&config, format!("secret_file = \"cluster.secret\"\npeers = [\"{}\"]\n", a.addr)).unwrap();
    let b = Server::start(&["--config", config.to_str().unwrap()]);
    assert!(a.log_text().contains("encrypted"), "{}", a.log_text());

    a.run(&["--secret-file", &secret, "put", "k", "v"]).ok();
    // The environment variable works like the flag.
    let get_on_b = || {
        let mut cmd = meshkv();
        cmd.env("MESHKV_SECRET_FILE", &secret).args(["--node", &b.addr, "get", "k"]);
        run_cmd(cmd, None)
    };
    eventually(10, "replication between secured nodes", || get_on_b().code() == Some(0));
    assert_eq!(get_on_b().ok(), "v");

    a.run(&["get", "k"]).fails(2, "requires a cluster secret");
    a.run(&["--secret-file", &wrong, "get", "k"]).fails(2, "wrong cluster secret");
    assert_eq!(a.run(&["--secret-file", &read_only, "get", "k"]).ok(), "v");
    a.run(&["--secret-file", &read_only, "put", "k", "w"]).fails(2, "read-only");
    a.run(&["--secret-file", &client, "put", "from-client", "c"]).ok();
    assert_eq!(a.run(&["--secret-file", &client, "get", "from-client"]).ok(), "c");
    a.run(&["--secret-file", &dir.path().join("missing").to_string_lossy(), "get", "k"])
        .fails(2, "cannot read secret file");

    // A node without the secret is refused as a peer, and its data stays its own.
    let c = Server::start(&["--peer", &a.addr]);
    c.run(&["put", "c-only", "x"]).ok();
    eventually(10, "the refusal in C's log", || c.log_text().contains("requires a cluster secret"));
    assert_eq!(c.run(&["get", "k"]).code(), Some(1), "C received a record without the secret");
    a.run(&["--secret-file", &secret, "get", "c-only"]).fails(1, "not found");

    // A node holding a client secret as its cluster secret is refused as a
    // peer: a client cannot write past --read-only or a hook by replicating.
    for (name, held) in [("client", &client), ("read-only", &read_only)] {
        let d = Server::start(&["--secret-file", held, "--peer", &a.addr]);
        d.run(&["--secret-file", held, "put", "d-only", "x"]).ok();
        eventually(10, "the refusal in D's log", || d.log_text().contains("Unauthorized"));
        assert_eq!(d.run(&["--secret-file", held, "get", "k"]).code(), Some(1), "{name}: D received a record");
        a.run(&["--secret-file", &secret, "get", "d-only"]).fails(1, "not found");
    }
}

#[test]
fn client_secrets_without_a_distinct_cluster_secret_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, client) = (secret_file(dir.path(), "cluster.secret"), secret_file(dir.path(), "client.secret"));
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--client-secret-file", &client], "a client secret needs the cluster secret"),
        (&["--read-only-secret-file", &client], "a read-only secret needs the cluster secret"),
        (&["--secret-file", &secret, "--client-secret-file", &secret], "equals the cluster secret"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["serve", "--data", data, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        run(&args).fails(2, needle);
    }
}
