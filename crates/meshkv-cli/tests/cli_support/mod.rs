//! Helpers of the `cli_*` tests: run the built `meshkv` binary, start
//! `meshkv serve` children on free loopback ports, and kill every child on
//! drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_meshkv");
/// Longest a client command may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A `meshkv` command with a clean environment (no MESHKV_* or RUST_LOG
/// from the caller).
pub fn meshkv() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("MESHKV_NODE").env_remove("MESHKV_CLUSTER").env_remove("MESHKV_SECRET_FILE").env_remove("RUST_LOG");
    c
}

/// A port nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `cond` holds (panics after `secs` seconds).
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished command left.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts exit code 0 and returns stdout.
    pub fn ok(&self) -> String {
        assert_eq!(self.code(), Some(0), "expected success: {self:?}");
        self.out()
    }

    /// Asserts exit code `code` and that stderr mentions `needle`.
    pub fn fails(&self, code: i32, needle: &str) {
        assert_eq!(self.code(), Some(code), "expected exit {code}: {self:?}");
        assert!(self.stderr.contains(needle), "stderr should mention {needle:?}: {self:?}");
    }
}

/// Runs `cmd` to completion with `stdin` (empty if `None`), reading its
/// output; kills it and panics after [`RUN_TIMEOUT`].
pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn meshkv"));
    let mut input = child.0.stdin.take().unwrap();
    let data = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "meshkv did not finish within {RUN_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    Run { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Runs `meshkv ARGS`.
pub fn run(args: &[&str]) -> Run {
    let mut cmd = meshkv();
    cmd.args(args);
    run_cmd(cmd, None)
}

/// A child process, killed (and reaped) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `meshkv serve` child on a free loopback port.
pub struct Server {
    pub child: ChildGuard,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory.
    pub data: PathBuf,
    /// Its stderr (the log).
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a node with data in a fresh temporary directory.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut s = Server::start_on(&data, extra);
        s._dir = Some(dir);
        s
    }

    /// Starts a node on `data` (which outlives it), retrying with another
    /// port if the one picked was taken in between.
    pub fn start_on(data: &Path, extra: &[&str]) -> Server {
        for attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let log = data.with_extension(format!("log{attempt}"));
            let mut cmd = meshkv();
            cmd.arg("serve").arg("--data").arg(data).args(["--listen", &addr]).args(extra);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
            let mut child = ChildGuard(cmd.spawn().expect("spawn meshkv serve"));
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("meshkv node serving") {
                    return Server { child, addr, data: data.to_path_buf(), log, _dir: None };
                }
                if let Some(status) = child.0.try_wait().unwrap() {
                    if text.contains("cannot listen") {
                        break; // the port was taken meanwhile: try another
                    }
                    panic!("meshkv serve exited with {status}: {text}");
                }
                assert!(Instant::now() < deadline, "meshkv serve did not start: {text}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("no free port found for meshkv serve");
    }

    /// Runs `meshkv --node ADDR ARGS`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None)
    }

    /// Runs `meshkv --node ADDR ARGS` with `stdin`.
    pub fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut cmd = meshkv();
        cmd.args(["--node", &self.addr]).args(args);
        run_cmd(cmd, stdin)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The node's `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(self.run(&["status", "--json"]).ok().trim()).unwrap()
    }
}
