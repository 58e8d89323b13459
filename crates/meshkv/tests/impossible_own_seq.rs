//! Records that name one of this node's own writes with a seq no history
//! reaches (a buggy or hostile peer) are refused whole, and this node's own
//! seqs go on from where they were: taking such a seq would wrap the next
//! seq to 0 and reuse seqs that peers already cover.

use meshkv::storage::Version;
use meshkv::{Db, Dot, Error, Hlc, Options, Record, VersionVector};

#[test]
fn an_own_dot_near_u64_max_is_refused_and_seqs_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let first = db.put("a", "1").expect("put");
    for seq in [u64::MAX, 1 << 62] {
        let version = Version {
            dot: Dot::new(db.node_id(), seq),
            hlc: Hlc::new(1_700_000_000_000, 0),
            deps: VersionVector::new(),
            value: Some(b"x".to_vec()),
        };
        let got = db.apply([(b"z".to_vec(), Record::single(version))], None);
        assert!(matches!(got, Err(Error::ImpossibleOwnSeq { seq: s }) if s == seq), "{got:?}");
        assert_eq!(db.get("z").expect("get"), None, "nothing applied");
    }
    let next = db.put("b", "2").expect("put");
    assert_eq!(next.seq, first.seq + 1);
    assert_eq!(db.version_vector().get(db.node_id()), next.seq);
}
