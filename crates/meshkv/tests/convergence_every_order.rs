//! Concurrent writes of one key converge whatever order a node receives
//! them in, under every conflict policy, also when their timestamps tie.
//!
//! A replica gets other nodes' writes in whatever order links deliver them,
//! and with a frozen or coarse wall clock the HLC timestamps of concurrent
//! writes are equal. Users rely on every node that has seen the same writes
//! showing the same value for good; `merge_convergence.rs` checks this on
//! random scripts, this file on every order of a few chosen cases
//! (ALGORITHM.md, I4).

use meshkv::clock::ManualClock;
use meshkv::storage::Choice;
use meshkv::{Batch, ConflictPolicy, Db, NodeId, Options, Record};
use std::path::Path;
use std::sync::Arc;

const NOW: u64 = 1_700_000_000_000;

fn open(dir: &Path, id: u64, wall: u64, policy: ConflictPolicy) -> Db {
    let opts = Options {
        clock: Arc::new(ManualClock::new(wall)),
        new_node_id: Some(NodeId(id)),
        policy,
        ..Options::default()
    };
    Db::open(dir, opts).expect("open")
}

fn record(db: &Db) -> Record {
    db.get_record("k").expect("get").expect("record")
}

/// Calls `f` with every permutation of `v`.
fn permute(v: &mut [usize], k: usize, f: &mut dyn FnMut(&[usize])) {
    if k == v.len() {
        f(v);
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permute(v, k + 1, f);
        v.swap(k, i);
    }
}

fn policies() -> Vec<(&'static str, ConflictPolicy)> {
    vec![
        ("last-writer-wins", ConflictPolicy::LastWriterWins),
        ("prefer-nodes", ConflictPolicy::PreferNodes(vec![NodeId(2)])),
        (
            "resolver",
            ConflictPolicy::resolver(|_, a, b| if a.value >= b.value { Choice::First } else { Choice::Second }),
        ),
    ]
}

/// Three nodes with the same frozen wall clock write one key concurrently:
/// puts, deletes, a delete then a re-put, a batch writing the key three
/// times. Each of the 120 orders of the five resulting records, delivered
/// one at a time, leaves the same record. (One receiver holds every order,
/// each under its own key.)
#[test]
fn equal_timestamp_puts_and_deletes_converge_in_every_order() {
    for (name, policy) in policies() {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let nodes: Vec<Db> = (0..3).map(|i| open(dirs[i].path(), i as u64 + 1, NOW, policy.clone())).collect();
        let mut records = Vec::new();
        nodes[0].put("k", "a").expect("put");
        records.push(record(&nodes[0]));
        nodes[1].delete("k").expect("delete");
        records.push(record(&nodes[1]));
        nodes[1].put("k", "b2").expect("re-put");
        records.push(record(&nodes[1]));
        let mut batch = Batch::new();
        batch.put("k", "c1").delete("k").put("k", "c3");
        nodes[2].write(batch).expect("batch");
        records.push(record(&nodes[2]));
        nodes[0].delete("k").expect("delete");
        records.push(record(&nodes[0]));

        let receiver = open(dirs[3].path(), 99, NOW, policy.clone());
        let mut results: Vec<(Vec<usize>, Record)> = Vec::new();
        let mut order: Vec<usize> = (0..records.len()).collect();
        permute(&mut order, 0, &mut |order| {
            let key = format!("order{}", results.len()).into_bytes();
            for &i in order {
                receiver.apply([(key.clone(), records[i].clone())], None).expect("apply");
            }
            results.push((order.to_vec(), receiver.get_record(&key).expect("get").expect("record")));
        });
        assert_eq!(results.len(), 120);
        for (order, r) in &results {
            assert_eq!(r, &results[0].1, "{name}: order {order:?} differs from order {:?}", results[0].0);
        }
    }
}

/// ALGORITHM.md's example (I4) of why a pairwise "the hub wins" rule
/// diverges: hub write `h` beats spoke write `c`; spoke write `s`
/// supersedes `h` but is concurrent with `c`. Receivers that see (h, c, s), (s, c), (c, s),
/// (s, h, c), (c, h, s) or (h, s, c) end identical under `PreferNodes`,
/// with the hub's clock equal to, ahead of or behind the spokes'. (One
/// receiver takes every order, each under its own key.)
#[test]
fn prefer_nodes_example_from_the_design_converges() {
    let hub_id = 10;
    for (hub_offset, spoke_offset) in [(0i64, 0i64), (120_000, 0), (0, 120_000), (-5, 5)] {
        let policy = ConflictPolicy::PreferNodes(vec![NodeId(hub_id)]);
        let hub_wall = NOW.checked_add_signed(hub_offset).expect("hub wall");
        let spoke_wall = NOW.checked_add_signed(spoke_offset).expect("spoke wall");
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let hub = open(dirs[0].path(), hub_id, hub_wall, policy.clone());
        let s1 = open(dirs[1].path(), 20, spoke_wall, policy.clone());
        let s2 = open(dirs[2].path(), 5, spoke_wall, policy.clone());
        hub.put("k", "h").expect("put");
        let h = record(&hub);
        s2.put("k", "c").expect("put");
        let c = record(&s2);
        s1.apply([(b"k".to_vec(), h.clone())], None).expect("apply");
        s1.put("k", "s").expect("put");
        let s = record(&s1);

        let orders =
            [vec![&h, &c, &s], vec![&s, &c], vec![&c, &s], vec![&s, &h, &c], vec![&c, &h, &s], vec![&h, &s, &c]];
        let receiver_dir = tempfile::tempdir().expect("tempdir");
        let receiver = open(receiver_dir.path(), 99, spoke_wall, policy.clone());
        let mut results = Vec::new();
        for (i, order) in orders.iter().enumerate() {
            let key = format!("order{i}").into_bytes();
            for &r in order {
                receiver.apply([(key.clone(), r.clone())], None).expect("apply");
            }
            results.push(receiver.get_record(&key).expect("get").expect("record"));
        }
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r, &results[0], "offsets {hub_offset}/{spoke_offset}: order {i} differs from order 0");
        }
    }
}
