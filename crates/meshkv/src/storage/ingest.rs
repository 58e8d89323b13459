//! Bulk ingestion: records for keys that hold none, written straight into
//! new engine tables, their change-log entries held back and written as log
//! tables later, and the `ingest` marker that lets a crash or a failure at
//! any step be completed (docs/ALGORITHM.md §5, "Gathered batches and ingestion into tables").

use super::changelog::{self, LogEdits};
use super::db::{Db, Inner, WriterState};
use super::error::Result;
use super::keys;
use super::pending::LogEntry;
use super::read::decode;
use crate::version::Seq;
use fjall::{OwnedWriteBatch, PersistMode};

impl Db {
    /// Completes an ingestion interrupted before its change-log entries were
    /// committed (called by [`Db::open`]); see [`Inner::complete_ingestion`].
    pub(crate) fn finish_ingestion(&self) -> Result<()> {
        let inner = &*self.inner;
        let _w = inner.lock_writer();
        if let Some(entries) = inner.complete_ingestion()? {
            tracing::info!(path = %inner.path.display(), entries, "completed an interrupted ingestion");
        }
        Ok(())
    }
}

impl Inner {
    /// Completes the ingestion named by the stored `ingest` marker, if any,
    /// and returns the log entries it added; the caller holds the writer
    /// lock. Its keys held no record before it, and every record in its key
    /// range is current, so adding the log entry of every version found in
    /// that range restores I2; versions whose entry exists (keys written
    /// before the ingestion, or log tables ingested before a failure) are
    /// skipped.
    pub(crate) fn complete_ingestion(&self) -> Result<Option<usize>> {
        let Some(raw) = self.meta.get(META_INGEST)? else { return Ok(None) };
        let (first, last): (Vec<u8>, Vec<u8>) = match postcard::take_from_bytes(&raw) {
            Ok((range, [])) => range,
            _ => return Err(self.corrupt("malformed ingestion marker")),
        };
        let mut batch = self.batch(1024);
        let mut log = LogEdits::new(self.node_id);
        let now = self.engine.snapshot();
        let mut entries = 0usize;
        for guard in self.data.range(first..=last) {
            let (dkey, raw) = guard.into_inner()?;
            let user = keys::user_key(&dkey);
            for dot in decode(user, &raw)?.dots() {
                if changelog::lookup(&now, &self.log, self.node_id, dot, |d| self.corrupt(d))?.is_none() {
                    log.add(dot, user);
                    entries += 1;
                }
            }
        }
        log.write_to(&self.log, Seq::MAX, &mut batch, |d| self.corrupt(d))?;
        batch.remove(&self.meta, META_INGEST);
        batch.commit()?;
        Ok(Some(entries))
    }

    /// Completes an ingestion that failed in this process after its data
    /// tables (say, on a full disk) before anything else is committed; while
    /// that fails, so does every commit.
    pub(crate) fn finish_failed_ingestion(&self, w: &mut WriterState) -> Result<()> {
        if w.unfinished_ingestion {
            self.complete_ingestion()?;
            // The completion covered the held-back entries' range too.
            w.pending_log.clear();
            w.unfinished_ingestion = false;
        }
        Ok(())
    }

    /// Ingests the held-back change-log entries as log tables; the caller
    /// commits the removal of the `ingest` marker. Until it has, a failure
    /// is completed like an interrupted ingestion.
    fn ingest_held_log(&self, w: &mut WriterState) -> Result<()> {
        w.unfinished_ingestion = true;
        ingest_log_entries(&self.log, w.pending_log.take())
    }

    /// Writes the held-back change-log entries, if any, and removes the
    /// `ingest` marker; after a failed ingestion, completes it instead
    /// (which covers the held entries too).
    pub(crate) fn write_held_log(&self, w: &mut WriterState) -> Result<()> {
        if w.unfinished_ingestion {
            return self.finish_failed_ingestion(w);
        }
        if w.pending_log.is_empty() {
            return Ok(());
        }
        self.ingest_held_log(w)?;
        let mut batch = self.batch(1);
        batch.remove(&self.meta, META_INGEST);
        batch.commit()?;
        w.unfinished_ingestion = false;
        Ok(())
    }

