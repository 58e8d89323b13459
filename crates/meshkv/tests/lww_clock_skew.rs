//! Last-writer-wins stays convergent when clocks are skewed by more than
//! the 60 s a node's clock agrees to adopt: an overwrite orders after the
//! record it supersedes, so a loser dropped under it can never win again.

use meshkv::clock::ManualClock;
use meshkv::{Db, Options, Record, VersionVector};
use std::sync::Arc;

const NOW: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

fn open(dir: &std::path::Path, wall: u64) -> Db {
    let opts = Options { clock: Arc::new(ManualClock::new(wall)), ..Options::default() };
    Db::open(dir, opts).expect("open")
}

/// A complete catch-up of `to` from `from` (what a link does: changes_since
/// from one snapshot, then raise to that snapshot's vector).
fn pull(to: &Db, from: &Db) {
    let cs = from.changes_since(&to.version_vector()).expect("changes");
    let vv: VersionVector = cs.version_vector().clone();
    let recs: Vec<(Vec<u8>, Record)> = cs.map(|r| r.expect("rec")).collect();
    to.apply(recs, Some(&vv)).expect("apply");
}

/// The winner's and the loser's timestamps are hours ahead of the wall
/// clock of the node that overwrites the winner (its clock refuses to adopt
/// them). Its write must still order after the loser it dropped, or a node
/// that kept the loser keeps it while this one keeps its write, with both
/// vectors covering everything: divergence for good.
#[test]
fn dropped_loser_stays_dropped_with_clocks_hours_ahead() {
    lww_scenario(NOW + 3 * HOUR, NOW + 2 * HOUR, NOW);
}

/// The same with correct clocks everywhere except one node (X) whose wall
/// clock lags the others by two minutes.
#[test]
fn dropped_loser_stays_dropped_with_one_slow_node() {
    lww_scenario(NOW + 2, NOW + 1, NOW - 120_000);
}

fn lww_scenario(p_wall: u64, q_wall: u64, x_wall: u64) {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let p = open(dirs[0].path(), p_wall);
    let q = open(dirs[1].path(), q_wall);
    let x = open(dirs[2].path(), x_wall);
    let y = open(dirs[3].path(), NOW);

    p.put("k", "W").expect("put"); // concurrent writes of k
    q.put("k", "L").expect("put");

    pull(&x, &p);
    pull(&x, &q); // X: W beats L (higher HLC), L dropped
    assert_eq!(x.get("k").expect("get").as_deref(), Some(&b"W"[..]));
    pull(&y, &q); // Y: only L
    x.put("k", "w").expect("put"); // supersedes W (deps cover W), not L; HLC ~ NOW < L's

    // Everyone exchanges everything, both ways, several rounds.
    for _ in 0..3 {
        for (a, b) in
            [(&x, &y), (&y, &x), (&x, &p), (&x, &q), (&y, &p), (&y, &q), (&p, &x), (&q, &x), (&p, &y), (&q, &y)]
        {
            pull(a, b);
        }
    }
    let vx = x.version_vector();
    let vy = y.version_vector();
    assert_eq!(vx, vy, "vectors agree: every node covers every write");
    let vals: Vec<_> = [&p, &q, &x, &y].iter().map(|d| d.get("k").expect("get")).collect();
    assert!(
        vals.windows(2).all(|w| w[0] == w[1]),
        "nodes diverged on k (P, Q, X, Y): {:?}",
        vals.iter().map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())).collect::<Vec<_>>()
    );
}
