//! `meshkv import` at its limits: batches fit the node's frame limit
//! (as small as it is configured), a record too large for any frame fails
//! at once with a clear error, and a malformed line leaves every line
//! before it applied and says so.

mod cli_support;

use cli_support::Server;
use std::time::{Duration, Instant};

/// A node whose `[limits]` lower the frame size takes an import of records
/// within its limits (batches used to be up to 8 MiB whatever the node's
/// `max_frame_bytes`: dropped connections and re-sends for 30 s).
#[test]
fn import_fits_a_nodes_smaller_frame_limit() {
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

/// A record too large for a frame (an 18 MiB value against the default
/// 17 MiB frame) fails at once with a size error, not after 30 s of
/// reconnects ending in "no reply from the node in time".
#[test]
fn a_record_over_the_frame_limit_fails_fast_and_clearly() {
    let s = Server::start(&[]);
    let input = format!("{{\"key\":\"huge\",\"value\":\"{}\"}}\n", "x".repeat(18 << 20));
    let started = Instant::now();
    let r = s.run_with(&["import", "-"], Some(input.as_bytes()));
    let took = started.elapsed();
    assert_eq!(r.code(), Some(2), "{r:?}");
    assert!(r.stderr.contains("exceeds the node's frame limit"), "took {took:?}: {}", r.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {}", r.stderr);
}

/// A malformed line after good ones in the same batch: the good lines are
/// applied and the error says so.
#[test]
fn a_malformed_line_leaves_the_lines_before_it_applied() {
    let s = Server::start(&[]);
    let input = "{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":\"2\"}\n{\"key\":\"c\",\n";
    let r = s.run_with(&["import", "-"], Some(input.as_bytes()));
    r.fails(2, "line 3");
    assert!(r.stderr.contains("lines 1-2 were applied, none after"), "{}", r.stderr);
    assert_eq!(s.run(&["scan"]).ok().lines().count(), 2, "both good lines applied");
}

/// A line that is not UTF-8 (a Latin-1 byte) is a malformed line like any
/// other: the lines before it are applied (they were dropped with the
/// batch being built).
#[test]
fn a_line_that_is_not_utf8_leaves_the_lines_before_it_applied() {
    let s = Server::start(&[]);
    let mut input = b"{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":\"2\"}\n".to_vec();
    input.extend_from_slice(b"{\"key\":\"caf\xe9\",\"value\":\"latin-1\"}\n{\"key\":\"d\",\"value\":\"4\"}\n");
    let r = s.run_with(&["import", "-"], Some(&input));
    r.fails(2, "line 3");
    assert!(r.stderr.contains("not valid UTF-8"), "{}", r.stderr);
    assert!(r.stderr.contains("lines 1-2 were applied, none after"), "{}", r.stderr);
    assert_eq!(s.run(&["scan"]).ok(), "a\t1\nb\t2\n");
}

/// A record the node refuses (a key over `max_key_bytes`) is named by its
/// line, with the lines before it in the same batch applied.
#[test]
fn a_refused_record_is_named_by_its_line() {
    let s = Server::start(&[]);
    let big = "k".repeat(20_000);
    let input = format!(
        "{{\"key\":\"a\",\"value\":\"1\"}}\n{{\"key\":\"b\",\"value\":\"2\"}}\n{{\"key\":\"{big}\",\"value\":\"3\"}}\n{{\"key\":\"d\",\"value\":\"4\"}}\n"
    );
    let r = s.run_with(&["import", "-"], Some(input.as_bytes()));
    r.fails(2, "line 3: not applied; lines 1-2 were applied, none after");
    assert!(r.stderr.contains("20000"), "the cause is not given: {}", r.stderr);
    assert_eq!(s.run(&["scan"]).ok(), "a\t1\nb\t2\n");
}

/// A file saved with a UTF-8 byte-order mark (Windows editors, PowerShell)
/// imports whole.
#[test]
fn a_byte_order_mark_is_skipped() {
    let s = Server::start(&[]);
    let input = "\u{feff}{\"key\":\"a\",\"value\":\"1\"}\n{\"key\":\"b\",\"value\":\"2\"}\n";
    s.run_with(&["import", "-"], Some(input.as_bytes())).ok();
    assert_eq!(s.run(&["scan"]).ok(), "a\t1\nb\t2\n");
}
