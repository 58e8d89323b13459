//! Ingestion is only a faster way to the same store. Two receivers get the
//! same operations — local writes, a key-order bootstrap from a sender
//! whose records come from two origins, applied in gathered chunks, with
//! local writes over just-received keys, chunks sent twice and reopens in
//! between — and one of them ingests every chunk it can
//! (`ingest_min_records` = 2) while the other never does. Both must end
//! with identical records, version vectors and change logs, and pass
//! `verify()`, for every seed.
//!
//! Replay one seed: `MESHKV_INGEST_SEED=<n> cargo test -p meshkv --test ingest_differential`.

use meshkv::clock::ManualClock;
use meshkv::storage::ApplyContext;
use meshkv::{Batch, Db, NodeId, Options, Record, VersionVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;

/// Seeds run by `cargo test`.
const SEEDS: u64 = 24;
/// Keys the writers choose from.
const KEYS: u32 = 300;

fn options(id: u64, ingest_min_records: usize) -> Options {
    Options {
        new_node_id: Some(NodeId(id)), // The same wall time for every store, so both receivers' local writes
        // get the same timestamps.
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        ingest_min_records,
        ..Options::default()
    }
}

fn key(i: u32) -> String {
    format!("k{i:04}")
}

/// A batch of 1–4 random puts and deletes; `tag` makes the values distinct.
fn random_batch(rng: &mut StdRng, tag: &str) -> Batch {
    let mut b = Batch::new();
    let mut used = Vec::new();
    for n in 0..rng.random_range(1..=4u32) {
        let k = rng.random_range(0..KEYS);
        if used.contains(&k) {
            continue;
        }
        used.push(k);
        if rng.random_bool(0.2) {
            b.delete(key(k));
        } else {
            b.put(key(k), format!("{tag}-{n}-{}", rng.random::<u32>()));
        }
    }
    b
}

/// One receiver under test, reopened from its directory at will.
struct Receiver {
    dir: tempfile::TempDir,
    db: Option<Db>,
    ingest_min_records: usize,
    ingested: usize,
}

impl Receiver {
    fn new(ingest_min_records: usize) -> Receiver {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), options(9, ingest_min_records)).expect("open receiver");
        Receiver { dir, db: Some(db), ingest_min_records, ingested: 0 }
    }

    fn db(&self) -> &Db {
        self.db.as_ref().expect("open")
    }

    fn reopen(&mut self) {
        drop(self.db.take());
        self.db = Some(Db::open(self.dir.path(), options(9, self.ingest_min_records)).expect("reopen"));
    }

    fn apply(&mut self, chunk: &[(Vec<u8>, Record)], from: NodeId, covered: Option<&VersionVector>) {
        let ctx = ApplyContext { covered, from: Some(from), ..ApplyContext::default() };
        let report = self.db().apply_with(chunk.iter().cloned(), ctx).expect("apply");
        self.ingested += report.ingested;
    }
}

/// Everything observable that must not depend on the path records took.
#[derive(Debug, PartialEq)]
struct State {
    records: Vec<(String, Option<Record>)>,
    vv: VersionVector,
    /// The change log in its order: key and dots of each entry's record.
    log: Vec<String>,
}

fn state(db: &Db) -> State {
    let records = (0..KEYS).map(|i| (key(i), db.get_record(key(i)).expect("get_record"))).collect();
    let log = db
        .changes_since(&VersionVector::new())
        .expect("changes_since")
        .map(|c| {
            let (k, r) = c.expect("log entry");
            format!("{} {:?}", String::from_utf8_lossy(&k), r.dots().collect::<Vec<_>>())
        })
        .collect();
    State { records, vv: db.version_vector(), log }
}

fn sender(dir: &Path, rng: &mut StdRng) -> Db {
    let s = Db::open(dir, options(1, usize::MAX)).expect("open sender");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Db::open(other_dir.path(), options(2, usize::MAX)).expect("open second origin");
    for i in 0..rng.random_range(20..120) {
        s.write(random_batch(rng, &format!("s{i}"))).expect("sender write");
        other.write(random_batch(rng, &format!("o{i}"))).expect("second origin write");
    }
    let theirs: Vec<(Vec<u8>, Record)> =
        other.changes_since(&VersionVector::new()).expect("changes").map(|c| c.expect("entry")).collect();
    s.apply(theirs, Some(&other.version_vector())).expect("merge the second origin");
    s
}

fn run_seed(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sender_dir = tempfile::tempdir().expect("tempdir");
    let s = sender(sender_dir.path(), &mut rng);
    let stream = s.snapshot().catch_up(&VersionVector::new(), None).expect("catch-up");
    assert!(stream.is_key_order(), "a bootstrap streams in key order");
    let stream: Vec<(Vec<u8>, Record)> = stream.map(|c| c.expect("record")).collect();
    let mut receivers = [Receiver::new(2), Receiver::new(usize::MAX)];
    // The same script for both: `Some(n)` applies the next n records,
    // `None` a local write (and now and then a reopen). Now and then a
    // chunk is sent again, as after a lost acknowledgement.
    let mut script: Vec<Option<usize>> = Vec::new();
    let mut left = stream.len();
    while left > 0 || rng.random_bool(0.3) {
        if left > 0 && rng.random_bool(0.6) {
            let n = rng.random_range(1..=left.min(60));
            left -= n;
            script.push(Some(n));
        } else {
            script.push(None);
        }
    }
    let again: Vec<bool> = (0..script.len()).map(|_| rng.random_bool(0.1)).collect();
    let writes: Vec<Batch> = (0..script.len()).map(|i| random_batch(&mut rng, &format!("r{i}"))).collect();
    let reopens: Vec<bool> = (0..script.len()).map(|_| rng.random_bool(0.1)).collect();
    for r in &mut receivers {
        let mut at = 0;
        for (step, action) in script.iter().enumerate() {
            match action {
                Some(n) => {
                    r.apply(&stream[at..at + n], s.node_id(), None);
                    if again[step] {
                        r.apply(&stream[at..at + n], s.node_id(), None);
                    }
                    at += n;
                }
                None => {
                    r.db().write(writes[step].clone()).expect("local write");
                }
            }
            if reopens[step] {
                r.reopen();
            }
        }
        r.apply(&[], s.node_id(), Some(&s.version_vector()));
        let report = r.db().verify().expect("verify");
        assert!(report.is_ok(), "seed {seed}: {report:?}");
    }
    assert!(receivers[0].ingested > 0, "seed {seed}: nothing was ingested; the test would prove nothing");
    assert_eq!(receivers[1].ingested, 0, "seed {seed}");
    let (ingesting, plain) = (state(receivers[0].db()), state(receivers[1].db()));
    assert_eq!(ingesting.vv, plain.vv, "seed {seed}: version vectors differ");
    for (a, b) in ingesting.records.iter().zip(&plain.records) {
        assert_eq!(a, b, "seed {seed}: records differ");
    }
    assert_eq!(ingesting.log, plain.log, "seed {seed}: change logs differ");
    // And after a reopen (held-back entries restored, interrupted ingestions completed).
    receivers[0].reopen();
    assert_eq!(state(receivers[0].db()), ingesting, "seed {seed}: the ingesting receiver changed on reopen");
}

#[test]
fn ingesting_and_plain_receivers_end_identical() {
    let seeds = match std::env::var("MESHKV_INGEST_SEED") {
        Ok(s) => {
            let seed = s.parse().expect("MESHKV_INGEST_SEED must be a number");
            seed..seed + 1
        }
        Err(_) => 0..SEEDS,
    };
    for seed in seeds {
        run_seed(seed);
    }
}
