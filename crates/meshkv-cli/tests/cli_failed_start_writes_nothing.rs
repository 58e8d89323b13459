//! A `meshkv serve` that cannot start (its port or metrics port in use, a
//! setting the node refuses) exits 2 and leaves no store behind: the data
//! directory it was given is not created, and an existing one keeps its
//! files and node id untouched.

mod cli_support;

use cli_support::{free_port, run, Server};
use std::net::TcpListener;
use std::path::Path;

/// Every file under `dir` (relative) with its contents.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push((path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_serve_that_cannot_start_creates_no_store() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let free = format!("127.0.0.1:{}", free_port());
    let failures: [(&[&str], &str); 3] = [
        (&["--listen", &taken], "cannot listen on"),
        (&["--listen", &free, "--metrics", &taken], "(metrics)"),
        (&["--listen", &free, "--discovery"], "discovery needs the cluster secret"),
    ];
    for (extra, needle) in failures {
        let mut args = vec!["serve", "--data", data];
        args.extend_from_slice(extra);
        let r = run(&args);
        r.fails(2, needle);
        assert!(!r.stderr.contains("created new store"), "{extra:?}: {r:?}");
        assert!(!Path::new(data).exists(), "{extra:?} left a store in {data}: {r:?}");
    }
}

#[test]
fn a_serve_that_cannot_start_leaves_an_existing_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start_on(&data, &[]);
    s.run(&["put", "kept", "yes"]).ok();
    drop(s);
    let before = snapshot(&data);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    run(&["serve", "--data", data.to_str().unwrap(), "--listen", &taken]).fails(2, "cannot listen on");
    assert_eq!(snapshot(&data), before, "a failed start changed the store");
    let s = Server::start_on(&data, &[]);
    assert_eq!(s.run(&["get", "kept"]).ok(), "yes");
}