    /// Writes `ingestion` (records for keys that held none, ascending) into
    /// new data tables and holds back `log_tables`, their remote dots' log
    /// entries; writes the held-back entries once they are many or
    /// `raising` (the commit raises the version vector, and coverage needs
    /// their entries in the log). The marker removal goes into `batch`.
    pub(super) fn ingest(
        &self,
        w: &mut WriterState,
        ingestion: Vec<(fjall::Slice, fjall::Slice)>,
        log_tables: Vec<LogEntry>,
        raising: bool,
        batch: &mut OwnedWriteBatch,
    ) -> Result<()> {
        if let (Some((first, _)), Some((last, _))) = (ingestion.first(), ingestion.last()) {
            // Written before the tables and removed with the batch that
            // writes their log entries: a crash in between leaves the range
            // (with that of the held-back entries) to `finish_ingestion`.
            let mut intent =
                OwnedWriteBatch::with_capacity(self.engine.clone(), 1).durability(Some(PersistMode::SyncData));
            let (start, end) = w.pending_log.marker_range(first, last);
            intent.insert(&self.meta, META_INGEST, encode_range(&start, &end));
            // The tables hold timestamps too: the clock ceiling covers them
            // before they exist.
            let ceiling = self.reserve_hlc(w, &mut intent);
            intent.commit()?;
            w.hlc_ceiling = ceiling;
            let (first, last) = (first.to_vec(), last.to_vec());
            let mut tables = self.data.start_ingestion()?;
            for (k, v) in ingestion {
                tables.write(k, v)?;
            }
            tables.finish()?;
            // The records are readable from here on: if anything below
            // fails, the next commit first adds their log entries.
            w.unfinished_ingestion = true;
            w.pending_log.hold(&first, &last, log_tables);
            if w.pending_log.is_empty() {
                batch.remove(&self.meta, META_INGEST);
            }
        }
        // Held back until they are many, or a raise of the vector could
        // cover their dots (coverage needs their entries in the log).
        if !w.pending_log.is_empty() && (w.pending_log.full() || raising) {
            self.ingest_held_log(w)?;
            batch.remove(&self.meta, META_INGEST);
        }
        Ok(())
    }
}

/// Meta key of the ingestions whose change-log entries may not be in the
/// log (interrupted, or held back): the first and last data keys they cover.
const META_INGEST: &[u8] = b"ingest";

/// Writes change-log entries of remote dots, ascending and one per dot (as
/// [`PendingLog::take`](super::pending::PendingLog::take) gives them), into
/// new log tables.
fn ingest_log_entries(log: &fjall::Keyspace, entries: Vec<LogEntry>) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut tables = log.start_ingestion()?;
    for (k, v) in entries {
        tables.write(fjall::Slice::new(&k), v)?;
    }
    Ok(tables.finish()?)
}

