//! `meshkv demo`: three nodes in this process on loopback (ephemeral ports,
//! temporary directories). Each writes; one is cut off; both sides write the
//! same key; the link heals; the nodes converge. A small table of the nodes
//! is refreshed every 200 ms (redrawn in place on a terminal, printed when
//! it changes otherwise), then the conflicting key's final value on each
//! node. Exits 0 once converged (1 if the nodes did not converge in time),
//! within about ten seconds.

use crate::remote::fail;
use anyhow::{Context, Result};
use clap::Args;
use meshkv::node::{Node, NodeConfig, NodeEvent, PeerState};
use meshkv::protocol::Mode;
use meshkv::{Db, Dot, NodeId, Options};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const NAMES: [&str; 3] = ["a", "b", "c"];
const REFRESH: Duration = Duration::from_millis(200);
/// The key both sides of the partition write.
const KEY: &str = "color";

/// Arguments of `meshkv demo` (none).
#[derive(Debug, Args)]
pub struct DemoArgs {}

/// `println!` that does not panic on a closed stdout (`meshkv demo | head`):
/// the demo runs to its end and exits with its own code.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Runs `meshkv demo`.
pub fn run(_args: DemoArgs) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|rt| rt.block_on(demo()));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(e),
    }
}

struct Demo {
    nodes: Vec<Node>,
    addrs: Vec<SocketAddr>,
    names: HashMap<NodeId, &'static str>,
    events: Vec<broadcast::Receiver<NodeEvent>>,
    screen: Screen,
    started: Instant,
    _root: tempfile::TempDir,
}

async fn demo() -> Result<bool> {
    let root =
        tempfile::Builder::new().prefix("meshkv-demo-").tempdir().context("cannot create a temporary directory")?;
    let mut nodes = Vec::new();
    for name in NAMES {
        let db = Db::open(root.path().join(name), Options::default())?;
        let cfg = NodeConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))), ..NodeConfig::default() };
        nodes.push(Node::start(db, cfg).await?);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().filter_map(Node::local_addr).collect();
    let names = nodes.iter().zip(NAMES).map(|(n, name)| (n.db().node_id(), name)).collect();
    let events = nodes.iter().map(Node::events).collect();
    let mut d = Demo { nodes, addrs, names, events, screen: Screen::new(), started: Instant::now(), _root: root };
    say!("meshkv demo: three nodes in this process, replicating over loopback TCP");
    for (i, name) in NAMES.iter().enumerate() {
        say!("  node {name}: id {} on {}", d.nodes[i].db().node_id(), d.addrs[i]);
    }

    // 1. A full mesh (a dials b and c, b dials c); every node writes.
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let addr = d.addrs[j];
        d.nodes[i].add_peer(addr, Mode::Sync);
    }
    for (i, name) in NAMES.iter().enumerate() {
        for k in 0..5 {
            d.nodes[i].db().put(format!("{name}/{k}"), format!("written on {name}"))?;
        }
    }
    let ok =
        d.phase("1. full mesh; 5 writes on each node", (1000, 3000), |d| d.converged() && d.links() == [2, 2, 2]).await;
    if !d.check(ok, "the mesh did not converge") {
        return Ok(false);
    }

    // 2. Cut c off.
    d.nodes[0].remove_peer(d.addrs[2]);
    d.nodes[1].remove_peer(d.addrs[2]);
    let ok = d.phase("2. partition: the links to c are cut", (600, 2000), |d| d.links() == [1, 1, 0]).await;
    if !d.check(ok, "the partition did not happen") {
        return Ok(false);
    }

    // 3. Both sides write the same key.
    d.nodes[0].db().put(KEY, "blue")?;
    tokio::time::sleep(Duration::from_millis(5)).await; // so "last writer" is unambiguous
    d.nodes[2].db().put(KEY, "green")?;
    d.nodes[1].db().put("b/partitioned", "only a and b see this for now")?;
    let ok = d
        .phase("3. during the partition: a writes color=blue, c writes color=green", (800, 2000), |d| {
            d.value(1).as_deref() == Some("blue")
        })
        .await;
    if !d.check(ok, "a's write did not reach b") {
        return Ok(false);
    }

    // 4. Heal.
    d.nodes[0].add_peer(d.addrs[2], Mode::Sync);
    d.nodes[1].add_peer(d.addrs[2], Mode::Sync);
    let converged = d
        .phase("4. healed: the links to c are back", (1000, 3000), |d| {
            d.converged() && d.links() == [2, 2, 2] && (0..3).all(|i| d.value(i) == d.value(0))
        })
        .await;

    say!("");
    say!("final value of {KEY:?} on each node:");
    for (i, name) in NAMES.iter().enumerate() {
        let value = d.value(i).unwrap_or_else(|| "(missing)".into());
        say!("  {name}: {value:<8} (conflicts settled on this node: {})", d.nodes[i].db().conflict_count());
    }
    for line in d.conflict_lines() {
        say!("  {line}");
    }
    let keys = d.keys(0);
    if converged {
        let value = d.value(0).unwrap_or_default();
        say!(
            "converged: all three nodes hold the same {keys} keys and version vector; {KEY} = {value:?} everywhere \
             (concurrent writes: the last writer wins) — in {:.1} s",
            d.started.elapsed().as_secs_f64()
        );
    } else {
        say!("NOT converged after {:.1} s", d.started.elapsed().as_secs_f64());
    }
    for node in std::mem::take(&mut d.nodes) {
        node.shutdown().await;
    }
    Ok(converged)
}

