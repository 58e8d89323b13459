//! The simulation: a cluster driven step by step through faults and writes,
//! then healed.

mod network;
mod oracle;

use crate::params::{draw_modes, Membership, Params, SimClock, Topology};
use crate::stats::Stats;
use crate::HEAL_BUDGET_MS;
use meshkv::protocol::{CloseReason, Mode};
use meshkv::storage::Version;
use meshkv::{Batch, Db, Dot, NodeId, Options, Record};
use network::{copy_tree, store_dir, Conn, End, Node};
use oracle::{show, show_value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// ---------------------------------------------------------------------------
// The simulation

pub(crate) struct Sim {
    seed: u64,
    rng: StdRng,
    now: u64,
    time: Arc<AtomicU64>,
    p: Params,
    /// Draws everything about membership changes and link modes, apart from
    /// `rng` so that they shift none of its draws.
    ext: StdRng,
    nodes: Vec<Node>,
    topology: BTreeSet<(usize, usize)>,
    /// Per topology edge `(a, b)`: the modes of `a`'s and `b`'s links.
    modes: BTreeMap<(usize, usize), (Mode, Mode)>,
    /// Membership changes still to come.
    plan: Membership,
    /// Every node id any store ever had.
    used_ids: Vec<NodeId>,
    /// Origins whose store is gone (left, or wiped): their writes survive
    /// only through peers.
    lost: BTreeSet<NodeId>,
    /// Writes of lost origins some remaining store held at the last loss.
    kept: BTreeSet<Dot>,
    /// Per lost origin: the highest coverage of it in a remaining store at
    /// the last loss.
    floor: BTreeMap<NodeId, u64>,
    cut: BTreeSet<(usize, usize)>,
    conns: Vec<Conn>,
    next_conn: u64,
    reconnect_at: BTreeMap<(usize, usize), u64>,
    /// In odd seeds, a copy of another node's store taken at its crash, for
    /// the late joiner to start from instead of an empty store.
    join_copy: Option<tempfile::TempDir>,
    /// Every write ever made, by key: the version as stored on its origin.
    writes: BTreeMap<String, Vec<Version>>,
    write_count: u64,
    next_check: u64,
    stats: Stats,
    trace: bool,
}

struct Activity {
    delivered: usize,
    sent: usize,
}

impl Sim {
    pub(crate) fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        let p = Params::draw(seed, &mut rng, &mut ids);
        let time = Arc::new(AtomicU64::new(0));
        let trace = std::env::var_os("MESHKV_SIM_TRACE").is_some();
        let mut nodes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let dir = store_dir();
            let skew_base = if i == 0 { 0 } else { p.far_skew_ms };
            let skew = AtomicU64::new(skew_base + rng.random_range(0..=2_000));
            let clock = Arc::new(SimClock { time: time.clone(), skew });
            nodes.push(Node {
                id,
                dir,
                clock,
                skew_base,
                db: None,
                restart_at: 0,
                joined: false,
                gone: false,
                backup: None,
            });
        }
        let n = p.nodes;
        let topology: BTreeSet<(usize, usize)> = match p.topology {
            Topology::Mesh => (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect(),
            Topology::Chain => {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                order.windows(2).map(|w| (w[0].min(w[1]), w[0].max(w[1]))).collect()
            }
            Topology::Star => {
                let hub = rng.random_range(0..n);
                (0..n).filter(|&o| o != hub).map(|o| (hub.min(o), hub.max(o))).collect()
            }
        };
        let mut ext = StdRng::seed_from_u64(seed ^ 0x6d65_6d62_6572_7368);
        let mut plan = Membership::draw(&mut ext, &p, &topology);
        plan.backup = plan.wipe.filter(|_| seed.is_multiple_of(2)).map(|(i, at)| (i, at / 2));
        let modes = draw_modes(&mut ext, n, &topology, plan.leave.map(|(i, _)| i));
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            time,
            p,
            ext,
            nodes,
            topology,
            modes,
            plan,
            used_ids: ids.clone(),
            lost: BTreeSet::new(),
            kept: BTreeSet::new(),
            floor: BTreeMap::new(),
            cut: BTreeSet::new(),
            conns: Vec::new(),
            next_conn: 0,
            reconnect_at: BTreeMap::new(),
            join_copy: None,
            writes: BTreeMap::new(),
            write_count: 0,
            next_check: 250,
            stats: Stats { seeds: 1, ..Stats::default() },
            trace,
        };
        sim.log(|| format!("params {:?}\nnode ids {ids:?}\nmodes {:?}\nmembership {:?}", sim.p, sim.modes, sim.plan));
        for i in 0..n {
            match sim.plan.late_join {
                Some((j, at)) if j == i => sim.nodes[i].restart_at = at,
                _ => sim.open(i),
            }
        }
        sim
    }

    fn log(&self, f: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[seed {} t={}] {}", self.seed, self.now, f());
        }
    }

    fn options(&self, i: usize) -> Options {
        Options {
            policy: self.p.policy.conflict_policy(),
            feed_capacity: self.p.feed_capacity,
            ingest_min_records: self.p.ingest_min_records,
            clock: self.nodes[i].clock.clone(),
            new_node_id: Some(self.nodes[i].id),
            ..Options::default()
        }
    }

    fn open(&mut self, i: usize) {
        let opts = self.options(i);
        let node = &self.nodes[i];
        let db = Db::open(node.dir.path(), opts)
            .unwrap_or_else(|e| panic!("node {i}: (re)open failed (a Db clone leaked past the crash?): {e}"));
        assert_eq!(db.node_id(), node.id, "node {i}: the requested node id was not adopted");
        let vv = db.version_vector();
        for (key, w) in self.writes.iter().flat_map(|(k, ws)| ws.iter().map(move |w| (k, w))) {
            if w.dot.origin != node.id {
                continue;
            }
            assert!(
                vv.contains(w.dot),
                "node {i}: acknowledged write {} of {key:?} lost across restart (vv {vv})",
                w.dot
            );
        }
        // Right away: later overwrites of the few keys could hide damage.
        let report = db.verify().expect("verify");
        assert!(report.is_ok(), "node {i}: verify after (re)open found problems: {:?}", report.problems);
        self.nodes[i].db = Some(db);
        self.nodes[i].joined = true;
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].db.is_some()
    }

    pub(crate) fn run(mut self) -> Stats {
        while self.now < self.p.chaos_ms {
            self.step(true);
        }
        self.log(|| "---- heal ----".into());
        self.heal();
        self.check_converged();
        self.check_quiet_reconnect();
        for node in &self.nodes {
            if let Some(db) = &node.db {
                self.stats.conflicts += db.conflict_count();
            }
        }
        self.stats.lost_writes = self.lost_writes();
        self.stats.sim_ms = self.now;
        self.stats.writes = self.write_count;
        self.stats.fingerprint = self.fingerprint();
        std::mem::take(&mut self.stats)
    }

    fn step(&mut self, chaos: bool) -> Activity {
        let dt = self.rng.random_range(1..=self.p.step_max);
        self.now += dt;
        self.time.store(self.now, Ordering::Relaxed);
        self.stats.steps += 1;
        if chaos {
            self.chaos(dt);
        }
        for i in 0..self.nodes.len() {
            if !self.up(i) && !self.nodes[i].gone && self.nodes[i].restart_at <= self.now {
                self.restart(i);
            }
        }
        self.reconnect();
        let delivered = self.deliver();
        self.tick();
        self.pump(chaos);
        let sent = self.transmit(chaos);
        self.events();
        self.conns.retain(|c| !c.dead && c.ends.iter().any(|e| e.as_ref().is_some_and(|e| !e.link.is_closed())));
        Activity { delivered, sent }
    }

    // -- faults and workload ------------------------------------------------

    /// Whether an event of `rate` per ms happens within `dt` ms.
    fn happens(&mut self, rate: f64, dt: u64) -> bool {
        rate > 0.0 && self.rng.random_bool((rate * dt as f64).min(1.0))
    }

    fn chaos(&mut self, dt: u64) {
        if self.happens(self.p.write_rate, dt) {
            self.write();
        }
        if self.happens(self.p.crash_rate, dt) {
            let up: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.up(i)).collect();
            if !up.is_empty() {
                let i = up[self.rng.random_range(0..up.len())];
                self.crash(i);
            }
        }
        if self.happens(self.p.partition_rate, dt) {
            self.repartition();
        }
        if !self.conns.is_empty() && self.happens(self.p.shutdown_rate, dt) {
            let c = self.rng.random_range(0..self.conns.len());
            let side = self.rng.random_range(0..2);
            if let Some(end) = self.conns[c].ends[side].as_mut() {
                if !end.link.is_closed() {
                    end.link.close(CloseReason::Shutdown);
                    self.stats.shutdowns += 1;
                    let nodes = self.conns[c].nodes;
                    self.log(|| format!("node {} shuts down its link to {}", nodes[side], nodes[1 - side]));
                }
            }
        }
        if let Some((i, at)) = self.plan.leave {
            if at <= self.now && self.may_lose(i) {
                self.plan.leave = None;
                self.lose(i, false);
            }
        }
        if let Some((i, at)) = self.plan.backup {
            if at <= self.now && self.up(i) {
                self.crash(i);
            }
        }
        if let Some((i, at)) = self.plan.wipe {
            if at <= self.now && self.may_lose(i) {
                self.plan.wipe = None;
                self.lose(i, true);
            }
        }
        if self.now >= self.next_check {
            self.next_check = self.now + 250;
            self.check_coverage();
        }
    }

    fn write(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.up(i)).collect();
        if up.is_empty() {
            return;
        }
        let i = up[self.rng.random_range(0..up.len())];
        let nops = if self.rng.random_bool(0.2) { self.rng.random_range(2..=3).min(self.p.keys.len()) } else { 1 };
        let mut key_idx: Vec<usize> = (0..self.p.keys.len()).collect();
        for j in (1..key_idx.len()).rev() {
            key_idx.swap(j, self.rng.random_range(0..=j));
        }
        let mut ops = Vec::new();
        for &k in &key_idx[..nops] {
            let key = self.p.keys[k].clone();
            let value = if self.rng.random_bool(0.25) {
                None
            } else {
                let mut v = format!("n{i}-w{}", self.write_count + ops.len() as u64).into_bytes();
                if self.rng.random_bool(0.1) {
                    v.resize(300, b'.');
                }
                Some(v)
            };
            ops.push((key, value));
        }
        let db = self.nodes[i].db.clone().expect("up");
        let last = if nops == 1 {
            let (key, value) = ops[0].clone();
            match value {
                Some(v) => db.put(key, v),
                None => db.delete(key),
            }
            .expect("write")
        } else {
            let mut batch = Batch::new();
            for (key, value) in &ops {
                match value {
                    Some(v) => batch.put(key.clone(), v.clone()),
                    None => batch.delete(key.clone()),
                };
            }
            db.write(batch).expect("write").expect("non-empty batch")
        };
        for (j, (key, value)) in ops.into_iter().enumerate() {
            let dot = Dot::new(self.nodes[i].id, last.seq - (nops - 1 - j) as u64);
            let rec = db.get_record(&key).expect("get_record").expect("just written");
            assert!(
                rec.versions().len() == 1 && rec.winner().dot == dot && rec.winner().value == value,
                "node {i}: a local write of {key:?} did not produce a single version {dot}: {}",
                show(&Some(rec.clone()))
            );
            self.log(|| format!("node {i} writes {key:?} = {} as {dot}", show_value(&value)));
            self.writes.entry(key).or_default().push(rec.winner().clone());
            self.write_count += 1;
        }
    }

    fn crash(&mut self, i: usize) {
        let mut silent = 0;
        for conn in &mut self.conns {
            let Some(side) = conn.side_of(i) else { continue };
            if self.rng.random_bool(0.5) {
                conn.dead = true; // the peer sees a reset
            } else {
                // The peer hears nothing more and times out; bytes already
                // on the wire from the dead process still arrive.
                conn.ends[side] = None;
                conn.queues[1 - side].clear();
                silent += 1;
            }
        }
        self.conns.retain(|c| !c.dead);
        if let Some(db) = self.nodes[i].db.take() {
            self.stats.conflicts += db.conflict_count();
            // Nothing a clean close would write: held-back log entries are
            // recovered by the next open, as after a real crash.
            db.close_as_if_crashed();
        }
        // In odd seeds the late joiner is seeded with the first store that
        // crashes before it joins: a new node started from a backup of
        // another, instead of bootstrapping.
        let joiner = self.plan.late_join.map(|(j, _)| j).filter(|&j| j != i && !self.nodes[j].joined);
        if joiner.is_some() && !self.seed.is_multiple_of(2) && self.join_copy.is_none() {
            let copy = store_dir();
            copy_tree(self.nodes[i].dir.path(), copy.path());
            self.join_copy = Some(copy);
            self.log(|| format!("node {i}'s directory is copied for the late joiner"));
        }
        // The store to be wiped gets its backup at its first crash from the
        // planned time on: what the crash left.
        if self.plan.backup.is_some_and(|(b, at)| b == i && at <= self.now) {
            self.plan.backup = None;
            let backup = store_dir();
            copy_tree(self.nodes[i].dir.path(), backup.path());
            self.nodes[i].backup = Some(backup);
            self.log(|| format!("node {i}'s directory is backed up"));
        }
        self.nodes[i].restart_at = self.now + self.rng.random_range(50..=800);
        self.stats.crashes += 1;
        self.log(|| format!("node {i} crashes ({silent} peers left to time out)"));
    }

    fn restart(&mut self, i: usize) {
        if !self.nodes[i].joined {
            match self.join_copy.take() {
                Some(copy) => {
                    // A copy: it takes the joiner's id (the one the seed asks for).
                    copy_tree(copy.path(), self.nodes[i].dir.path());
                    self.open(i);
                    self.reckon_copy(i);
                    self.stats.joins_from_copy += 1;
                    self.log(|| format!("node {i} joins with a copy of another node's store"));
                }
                None => {
                    self.open(i);
                    self.log(|| format!("node {i} joins with an empty store"));
                }
            }
            self.stats.late_joins += 1;
            return;
        }
        // Lingering connections of the old process are reset by the new one.
        self.conns.retain(|c| c.side_of(i).is_none());
        if self.rng.random_bool(0.3) {
            // The wall clock may have been stepped, even backwards.
            let skew = self.nodes[i].skew_base + self.rng.random_range(0..=3_000);
            self.nodes[i].clock.skew.store(skew, Ordering::Relaxed);
        }
        self.open(i);
        self.log(|| format!("node {i} restarts"));
    }

    /// A store may be lost once every other store is open, so that what
    /// survives of it through them can be read off their stores.
    fn may_lose(&self, i: usize) -> bool {
        self.up(i) && (0..self.nodes.len()).all(|o| self.up(o) || self.nodes[o].gone || !self.nodes[o].joined)
    }

    /// Node `i` leaves for good, or (`wipe`) its directory is deleted and it
    /// comes back later as a new store with a new node id. Either way its
    /// process dies and every byte in flight to or from it is lost: its
    /// peers see a reset or silence.
    fn lose(&mut self, i: usize, wipe: bool) {
        for conn in &mut self.conns {
            let Some(side) = conn.side_of(i) else { continue };
            if self.ext.random_bool(0.5) {
                conn.dead = true;
            } else {
                conn.ends[side] = None;
                conn.queues = Default::default();
            }
        }
        self.conns.retain(|c| !c.dead);
        if let Some(db) = self.nodes[i].db.take() {
            self.stats.conflicts += db.conflict_count();
            db.close_as_if_crashed();
        }
        let old = self.nodes[i].id;
        self.lost.insert(old);
        if wipe {
            // Dropping the old directory deletes it: only once a restored
            // copy is open, so no file of the copy can get an inode number
            // the original's just freed (where `MESHKV_SIM_DIR` points to a
            // file system without birth times, that would hide the copy).
            let _old_dir = std::mem::replace(&mut self.nodes[i].dir, store_dir());
            let id = loop {
                let id = NodeId(self.ext.random::<u64>() | 1);
                if !self.used_ids.contains(&id) {
                    break id;
                }
            };
            self.used_ids.push(id);
            self.nodes[i].id = id;
            if let Some(backup) = self.nodes[i].backup.take() {
                // Restored from the backup: the copy takes the new id (the
                // one `Options::new_node_id` asks for) at once, so what it
                // holds of the old origin counts as kept below.
                copy_tree(backup.path(), self.nodes[i].dir.path());
                self.open(i);
                self.stats.restores += 1;
                self.log(|| format!("node {i} is restored from its backup: {old} is gone, it comes back as {id}"));
            } else {
                self.nodes[i].restart_at = self.now + self.ext.random_range(50..=800);
                self.stats.wipes += 1;
                self.log(|| format!("node {i} is wiped: {old} is gone, it comes back as {id}"));
            }
        } else {
            self.nodes[i].gone = true;
            self.stats.departures += 1;
            self.log(|| format!("node {i} ({old}) leaves for good"));
        }
        self.reckon_losses();
    }

    /// Writes gone with their origin's store before any other store held
    /// them or a write that supersedes them.
    fn lost_writes(&self) -> u64 {
        let mut lost = 0;
        for ws in self.writes.values() {
            for w in ws.iter().filter(|w| !self.demanded(w)) {
                if !ws.iter().any(|o| self.demanded(o) && o.deps.contains(w.dot)) {
                    lost += 1;
                }
            }
        }
        lost
    }

    /// What the remaining stores hold of the lost origins: the writes the
    /// oracle then demands, and the coverage the version vectors must end at.
    fn reckon_losses(&mut self) {
        let dbs: Vec<&Db> = self.nodes.iter().filter_map(|n| n.db.as_ref()).collect();
        let lost = |w: &&Version| self.lost.contains(&w.dot.origin);
        let mut kept = BTreeSet::new();
        for (key, ws) in &self.writes {
            if !ws.iter().any(|w| lost(&w)) {
                continue;
            }
            let recs: Vec<Record> = dbs.iter().filter_map(|db| db.get_record(key).expect("get_record")).collect();
            kept.extend(ws.iter().filter(lost).filter(|w| recs.iter().any(|r| r.has_dot(w.dot))).map(|w| w.dot));
        }
        self.kept = kept;
        self.floor = self
            .lost
            .iter()
            .map(|&o| (o, dbs.iter().map(|db| db.version_vector().get(o)).max().unwrap_or(0)))
            .collect();
        self.log(|| format!("lost origins {:?}: kept {:?}, floor {:?}", self.lost, self.kept, self.floor));
    }

    /// What a store started from a copy holds of the lost origins survives
    /// through it too: demanded from now on, and its coverage of them is a
    /// floor.
    fn reckon_copy(&mut self, i: usize) {
        let db = self.nodes[i].db.as_ref().expect("the copy is open");
        let mut kept = Vec::new();
        for (key, ws) in &self.writes {
            if !ws.iter().any(|w| self.lost.contains(&w.dot.origin)) {
                continue;
            }
            if let Some(r) = db.get_record(key).expect("get_record") {
                kept.extend(ws.iter().filter(|w| self.lost.contains(&w.dot.origin) && r.has_dot(w.dot)).map(|w| w.dot));
            }
        }
        let vv = db.version_vector();
        self.kept.extend(kept);
        for (&o, floor) in &mut self.floor {
            *floor = (*floor).max(vv.get(o));
        }
        self.log(|| format!("with the copy: kept {:?}, floor {:?}", self.kept, self.floor));
    }

    fn repartition(&mut self) {
        let n = self.nodes.len();
        let pairs = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b)));
        let cut: BTreeSet<(usize, usize)> = match self.rng.random_range(0..3) {
            0 => BTreeSet::new(),
            1 => {
                let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                pairs.filter(|&(a, b)| side[a] != side[b]).collect()
            }
            _ => pairs.filter(|_| self.rng.random_bool(0.4)).collect(),
        };
        for conn in &mut self.conns {
            let cut_now = cut.contains(&conn.pair());
            if cut_now && !conn.frozen {
                if self.rng.random_bool(0.5) {
                    conn.dead = true;
                    self.stats.resets += 1;
                } else {
                    conn.frozen = true;
                    self.stats.silent_cuts += 1;
                }
            } else if !cut_now {
                conn.frozen = false;
            }
        }
        self.stats.partitions += 1;
        self.log(|| format!("partition: cut {cut:?}"));
        self.cut = cut;
    }

    // -- healing and checks -------------------------------------------------------

    fn heal(&mut self) {
        self.cut.clear();
        for conn in &mut self.conns {
            conn.frozen = false;
        }
        for i in 0..self.nodes.len() {
            if !self.up(i) && !self.nodes[i].gone {
                self.restart(i);
            }
        }
        let deadline = self.now + HEAL_BUDGET_MS;
        let mut quiet = 0;
        while quiet < 2 {
            let act = self.step(false);
            quiet = if act.delivered == 0 && act.sent == 0 && self.settled() { quiet + 1 } else { 0 };
            if self.now > deadline {
                panic!("no quiescence {HEAL_BUDGET_MS} ms after healing:\n{}", self.dump());
            }
        }
    }

    /// I6: nodes in sync exchange no records when they reconnect, also
    /// around writes no vector can cover (a lost origin's above a gap).
    fn check_quiet_reconnect(&mut self) {
        self.log(|| "---- reconnect all ----".into());
        self.conns.clear();
        let before = self.stats.sent_items;
        self.heal();
        let resent = self.stats.sent_items - before;
        assert_eq!(resent, 0, "nodes in sync sent {resent} records when they reconnected:\n{}", self.dump());
    }

    /// Every neighbour pair connected, handshakes done, senders live and
    /// nothing but pings in flight.
    fn settled(&self) -> bool {
        (0..self.nodes.len()).all(|i| self.up(i) || self.nodes[i].gone)
            && self.topology.iter().filter(|&&(a, b)| !self.nodes[a].gone && !self.nodes[b].gone).all(|&pair| {
                self.conns.iter().any(|c| {
                    c.pair() == pair
                        && !c.frozen
                        && c.ends.iter().all(|e| {
                            e.as_ref().is_some_and(|e| {
                                !e.link.is_closed() && e.link.peer().is_some() && e.link.is_sender_live()
                            })
                        })
                        && c.queues.iter().all(|q| q.iter().all(|m| m.ping))
                })
            })
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let vv = node.db.as_ref().map(|d| d.version_vector().to_string());
            s += &format!("  node {i} {}: vv {vv:?} gone={}\n", node.id, node.gone);
        }
        for c in &self.conns {
            let end = |e: &Option<End>| match e {
                None => "dead".to_string(),
                Some(e) => format!(
                    "closed={} peer={} live={} items={:?}",
                    e.link.is_closed(),
                    e.link.peer().is_some(),
                    e.link.is_sender_live(),
                    e.link.item_counts()
                ),
            };
            s += &format!(
                "  conn {} {:?} modes {:?}: [{}] [{}] in flight {}/{} frozen={}\n",
                c.id,
                c.nodes,
                self.modes.get(&c.pair()),
                end(&c.ends[0]),
                end(&c.ends[1]),
                c.queues[0].len(),
                c.queues[1].len(),
                c.frozen
            );
        }
        s
    }
}

impl Drop for Sim {
    /// Closes every store before its directory is removed: removing it while
    /// the engine's background threads still write there (dropping the last
    /// handle waits for them) can leave files behind.
    fn drop(&mut self) {
        self.conns.clear();
        for node in &mut self.nodes {
            node.db = None;
        }
    }
}
