//! Crash recovery: a child process writing with `Durability::Sync` (and, in a
//! second test, the default `Buffered`) is killed (SIGKILL) at random moments
//! and the store is reopened after every kill.
//! After each reopen:
//! - `Db::verify` finds no problem (every record has its log entry, no log
//!   entry points to a missing or superseded record, the version vector and
//!   the seq reservation cover the node's own writes);
//! - no acknowledged write is lost: each key holds its last acknowledged
//!   write, or the one write that was in flight at the kill (which then
//!   committed atomically, all keys of its batch or none);
//! - sequence numbers only grow: every acknowledged seq, and the first write
//!   after each reopen, is above every seq acknowledged (or seen) before.
//!
//! The child is this test binary itself, running the ignored test
//! `crash_child`. It announces each operation on stdout before issuing it
//! (`op ...`) and its seq after it returned `Ok` (`ack <seq>`), so the parent
//! knows exactly what was acknowledged and what may have been in flight.
//!
//! The run is driven by a seed, printed at the start; replay a failure with
//! `MESHKV_CRASH_SEED=<seed> cargo test -p meshkv --test crash_recovery`.

use meshkv::{Batch, Db, Durability, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Data directory of the child (its presence makes `crash_child` run).
const CHILD_DIR_ENV: &str = "MESHKV_CRASH_CHILD_DIR";
/// Seed of the child's operations.
const CHILD_SEED_ENV: &str = "MESHKV_CRASH_CHILD_SEED";
/// Seed of the whole run, to replay a failure.
const REPLAY_ENV: &str = "MESHKV_CRASH_SEED";
/// Prefix of the child's protocol lines (the test harness prints on stdout too).
const MARK: &str = "#meshkv-crash# ";

/// Kill/reopen rounds.
const ROUNDS: usize = 24;
/// Every `EARLY_EVERY`-th round kills the child at a random moment after
/// spawning it (possibly during startup or recovery) instead of after its
/// first acknowledged write.
const EARLY_EVERY: usize = 8;
/// Size of the key set: overwrites supersede change-log entries all the time.
const KEYS: usize = 200;
/// Bounds on the child's work, should it never be killed.
const CHILD_MAX_WRITES: u64 = 200_000;
const CHILD_MAX_TIME: Duration = Duration::from_secs(60);
/// How long the parent waits for the child's first acknowledged write.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// One operation of the child: a put or delete (one entry) or a batch of
/// puts and deletes on distinct keys (several entries). Keys are indexes.
type Op = Vec<(usize, Option<Vec<u8>>)>;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:03}").into_bytes()
}

/// Env var telling the child which durability to write with.
const CHILD_DURABILITY_ENV: &str = "MESHKV_CRASH_CHILD_DURABILITY";

fn options(durability: Durability) -> Options {
    Options::default().durability(durability)
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Sync => "sync",
        _ => "buffered",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn encode_op(op: &Op) -> String {
    let items: Vec<String> = op
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={}", hex(v)),
            None => format!("{k}=-"),
        })
        .collect();
    items.join(" ")
}

