//! `meshkv serve` on a copy of a data directory (a restored backup, a
//! clone): the copy keeps the data but serves under a new node id, says so
//! in its log, and covers the old id's writes as a foreign origin's;
//! `--keep-id-for-copies` keeps the id.
#![cfg(target_os = "linux")]

mod cli_support;

use cli_support::Server;
use std::path::Path;

fn cp_a(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn a_copied_data_directory_serves_under_a_new_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let (data, copy, kept) = (dir.path().join("data"), dir.path().join("copy"), dir.path().join("kept"));
    let id = {
        let s = Server::start_on(&data, &[]);
        s.run(&["put", "k", "v"]).ok();
        s.status()["node_id"].as_str().unwrap().to_owned()
    };
    cp_a(&data, &copy);
    cp_a(&data, &kept);

    let c = Server::start_on(&copy, &[]);
    let st = c.status();
    let new_id = st["node_id"].as_str().unwrap();
    assert_ne!(new_id, id, "{st}");
    assert_eq!(st["version_vector"][&id], 1, "the old id's write stays covered: {st}");
    assert_eq!(c.run(&["get", "k"]).ok(), "v");
    let log = c.log_text();
    assert!(log.contains("is a copy of node") && log.contains(new_id), "{log}");
    c.run(&["put", "k2", "v2"]).ok();
    assert_eq!(c.status()["version_vector"][new_id], 1);

    let k = Server::start_on(&kept, &["--keep-id-for-copies"]);
    assert_eq!(k.status()["node_id"].as_str().unwrap(), id);

    // The original's own directory is not a copy.
    drop((c, k));
    let s = Server::start_on(&data, &[]);
    assert_eq!(s.status()["node_id"].as_str().unwrap(), id);
}
