//! The client commands against a `meshkv serve` child: put/get/del, scan
//! (plain, JSON, range flags), status, import/export and watch.

mod cli_support;

use cli_support::{meshkv, run_cmd, ChildGuard, Server};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn put_get_del_and_missing_keys() {
    let s = Server::start(&[]);
    assert_eq!(s.run(&["put", "greeting", "hello world"]).ok(), "");
    // Raw value, no newline: stdout is not a terminal here.
    assert_eq!(s.run(&["get", "greeting"]).ok(), "hello world");
    // --node after the subcommand and MESHKV_NODE work too.
    let mut cmd = meshkv();
    cmd.args(["get", "greeting", "--node", &s.addr]);
    assert_eq!(run_cmd(cmd, None).ok(), "hello world");
    let mut cmd = meshkv();
    cmd.env("MESHKV_NODE", &s.addr).args(["get", "greeting"]);
    assert_eq!(run_cmd(cmd, None).ok(), "hello world");

    s.run(&["get", "nope"]).fails(1, "not found");
    assert_eq!(s.run(&["del", "greeting"]).ok(), "");
    s.run(&["get", "greeting"]).fails(1, "not found");
    s.run(&["del", "never-existed"]).ok();
    // The empty key and an empty value are fine.
    s.run(&["put", "", ""]).ok();
    assert_eq!(s.run(&["get", ""]).ok(), "");
}

#[test]
fn a_busy_polling_node_answers_the_same() {
    let s = Server::start(&["--busy-poll-us", "50"]);
    assert_eq!(s.run(&["put", "k", "v"]).ok(), "");
    assert_eq!(s.run(&["get", "k"]).ok(), "v");
    s.run(&["get", "nope"]).fails(1, "not found");
}