impl Demo {
    /// Shows the table every [`REFRESH`] until `done` holds and `min` ms
    /// have passed, or `max` ms have passed; returns whether `done` held.
    async fn phase(&mut self, title: &str, (min, max): (u64, u64), done: impl Fn(&Demo) -> bool) -> bool {
        let start = Instant::now();
        self.screen.heading(title);
        loop {
            let table = self.table();
            self.screen.show(&table);
            let ok = done(self);
            let elapsed = start.elapsed();
            if (ok && elapsed >= Duration::from_millis(min)) || elapsed >= Duration::from_millis(max) {
                return ok;
            }
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// Whether a phase succeeded; if not, says so on stderr (the demo then
    /// stops and exits 1: it did not converge).
    fn check(&self, ok: bool, what: &str) -> bool {
        if !ok {
            eprintln!("meshkv demo: {what} in time; the demo cannot go on");
        }
        ok
    }

    /// Whether every node has the same version vector.
    fn converged(&self) -> bool {
        let vv = self.nodes[0].db().version_vector();
        self.nodes.iter().all(|n| n.db().version_vector() == vv)
    }

    /// Live links per node.
    fn links(&self) -> Vec<usize> {
        self.nodes.iter().map(|n| n.peers().iter().filter(|p| p.state == PeerState::Live).count()).collect()
    }

    fn keys(&self, i: usize) -> usize {
        self.nodes[i].db().scan(meshkv::ScanOptions { values: false, ..Default::default() }).count()
    }

    fn value(&self, i: usize) -> Option<String> {
        self.nodes[i].db().get(KEY).ok().flatten().map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn name(&self, id: NodeId) -> String {
        self.names.get(&id).map_or_else(|| id.to_string(), |n| n.to_string())
    }

    fn dot(&self, d: Dot) -> String {
        format!("{}:{}", self.name(d.origin), d.seq)
    }

    /// The version vector with node names: `a:5 b:6 c:6`.
    fn vv(&self, i: usize) -> String {
        let vv = self.nodes[i].db().version_vector();
        let mut parts: Vec<String> = vv.iter().map(|(o, s)| format!("{}:{s}", self.name(o))).collect();
        parts.sort();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }

    fn table(&self) -> String {
        let links = self.links();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "  {:<4} {:<21} {:>4}  {:<16} {:>5}  {:>9}  {KEY}",
            "node", "address", "keys", "version vector", "links", "conflicts"
        );
        for (i, name) in NAMES.iter().enumerate() {
            let _ = writeln!(
                t,
                "  {:<4} {:<21} {:>4}  {:<16} {:>5}  {:>9}  {}",
                name,
                self.addrs[i].to_string(),
                self.keys(i),
                self.vv(i),
                links[i],
                self.nodes[i].db().conflict_count(),
                self.value(i).unwrap_or_else(|| "-".into()),
            );
        }
        t
    }

    /// The conflicts the nodes reported, with node names.
    fn conflict_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut events = std::mem::take(&mut self.events);
        for (i, rx) in events.iter_mut().enumerate() {
            while let Ok(ev) = rx.try_recv() {
                if let NodeEvent::Conflict { key, conflict } = ev {
                    let losers: Vec<String> = conflict.losers.iter().map(|d| self.dot(*d)).collect();
                    lines.push(format!(
                        "conflict on {}: key {:?}, winner {} over {}",
                        NAMES[i],
                        String::from_utf8_lossy(&key),
                        self.dot(conflict.winner),
                        losers.join(", ")
                    ));
                }
            }
        }
        self.events = events;
        lines
    }
}

/// Where the table goes: redrawn in place on a terminal; otherwise printed
/// again only when it changed.
struct Screen {
    tty: bool,
    /// Lines of the table currently drawn below the last heading.
    drawn: usize,
    last: String,
    started: Instant,
}

impl Screen {
    fn new() -> Self {
        Screen { tty: std::io::stdout().is_terminal(), drawn: 0, last: String::new(), started: Instant::now() }
    }

    fn heading(&mut self, title: &str) {
        say!("");
        say!("{title}");
        self.drawn = 0;
        self.last.clear();
    }

    fn show(&mut self, table: &str) {
        let mut out = std::io::stdout().lock();
        let t = self.started.elapsed().as_secs_f64();
        if self.tty {
            if self.drawn > 0 {
                // Back to the first line of the previous table, clear below.
                let _ = write!(out, "\x1b[{}F\x1b[J", self.drawn);
            }
            let _ = write!(out, "  t={t:.1}s\n{table}");
            self.drawn = table.lines().count() + 1;
        } else if table != self.last {
            let _ = write!(out, "  t={t:.1}s\n{table}");
            self.last = table.to_owned();
        }
        let _ = out.flush();
    }
}
