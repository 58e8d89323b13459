//! A large ascending batch of remote records (a gathered key-order catch-up)
//! writes the keys the receiver holds no record of straight into engine
//! tables, merges the keys it does hold as usual, and leaves a store that
//! `verify()` accepts, before and after a reopen and after later writes.

use meshkv::{Batch, Db, Options, Record, VersionVector};

const N: u32 = 20_000;

fn key(i: u32) -> String {
    format!("key-{i:06}")
}

/// A store at `dir` holding keys `0..N`, written in batches of 1000.
fn loaded_sender(dir: &std::path::Path, value: impl Fn(u32) -> String) -> Db {
    let sender = Db::open(dir, Options::default()).expect("open sender");
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::new();
        for &i in chunk {
            b.put(key(i), value(i));
        }
        sender.write(b).expect("write");
    }
    sender
}

#[test]
fn ascending_batch_into_fresh_keys_is_ingested_and_consistent() {
    let (da, dr) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let sender = loaded_sender(da.path(), |i| format!("value-{i}"));
    let stream = sender.snapshot().catch_up(&VersionVector::new(), None).expect("catch_up");
    assert!(stream.is_key_order(), "a bootstrap streams in key order");
    let records: Vec<(Vec<u8>, Record)> = stream.map(|r| r.expect("record")).collect();
    assert_eq!(records.len(), N as usize);

    let dir = dr.path().join("store");
    let receiver = Db::open(&dir, Options::default()).expect("open receiver");
    // Written on the receiver before the batch arrives: a key the batch
    // also holds (concurrent, settled by the policy) and one it does not.
    receiver.put(key(N / 2), "local").expect("put");
    receiver.put(format!("{}-extra", key(N / 3)), "local only").expect("put");

    let report = receiver.apply(records.clone(), None).expect("apply");
    assert!(report.changed >= N as usize - 1, "{report:?}");
    assert_eq!(report.ingested, N as usize - 1, "every key without a record is ingested");
    assert!(receiver.verify().expect("verify").is_ok());

    let check = |db: &Db| {
        for (k, remote) in &records {
            let got = db.get_record(k).expect("get").expect("present");
            if *k == key(N / 2).into_bytes() {
                assert_eq!(got.versions().len(), 1, "last-writer-wins keeps one version");
            } else {
                assert_eq!(&got, remote, "key {}", String::from_utf8_lossy(k));
            }
        }
        assert_eq!(db.get(format!("{}-extra", key(N / 3))).expect("get").as_deref(), Some(&b"local only"[..]));
    };
    check(&receiver);
    // The ingested change-log entries serve a log-order catch-up of the
    // sender's last writes from the receiver.
    let mut near = VersionVector::new();
    near.raise(sender.node_id(), u64::from(N) - 100);
    near.raise(receiver.node_id(), receiver.version_vector().get(receiver.node_id()));
    let tail = receiver.snapshot().catch_up(&near, None).expect("catch_up");
    assert!(!tail.is_key_order(), "a small difference streams in log order");
    let mut served: Vec<Vec<u8>> = tail.map(|r| r.expect("record").0).collect();
    served.sort();
    let mut expected: Vec<Vec<u8>> = records
        .iter()
        .filter(|(_, r)| r.dots().any(|d| d.origin == sender.node_id() && d.seq > u64::from(N) - 100))
        .map(|(k, _)| k.clone())
        .collect();
    expected.sort();
    assert_eq!(served.len(), 100);
    assert_eq!(served, expected);
    // Applying the same records again changes nothing.
    let again = receiver.apply(records.clone(), None).expect("apply again");
    assert_eq!((again.changed, again.ingested), (0, 0));

    drop(receiver);
    let receiver = Db::open(&dir, Options::default()).expect("reopen");
    assert!(receiver.verify().expect("verify").is_ok());
    check(&receiver);
    // A local write over an ingested key supersedes the ingested version.
    receiver.put(key(7), "overwritten").expect("put");
    assert_eq!(receiver.get(key(7)).expect("get").as_deref(), Some(&b"overwritten"[..]));
    assert!(receiver.verify().expect("verify").is_ok());
}

/// A misbehaving peer sends one write (one dot) under two fresh keys in a
/// batch that is ingested: the apply completes and the store keeps serving.
#[test]
fn one_dot_under_two_keys_does_not_break_an_ingestion() {
    let (da, dr) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let sender = loaded_sender(da.path(), |_| "v".to_string());
    let stream = sender.snapshot().catch_up(&VersionVector::new(), None).expect("catch_up");
    let mut records: Vec<(Vec<u8>, Record)> = stream.map(|r| r.expect("record")).collect();
    records[1].1 = records[0].1.clone();

    let receiver = Db::open(dr.path(), Options::default()).expect("open receiver");
    let report = receiver.apply(records, None).expect("apply");
    assert_eq!(report.ingested, N as usize);
    assert_eq!(receiver.get(key(5)).expect("get").as_deref(), Some(&b"v"[..]));
    receiver.put("after", "still writable").expect("put");
}