fn decode_op(s: &str) -> Op {
    s.split(' ')
        .map(|item| {
            let (k, v) = item.split_once('=').unwrap_or_else(|| panic!("malformed op item {item:?}"));
            let k: usize = k.parse().expect("key index");
            (k, (v != "-").then(|| unhex(v)))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The child.

/// Writes one protocol line with a single `write` and flushes it, so a kill
/// leaves at most a torn last line (which the parent ignores).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{MARK}{line}\n").as_bytes()).expect("child: write stdout");
    out.flush().expect("child: flush stdout");
}

fn random_value(rng: &mut StdRng, tag: &str) -> Vec<u8> {
    let len = if rng.random_ratio(1, 20) { rng.random_range(1000..4000) } else { rng.random_range(0..200) };
    let mut v = format!("{tag}:").into_bytes();
    v.extend((0..len).map(|_| rng.random::<u8>()));
    v
}

fn random_op(rng: &mut StdRng, tag: &str) -> Op {
    // Batches of 16 or more hold whole blocks of change-log entries.
    let count = match rng.random_range(0..100) {
        0..10 => rng.random_range(2..=5),
        10..15 => rng.random_range(16..=40),
        _ => 1,
    };
    let mut keys = Vec::with_capacity(count);
    while keys.len() < count {
        let k = rng.random_range(0..KEYS);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .enumerate()
        .map(|(j, k)| {
            let delete = rng.random_ratio(15, 100);
            (k, (!delete).then(|| random_value(rng, &format!("{tag}.{j}"))))
        })
        .collect()
}

/// The writer the parent kills. Does nothing unless started by
/// `writes_survive_sigkill_and_reopen`.
#[test]
#[ignore = "child process of writes_survive_sigkill_and_reopen; does nothing on its own"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else { return };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).expect("child seed").parse().expect("child seed");
    let mut rng = StdRng::seed_from_u64(seed);
    let durability = match std::env::var(CHILD_DURABILITY_ENV).as_deref() {
        Ok("buffered") => Durability::Buffered,
        _ => Durability::Sync,
    };
    let db = Db::open(&dir, options(durability)).expect("child: open");
    emit(&format!("open {}", db.node_id().0));
    let start = Instant::now();
    for n in 0..CHILD_MAX_WRITES {
        if start.elapsed() > CHILD_MAX_TIME {
            break;
        }
        let op = random_op(&mut rng, &format!("{seed:016x}.{n}"));
        emit(&format!("op {}", encode_op(&op)));
        let dot = match op.as_slice() {
            [(k, Some(v))] => db.put(key(*k), v.clone()).expect("child: put"),
            [(k, None)] => db.delete(key(*k)).expect("child: delete"),
            ops => {
                let mut b = Batch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => b.put(key(*k), v.clone()),
                        None => b.delete(key(*k)),
                    };
                }
                db.write(b).expect("child: write").expect("non-empty batch has a dot")
            }
        };
        emit(&format!("ack {}", dot.seq));
    }
}

// ---------------------------------------------------------------------------
// The parent.

/// Kills the child if the parent fails before killing it on purpose.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one child run printed.
struct ChildRun {
    /// Node id the child opened, if it got that far.
    node: Option<u64>,
    /// Operations that returned `Ok`, with the seq returned.
    acked: Vec<(Op, u64)>,
    /// The operation issued but not acknowledged when the kill came.
    in_flight: Option<Op>,
    stderr: String,
}

fn run_child(dir: &Path, durability: Durability, seed: u64, kill_after_first_ack: bool, delay: Duration) -> ChildRun {
    let exe = std::env::current_exe().expect("current exe");
    let child = Command::new(exe)
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .env(CHILD_DURABILITY_ENV, durability_name(durability))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let stderr = child.0.stderr.take().expect("child stderr");
    let (first_ack_tx, first_ack_rx) = mpsc::channel();
    let out_reader = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).expect("read child stdout") == 0 || buf.last() != Some(&b'\n') {
                break; // end, or a line torn by the kill
            }
            let line = String::from_utf8_lossy(&buf);
            if let Some(pos) = line.find(MARK) {
                let msg = line[pos + MARK.len()..].trim_end().to_string();
                if msg.starts_with("ack ") {
                    let _ = first_ack_tx.send(());
                }
                lines.push(msg);
            }
        }
        lines
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });

    if kill_after_first_ack {
        if let Err(e) = first_ack_rx.recv_timeout(FIRST_ACK_TIMEOUT) {
            drop(child);
            let stderr = err_reader.join().unwrap_or_default();
            panic!("child made no acknowledged write ({e:?}); its stderr:\n{stderr}");
        }
    }
    thread::sleep(delay);
    let _ = child.0.kill();
    let status = child.0.wait().expect("wait for child");
    let lines = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    if !killed_by_us(status) {
        panic!("child ended by itself ({status}) instead of being killed; its stderr:\n{stderr}");
    }
    parse_run(&lines, stderr)
}

#[cfg(unix)]
fn killed_by_us(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9)
}

#[cfg(not(unix))]
fn killed_by_us(status: ExitStatus) -> bool {
    !status.success()
}

fn parse_run(lines: &[String], stderr: String) -> ChildRun {
    let mut run = ChildRun { node: None, acked: Vec::new(), in_flight: None, stderr };
    for line in lines {
        let (what, rest) = line.split_once(' ').unwrap_or((line, ""));
        match what {
            "open" => run.node = Some(rest.parse().expect("node id")),
            "op" => {
                assert!(run.in_flight.is_none(), "child issued an op before the previous one was acknowledged");
                run.in_flight = Some(decode_op(rest));
            }
            "ack" => {
                let op = run.in_flight.take().expect("ack without op");
                run.acked.push((op, rest.parse().expect("acked seq")));
            }
            _ => panic!("unknown child line {line:?}"),
        }
    }
    run
}

