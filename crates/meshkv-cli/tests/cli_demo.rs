//! `meshkv demo` runs by itself, converges and exits 0.

mod cli_support;

use std::time::Instant;

#[test]
fn demo_converges_and_exits_0() {
    let started = Instant::now();
    let out = cli_support::run(&["demo"]).ok();
    assert!(started.elapsed().as_secs() < 15, "took {:?}", started.elapsed());
    for phase in ["1. full mesh", "2. partition", "3. during the partition", "4. healed"] {
        assert!(out.contains(phase), "{out}");
    }
    assert!(out.contains("converged: all three nodes"), "{out}");
    for node in ["a", "b", "c"] {
        assert!(out.contains(&format!("  {node}: green")), "{out}");
    }
}