fn encode_range(first: &[u8], last: &[u8]) -> Vec<u8> {
    postcard::to_stdvec(&(first, last)).unwrap_or_else(|_| unreachable!("in-memory encode"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Options, Record};
    use crate::version::{Dot, VersionVector};

    /// `target` (which holds one key of its own, `k050x`) with an ingestion
    /// of `source`'s 100 keys stopped after its data tables: the marker and
    /// the tables exist, the change-log entries do not.
    fn interrupted_ingestion() -> (tempfile::TempDir, tempfile::TempDir, Db, Db, Vec<String>) {
        let (ds, dt) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let source = Db::open(ds.path(), Options::default()).expect("open");
        let keys: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
        for k in &keys {
            source.put(k.as_str(), "v").expect("put");
        }
        let target = Db::open(dt.path(), Options::default()).expect("open");
        target.put("k050x", "local").expect("put");
        let inner = &*target.inner;
        let (first, last) = (keys::data_key(keys[0].as_bytes()), keys::data_key(keys[99].as_bytes()));
        inner.meta.insert(META_INGEST, encode_range(&first, &last)).expect("intent");
        inner.filter.add_all(keys.iter().map(|k| k.as_bytes()));
        let mut tables = inner.data.start_ingestion().expect("ingestion");
        for k in &keys {
            let record = source.get_record(k).expect("get").expect("present");
            tables.write(keys::data_key(k.as_bytes()), record.encode()).expect("write");
        }
        tables.finish().expect("finish");
        assert!(!target.verify().expect("verify").is_ok(), "the log entries are missing");
        (ds, dt, source, target, keys)
    }

    /// An ingestion that failed after its data tables in this process (a
    /// full disk, say) is completed before the next commit.
    #[test]
    fn next_commit_completes_a_failed_ingestion() {
        let (_ds, _dt, source, target, keys) = interrupted_ingestion();
        target.inner.lock_writer().unfinished_ingestion = true;
        target.put("after", "x").expect("put");
        let report = target.verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert!(target.inner.meta.get(META_INGEST).expect("meta").is_none());
        assert_eq!(target.get_record(&keys[7]).expect("get"), source.get_record(&keys[7]).expect("get"));
    }

    /// `target` after applying, in one ascending batch, the bootstrap of a
    /// store holding `ingest_min_records + 100` keys: ingested, with the
    /// change-log entries of its records held back.
    fn held_back_bootstrap() -> (tempfile::TempDir, tempfile::TempDir, Db, Db) {
        let (ds, dt) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let source = Db::open(ds.path(), Options::default()).expect("open");
        let n = Options::default().ingest_min_records + 100;
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut b = crate::storage::Batch::new();
            for i in chunk {
                b.put(format!("k{i:06}"), "v");
            }
            source.write(b).expect("write");
        }
        let records: Vec<(Vec<u8>, Record)> = source
            .snapshot()
            .catch_up(&VersionVector::new(), None)
            .expect("catch_up")
            .map(|r| r.expect("record"))
            .collect();
        let target = Db::open(dt.path(), Options::default()).expect("open");
        let report = target.apply(records, None).expect("apply");
        assert_eq!(report.ingested, n);
        assert!(!target.inner.lock_writer().pending_log.is_empty(), "below the memory bound, entries are held");
        assert!(target.inner.meta.get(META_INGEST).expect("meta").is_some(), "the marker covers held entries");
        (ds, dt, source, target)
    }

    /// The log entry of `dot`, read without writing held-back entries.
    fn logged(db: &Db, dot: Dot) -> bool {
        let inner = &*db.inner;
        let snap = inner.engine.snapshot();
        changelog::lookup(&snap, &inner.log, inner.node_id, dot, |d| inner.corrupt(d)).expect("lookup").is_some()
    }

    /// Held-back entries are in the log before a raise of the vector can
    /// cover their dots.
    #[test]
    fn held_back_entries_are_written_before_the_vector_is_raised() {
        let (_ds, _dt, source, target) = held_back_bootstrap();
        let dot = Dot::new(source.node_id(), 5);
        assert!(!logged(&target, dot));
        target.apply(Vec::<(Vec<u8>, Record)>::new(), Some(&source.version_vector())).expect("raise");
        assert!(target.inner.lock_writer().pending_log.is_empty());
        assert!(logged(&target, dot));
        assert!(target.inner.meta.get(META_INGEST).expect("meta").is_none());
        assert_eq!(target.version_vector().get(source.node_id()), source.version_vector().get(source.node_id()));
        assert!(target.verify().expect("verify").is_ok());
    }

    /// A local write over a key whose entry is held back: the superseded
    /// dot's entry is not written later.
    #[test]
    fn a_write_over_a_held_back_record_leaves_no_entry_for_it() {
        let (_ds, _dt, source, target) = held_back_bootstrap();
        let old = source.get_record("k000007").expect("get").expect("present").dots().next().expect("dot");
        target.put("k000007", "local").expect("put");
        let report = target.verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert!(!logged(&target, old));
    }

    /// A crash while entries are held back: the reopen restores them.
    #[test]
    fn reopen_restores_held_back_entries_lost_in_a_crash() {
        let (_ds, dt, source, target) = held_back_bootstrap();
        target.inner.lock_writer().pending_log.clear();
        drop(target);

        let target = Db::open(dt.path(), Options::default()).expect("reopen");
        assert!(target.inner.meta.get(META_INGEST).expect("meta").is_none());
        assert!(logged(&target, Dot::new(source.node_id(), 5)));
        assert!(target.verify().expect("verify").is_ok());
    }

    /// A snapshot taken after an ingestion failed in this process sees the
    /// completed change log (the next commit would complete it too).
    #[test]
    fn a_snapshot_completes_a_failed_ingestion() {
        let (_ds, _dt, _source, target, _keys) = interrupted_ingestion();
        target.inner.lock_writer().unfinished_ingestion = true;
        let report = target.verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert!(target.inner.meta.get(META_INGEST).expect("meta").is_none());
    }

    /// A crash after an ingestion's tables and before its change-log entries:
    /// the reopen completes it.
    #[test]
    fn reopen_completes_an_interrupted_ingestion() {
        let (_ds, dt, source, target, keys) = interrupted_ingestion();
        drop(target);

        let target = Db::open(dt.path(), Options::default()).expect("reopen");
        assert!(target.verify().expect("verify").is_ok());
        assert!(target.inner.meta.get(META_INGEST).expect("meta").is_none());
        for k in &keys {
            assert_eq!(target.get_record(k).expect("get"), source.get_record(k).expect("get"));
        }
        assert_eq!(target.get("k050x").expect("get").as_deref(), Some(&b"local"[..]));
    }
}