/// What a key must hold: a write whose seq lies in `lo..=hi` (the seq range
/// of its batch) with this value (`None`: a tombstone).
#[derive(Clone, Debug)]
struct Expected {
    lo: u64,
    hi: u64,
    value: Option<Vec<u8>>,
}

/// The parent's knowledge of the store.
struct Model {
    /// Per key: the last acknowledged (or observed) write, if any.
    keys: Vec<Option<Expected>>,
    /// Highest seq acknowledged or observed so far.
    max_seq: u64,
    node: Option<u64>,
    total_acked: usize,
    in_flight_committed: usize,
}

fn short(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "<tombstone>".into(),
        Some(v) => {
            let tag = v.split(|b| *b == b':').next().unwrap_or_default();
            format!("{:?} ({} bytes)", String::from_utf8_lossy(tag), v.len())
        }
    }
}

impl Model {
    /// Takes in what the child acknowledged, checking seqs only grow.
    fn apply_acks(&mut self, round: usize, run: &ChildRun) {
        for (op, seq) in &run.acked {
            let lo = seq - (op.len() as u64 - 1);
            assert!(
                lo > self.max_seq,
                "round {round}: acknowledged write with seqs {lo}..={seq} is not above earlier seq {}",
                self.max_seq
            );
            for (k, v) in op {
                self.keys[*k] = Some(Expected { lo, hi: *seq, value: v.clone() });
            }
            self.max_seq = *seq;
        }
        self.total_acked += run.acked.len();
    }

    /// Checks the reopened store against the model and the in-flight op,
    /// then takes in what the store holds. Returns what became of the
    /// in-flight op.
    fn check_store(&mut self, round: usize, db: &Db, run: &ChildRun) -> &'static str {
        let node = db.node_id();
        if let Some(child_node) = run.node {
            assert_eq!(node.0, child_node, "round {round}: node id differs from the child's");
        }
        if let Some(n) = self.node {
            assert_eq!(node.0, n, "round {round}: node id changed across a crash");
        }
        self.node = Some(node.0);

        let report = db.verify().expect("verify");
        assert!(
            report.is_ok(),
            "round {round}: verify found {} problem(s) after the crash:\n  {}",
            report.problems.len(),
            report.problems.join("\n  ")
        );
        assert!(
            report.max_own_seq >= self.max_seq,
            "round {round}: highest seq in the store {} is below acknowledged seq {}",
            report.max_own_seq,
            self.max_seq
        );
        assert_eq!(report.log_entries, report.records, "round {round}: one version per record, one log entry each");
        let vv = db.version_vector().get(node);
        assert!(vv >= self.max_seq, "round {round}: version vector {vv} is below acknowledged seq {}", self.max_seq);

        let in_flight = run.in_flight.as_deref().unwrap_or_default();
        let mut in_flight_seqs = Vec::new();
        let mut observed = Vec::with_capacity(KEYS);
        for (k, expected) in self.keys.iter().enumerate() {
            let record = db.get_record(key(k)).expect("get_record");
            let got = record.as_ref().map(|r| {
                assert_eq!(r.versions().len(), 1, "round {round}: key {k} has siblings on a single node");
                let w = r.winner();
                assert_eq!(w.dot.origin, node, "round {round}: key {k} holds a foreign write");
                (w.dot.seq, w.value.clone())
            });
            let value = db.get(key(k)).expect("get");
            assert_eq!(value, got.as_ref().and_then(|g| g.1.clone()), "round {round}: get disagrees with get_record");

            let is_acked = match (expected, &got) {
                (None, None) => true,
                (Some(e), Some((seq, v))) => (e.lo..=e.hi).contains(seq) && *v == e.value,
                _ => false,
            };
            let from_in_flight = !is_acked
                && got.as_ref().is_some_and(|(seq, v)| {
                    *seq > self.max_seq && in_flight.iter().any(|(ik, iv)| *ik == k && iv == v)
                });
            if from_in_flight {
                in_flight_seqs.push(got.as_ref().map(|g| g.0).unwrap_or_default());
            }
            assert!(
                is_acked || from_in_flight,
                "round {round}: key {k} lost its last acknowledged write: expected {}, store holds {}",
                match expected {
                    None => "no record".to_string(),
                    Some(e) => format!("seq {}..={} value {}", e.lo, e.hi, short(&e.value)),
                },
                match &got {
                    None => "no record".to_string(),
                    Some((seq, v)) => format!("seq {seq} value {}", short(v)),
                }
            );
            observed.push(got);
        }
        if !in_flight_seqs.is_empty() {
            assert_eq!(
                in_flight_seqs.len(),
                in_flight.len(),
                "round {round}: the in-flight batch committed partially: {in_flight_seqs:?} of {} ops",
                in_flight.len()
            );
            let (min, max) = (in_flight_seqs.iter().min().unwrap(), in_flight_seqs.iter().max().unwrap());
            assert_eq!(max - min, in_flight.len() as u64 - 1, "round {round}: batch seqs are not consecutive");
            self.in_flight_committed += 1;
        }
        for (k, got) in observed.into_iter().enumerate() {
            if let Some((seq, value)) = got {
                self.max_seq = self.max_seq.max(seq);
                self.keys[k] = Some(Expected { lo: seq, hi: seq, value });
            }
        }
        let records = self.keys.iter().filter(|e| e.is_some()).count() as u64;
        assert_eq!(report.records, records, "round {round}: unexpected number of records");
        match (in_flight.is_empty(), in_flight_seqs.is_empty()) {
            (true, _) => "none",
            (false, true) => "not committed",
            (false, false) => "committed",
        }
    }
}

