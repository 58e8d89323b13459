//! The raw fjall baseline of `bench replicate`: the sender's records ingested by plain fjall.

use crate::bench::timing::{self, Elapsed, Timer};
use crate::bench::workload::KEY_LEN;
use anyhow::{ensure, Context, Result};
use fjall::{KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use meshkv::Options;
use std::path::Path;

/// Entries per `OwnedWriteBatch` of the raw baseline.
const RAW_BATCH: usize = 1000;

/// The records the receiver ends up storing in its `data` keyspace, in the
/// order the sender streams them: data keys (`b'k'` ‖ user key, all
/// `KEY_LEN + 1` bytes) and encoded records, in two flat buffers.
pub(super) struct StoredRecords {
    keys: Vec<u8>,
    pub(super) values: Vec<u8>,
    ends: Vec<usize>,
}

impl StoredRecords {
    const DATA_KEY_LEN: usize = KEY_LEN + 1;

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.keys[i * Self::DATA_KEY_LEN..(i + 1) * Self::DATA_KEY_LEN]
    }

    fn value(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.values[start..self.ends[i]]
    }
}

/// One raw ingest.
pub(super) struct RawRun {
    /// Wall-clock and writing-thread on-CPU time of the timed loop.
    pub(super) elapsed: Elapsed,
    /// On-CPU time of this whole process (the writing thread, fjall's
    /// flush and compaction threads, the idle sender node) during the loop.
    pub(super) process_cpu_seconds: Option<f64>,
}

/// Reads a stream of the sender's records (what it streams to an empty
/// receiver: `Snapshot::catch_up` from the empty vector), in its order, as
/// the receiver stores them.
pub(super) fn stored_records(stream: meshkv::storage::ChangesSince, n: usize) -> Result<StoredRecords> {
    let mut out = StoredRecords {
        keys: Vec::with_capacity(n * StoredRecords::DATA_KEY_LEN),
        values: Vec::new(),
        ends: Vec::with_capacity(n),
    };
    for item in stream {
        let (key, record) = item.context("reading the sender's change log failed")?;
        ensure!(key.len() == KEY_LEN, "unexpected key length {}", key.len());
        out.keys.push(b'k');
        out.keys.extend_from_slice(&key);
        out.values.extend_from_slice(&record.encode());
        out.ends.push(out.values.len());
    }
    ensure!(out.len() == n, "the sender streams {} records, expected {n}", out.len());
    Ok(out)
}

/// Writes `records` into a fresh plain fjall database; times the batches.
pub(super) fn measure_raw(records: &StoredRecords, base: &Path) -> Result<RawRun> {
    let tmp = super::temp_dir(base, "meshkv-bench-raw-")?;
    let db = fjall::Database::builder(tmp.path().join("engine"))
        .cache_size(Options::default().cache_bytes)
        .open()
        .context("cannot open fjall database")?;
    let ks = db.keyspace("data", KeyspaceCreateOptions::default).context("cannot open fjall keyspace")?;
    let n = records.len();
    let cpu_before = timing::process_cpu();
    let timer = Timer::start();
    for start in (0..n).step_by(RAW_BATCH) {
        let end = (start + RAW_BATCH).min(n);
        let mut batch = OwnedWriteBatch::with_capacity(db.clone(), end - start).durability(Some(PersistMode::Buffer));
        for i in start..end {
            batch.insert(&ks, records.key(i), records.value(i));
        }
        batch.commit().context("fjall batch commit failed")?;
    }
    let elapsed = timer.stop();
    let process_cpu_seconds = cpu_before.zip(timing::process_cpu()).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    if let Some(last) = n.checked_sub(1) {
        let got = ks.get(records.key(last)).context("fjall read-back failed")?;
        ensure!(got.as_deref() == Some(records.value(last)), "fjall read-back returned the wrong value");
    }
    Ok(RawRun { elapsed, process_cpu_seconds })
}
