//! Review findings for the command line (each test fails on the code as reviewed).

mod cli_support;

use cli_support::Server;
use std::time::{Duration, Instant};

/// A node whose `[limits]` lower the frame size (a documented, accepted
/// configuration) cannot receive `meshkv import` of records well inside its
/// limits: import packs up to 8 MiB per batch regardless of the node's
/// `max_frame_bytes`; the node drops the connection, the client reconnects
/// thousands of times for 30 s, then reports "no reply from the node in time".
#[test]
fn import_respects_a_nodes_smaller_frame_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[limits]\nmax_value_bytes = 1000\nmax_frame_bytes = 100000\n").unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap()]);
    let value = "x".repeat(900); // under max_value_bytes
    let input: String = (0..200).map(|i| format!("{{\"key\":\"k{i:04}\",\"value\":\"{value}\"}}\n")).collect();
    let started = Instant::now();
    let r = s.run_with(&["import", "-"], Some(input.as_bytes()));
    assert_eq!(r.code(), Some(0), "took {:?}: {r:?}", started.elapsed());
    assert_eq!(s.run(&["scan"]).ok().lines().count(), 200);
}

/// A record too large for a frame (here an 18 MiB value against the default
/// 17 MiB frame) should fail at once with a size error (as a 16.0x MiB value
/// does: "value of … bytes exceeds the limit"), not after 30 s of reconnects
/// with "lost the connection to the node: no reply from the node in time".
#[test]
fn import_of_a_record_over_the_frame_limit_fails_fast_and_clearly() {
    let s = Server::start(&[]);
    let input = format!("{{\"key\":\"huge\",\"value\":\"{}\"}}\n", "x".repeat(18 << 20));
    let started = Instant::now();
    let r = s.run_with(&["import", "-"], Some(input.as_bytes()));
    let took = started.elapsed();
    assert_eq!(r.code(), Some(2), "{r:?}");
    assert!(!r.stderr.contains("no reply from the node in time"), "took {took:?}: {}", r.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {}", r.stderr);
}

/// A malformed line in the middle of a batch: the good lines before it in the
/// same batch are silently dropped and the error names only the bad line, so
/// the user cannot tell what was applied (here: nothing; with 1500 good lines
/// first, 1000 applied and 500 not, with the same message).
#[test]
fn import_error_on_a_malformed_line_says_what_was_applied() {
    let s = Server::start(&[]);
    let input = "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":\"2\"}\n{\"key\":\"c\",\n";
    let r = s.run_with(&["import", "-"], Some(input.as_bytes()));
    r.fails(2, "line 3");
    let applied = s.run(&["scan"]).ok().lines().count();
    assert!(
        applied == 2 || r.stderr.contains("not applied"),
        "{applied} of the 2 good lines applied, and stderr does not say so: {}",
        r.stderr
    );
}