/// The durable setting: every acknowledged write survives, 24 kills.
#[test]
fn writes_survive_sigkill_and_reopen() {
    crash_rounds(Durability::Sync, ROUNDS);
}

/// The default setting promises to survive a process crash (not a power
/// loss): the same checks, fewer rounds.
#[test]
fn buffered_writes_survive_sigkill_and_reopen() {
    crash_rounds(Durability::Buffered, 8);
}

fn crash_rounds(durability: Durability, rounds: usize) {
    let seed: u64 = match std::env::var(REPLAY_ENV) {
        Ok(s) => s.parse().expect("MESHKV_CRASH_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!("crash_recovery seed {seed} (replay with {REPLAY_ENV}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model { keys: vec![None; KEYS], max_seq: 0, node: None, total_acked: 0, in_flight_committed: 0 };
    let started = Instant::now();

    for round in 0..rounds {
        let child_seed: u64 = rng.random();
        let early = round % EARLY_EVERY == EARLY_EVERY - 1;
        let delay = Duration::from_millis(if early { rng.random_range(0..=400) } else { rng.random_range(20..=300) });
        let run = run_child(dir.path(), durability, child_seed, !early, delay);
        if !early {
            assert!(!run.acked.is_empty(), "round {round}: the child was killed before any acknowledged write");
        }
        model.apply_acks(round, &run);

        let db = match Db::open(dir.path(), options(durability)) {
            Ok(db) => db,
            Err(e) => panic!("round {round}: reopening after the crash failed: {e}\nchild stderr:\n{}", run.stderr),
        };
        let in_flight = model.check_store(round, &db, &run);

        // The first write after the reopen continues above everything seen.
        let k = rng.random_range(0..KEYS);
        let value = format!("parent.{round}:").into_bytes();
        let dot = db.put(key(k), value.clone()).expect("put after reopen");
        assert_eq!(Some(dot.origin.0), model.node);
        assert!(
            dot.seq > model.max_seq,
            "round {round}: first write after reopen got seq {} but seq {} was already acknowledged",
            dot.seq,
            model.max_seq
        );
        model.max_seq = dot.seq;
        model.keys[k] = Some(Expected { lo: dot.seq, hi: dot.seq, value: Some(value) });
        model.total_acked += 1;
        drop(db);

        println!(
            "round {round:2}: killed {} {:3} ms after {}, {:5} acks, in-flight op {}, max seq {}",
            if early { "early" } else { "     " },
            delay.as_millis(),
            if early { "spawn    " } else { "first ack" },
            run.acked.len(),
            in_flight,
            model.max_seq
        );
    }
    println!(
        "{rounds} crashes ({}), {} acknowledged writes, {} in-flight ops committed, {:.1} s",
        durability_name(durability),
        model.total_acked,
        model.in_flight_committed,
        started.elapsed().as_secs_f64()
    );
    assert!(model.total_acked > rounds, "the children wrote almost nothing");
}