#[test]
fn scan_plain_json_and_range_flags() {
    let s = Server::start(&[]);
    for (k, v) in [("a1", "1"), ("a2", "2"), ("a3", "3"), ("a4", "4"), ("b1", "tab\there"), ("c\n1", "x")] {
        s.run(&["put", k, v]).ok();
    }
    let plain = s.run(&["scan"]).ok();
    assert_eq!(plain, "a1\t1\na2\t2\na3\t3\na4\t4\nb1\ttab\\there\nc\\n1\tx\n");

    let json = s.run(&["scan", "--json", "--prefix", "b"]).ok();
    assert_eq!(json, "{\"key\":\"b1\",\"value\":\"tab\\there\"}\n");
    let keys = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["scan", "--json"];
        all.extend_from_slice(args);
        s.run(&all)
            .ok()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["key"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(keys(&["--prefix", "a"]), ["a1", "a2", "a3", "a4"]);
    assert_eq!(keys(&["--gt", "a1", "--lte", "a3"]), ["a2", "a3"]);
    assert_eq!(keys(&["--gte", "a3", "--lt", "b1"]), ["a3", "a4"]);
    assert_eq!(keys(&["--prefix", "a", "--limit", "2"]), ["a1", "a2"]);
    assert_eq!(keys(&["--prefix", "a", "--reverse", "--limit", "3"]), ["a4", "a3", "a2"]);
    assert_eq!(keys(&["--gt", "z"]), Vec::<String>::new());
}

#[test]
fn import_export_round_trip_with_binary_data() {
    let s = Server::start(&[]);
    let input = concat!(
        "{\"key\":\"text\",\"value\":\"h\u{e9}llo \u{1f600}\"}\n",
        "{\"key\":{\"base64\":\"/wA=\"},\"value\":{\"base64\":\"AAEC/w==\"}}\n",
        "\n",
        "{\"key\":\"\",\"value\":\"empty key\"}\n",
        "{\"key\":\"gone\",\"value\":\"soon\"}\n",
        "{\"key\":\"gone\",\"value\":null}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    std::fs::write(&file, input).unwrap();
    let imported = s.run(&["import", file.to_str().unwrap()]);
    imported.ok();
    assert!(imported.stderr.contains("imported 5 records"), "{imported:?}");
    s.run(&["get", "gone"]).fails(1, "not found");
    // A binary value is printed raw.
    assert_eq!(s.run(&["get", "text"]).stdout, "h\u{e9}llo \u{1f600}".as_bytes());

    let export = s.run(&["export"]).ok();
    let expected = concat!(
        "{\"key\":\"\",\"value\":\"empty key\"}\n",
        "{\"key\":\"text\",\"value\":\"h\u{e9}llo \u{1f600}\"}\n",
        "{\"key\":{\"base64\":\"/wA=\"},\"value\":{\"base64\":\"AAEC/w==\"}}\n",
    );
    assert_eq!(export, expected);
    assert_eq!(s.run(&["export", "--prefix", "te"]).ok(), "{\"key\":\"text\",\"value\":\"h\u{e9}llo \u{1f600}\"}\n");
    let plain = s.run(&["scan"]).ok();
    assert!(plain.ends_with("\\xff\\x00\t\\x00\\x01\\x02\\xff\n"), "{plain}");

    // Into another node through stdin, in several batches: same export.
    let t = Server::start(&[]);
    let many: String = (0..2500).map(|i| format!("{{\"key\":\"n/{i:05}\",\"value\":\"{i}\"}}\n")).collect();
    t.run_with(&["import", "-"], Some(format!("{export}{many}").as_bytes())).ok();
    let (first, rest) = expected.split_at(expected.find('\n').unwrap() + 1);
    assert_eq!(t.run(&["export"]).ok(), format!("{first}{many}{rest}"));
    assert_eq!(t.run(&["export", "--prefix", "n/"]).ok(), many);
    assert_eq!(t.status()["keys"], 3 + 2500);

    // A bad line stops the import with its number; earlier batches stay.
    let bad = "{\"key\":\"ok\",\"value\":\"1\"}\nnot json\n";
    t.run_with(&["import", "-"], Some(bad.as_bytes())).fails(2, "line 2");
    t.run(&["import", "/nonexistent/file.jsonl"]).fails(2, "cannot open");
}

#[test]
fn status_json_and_table() {
    let s = Server::start(&[]);
    s.run(&["put", "k1", "v"]).ok();
    s.run(&["put", "k2", "v"]).ok();
    let st = s.status();
    let id = st["node_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 16, "{st}");
    assert_eq!(st["listen"], s.addr.as_str());
    assert_eq!(st["keys"], 2);
    assert_eq!(st["version_vector"][&id], 2);
    assert_eq!(st["peers"], serde_json::json!([]));
    let table = s.run(&["status"]).ok();
    assert!(table.contains(&id) && table.contains(&s.addr), "{table}");
}

#[test]
fn watch_streams_changes() {
    let s = Server::start(&[]);
    for json in [true, false] {
        let mut cmd = meshkv();
        cmd.args(["--node", &s.addr, "watch", "--prefix", "w/"]);
        if json {
            cmd.arg("--json");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut watch = ChildGuard(cmd.spawn().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = watch.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        // The watch may not be registered yet: write until a line arrives.
        let mut line = None;
        for _ in 0..100 {
            s.run(&["put", "other", "ignored"]).ok();
            s.run(&["put", "w/1", "v\t1"]).ok();
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                line = Some(l);
                break;
            }
        }
        let line = line.expect("watch printed nothing");
        if json {
            assert_eq!(line, "{\"key\":\"w/1\",\"value\":\"v\\t1\"}");
            s.run(&["del", "w/1"]).ok();
            let mut next = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            while next != "{\"key\":\"w/1\",\"value\":null}" {
                assert_eq!(next, line, "only w/1 changes are expected");
                next = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            }
        } else {
            assert_eq!(line, "put\tw/1\tv\\t1");
            s.run(&["del", "w/1"]).ok();
            let mut next = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            while next != "del\tw/1" {
                assert_eq!(next, line, "only w/1 changes are expected");
                next = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            }
        }
        drop(watch);
    }
}

#[test]
fn export_of_large_values_is_not_limited_by_the_frame_size() {
    // 70 values of 400 KiB: one scan chunk holds more than the 17 MiB
    // default frame.
    let s = Server::start(&[]);
    let value = "v".repeat(400 * 1024);
    let input: String = (0..70).map(|i| format!("{{\"key\":\"big/{i:03}\",\"value\":\"{value}\"}}\n")).collect();
    s.run_with(&["import", "-"], Some(input.as_bytes())).ok();
    let export = s.run(&["export"]).ok();
    assert!(export == input, "export differs: {} bytes instead of {}", export.len(), input.len());
}
