//! Many threads writing overlapping keys at once lose no update and leave
//! the change log consistent (the seed's read-modify-write raced).

use meshkv::{Batch, Db, Options, ScanOptions};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread;

const THREADS: usize = 8;
const WRITES_PER_THREAD: usize = 400;
const KEYS: usize = 16;

#[test]
fn concurrent_overlapping_writes_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), Options::default()).expect("open"));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = Arc::clone(&db);
            thread::spawn(move || {
                let mut acked = Vec::with_capacity(WRITES_PER_THREAD);
                for i in 0..WRITES_PER_THREAD {
                    let key = format!("key{}", (t * 7 + i) % KEYS);
                    let value = format!("t{t}-i{i}");
                    let dot = if i % 10 == 9 {
                        let mut b = Batch::new();
                        b.put(key.clone(), value.clone()).put(format!("own{t}"), value.clone());
                        let last = db.write(b).expect("batch").expect("non-empty");
                        meshkv::Dot::new(last.origin, last.seq - 1)
                    } else {
                        db.put(key.clone(), value.clone()).expect("put")
                    };
                    acked.push((dot.seq, key, value));
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(u64, String, String)> = handles.into_iter().flat_map(|h| h.join().expect("thread")).collect();

    // Every acknowledged write got its own sequence number.
    let seqs: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(seqs.len(), acked.len(), "a sequence number was handed out twice");

    // Each key holds the value of the write with the highest seq, and that
    // write's causal context covers every earlier write of the key.
    let mut latest: HashMap<&str, &(u64, String, String)> = HashMap::new();
    for a in &acked {
        let e = latest.entry(a.1.as_str()).or_insert(a);
        if a.0 > e.0 {
            *e = a;
        }
    }
    for (key, (seq, _, value)) in &latest {
        let rec = db.get_record(key).expect("get").expect("present");
        assert_eq!(rec.value(), Some(value.as_bytes()), "lost update on {key}");
        assert_eq!(rec.winner().dot.seq, *seq);
        let earlier = acked.iter().filter(|a| a.1 == *key && a.0 < *seq);
        for a in earlier {
            assert!(rec.winner().deps.get(db.node_id()) >= a.0, "write {} not in the causal context", a.0);
        }
    }

    let report = db.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    let live = db.scan(ScanOptions::default()).count() as u64;
    assert_eq!(report.records, live);
    assert_eq!(report.log_entries, live, "one log entry per record, superseded ones removed");
    // Batches write two keys; seqs are dense within one process run.
    let writes = THREADS * WRITES_PER_THREAD + THREADS * (WRITES_PER_THREAD / 10);
    assert_eq!(db.version_vector().get(db.node_id()), writes as u64);
}
