//! A node configured for values larger than the default 17 MiB frame:
//! what it accepted, the command line reads back (`get`, `scan`,
//! `export`). It used to import such a value and then fail every read
//! after 30 s of reconnects.

mod cli_support;

use cli_support::Server;

#[test]
fn a_value_over_the_default_frame_reads_back_from_a_node_configured_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[limits]\nmax_value_bytes = 20971520\nmax_frame_bytes = 23068672\n").expect("write");
    let s = Server::start(&["--config", config.to_str().expect("utf-8 path")]);
    let value = "v".repeat(18 << 20);
    let line = format!("{{\"key\":\"big\",\"value\":\"{value}\"}}\n");
    s.run_with(&["import", "-"], Some(line.as_bytes())).ok();

    let get = s.run(&["get", "big"]);
    assert_eq!((get.code(), get.stdout.len()), (Some(0), 18 << 20), "{}", get.stderr);
    let scan = s.run(&["scan", "--prefix", "b"]);
    assert_eq!((scan.code(), scan.stdout.len()), (Some(0), "big\t".len() + (18 << 20) + 1), "{}", scan.stderr);
    let export = s.run(&["export"]);
    assert_eq!(export.code(), Some(0), "{}", export.stderr);
    assert!(export.stdout == line.as_bytes(), "export differs from the imported line");
}
