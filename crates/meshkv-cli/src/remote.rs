//! Client commands: `put`, `get`, `del`, `scan`, `watch`, `status`, `import`
//! and `export` talk to a running node over TCP with [`meshkv::client::Client`].
//!
//! Exit codes: 0 success, 1 `get` of a missing key, 2 any error (node
//! unreachable, refused request, bad input; clap's usage errors are 2 too).

use crate::encoding::{arg_bytes, escape, json_line, parse_line};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meshkv::client::{Client, ClientOptions, WatchEvent};
use meshkv::protocol::{BatchOp, ErrorCode, RemoteError, Status};
use meshkv::secure::Secret;
use meshkv::{KeyRange, ScanOptions};
use serde_json::json;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Default address of a node (and of `meshkv serve`).
pub const DEFAULT_NODE: &str = "127.0.0.1:7420";
/// Default cluster name (the library's).
pub const DEFAULT_CLUSTER: &str = "meshkv";
/// Operations per `import` batch (fewer if they would exceed [`IMPORT_BATCH_BYTES`]).
const IMPORT_BATCH_OPS: usize = 1000;
/// Bytes of keys and values per `import` batch, well under the 17 MiB frame
/// limit (a single larger operation goes alone).
const IMPORT_BATCH_BYTES: usize = 8 << 20;
/// Entries per scan chunk (the node also caps a chunk at about 1 MiB, so any
/// chunk fits the default frame limit).
const SCAN_CHUNK: u32 = 1000;

/// Which node the client commands talk to (and the cluster name, also used
/// by `serve`). Global: accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Node that client commands (put, get, scan, ...) talk to.
    #[arg(long, global = true, env = "MESHKV_NODE", default_value = DEFAULT_NODE, value_name = "HOST:PORT")]
    pub node: String,
    /// Cluster name: the one `serve` runs (overrides its config file), or
    /// the one the node must belong to for client commands [default: meshkv].
    #[arg(long, global = true, env = "MESHKV_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// File with the cluster secret (`meshkv secret`): `serve` requires it
    /// of every peer and client; client commands authenticate with it (or
    /// with the read-only secret).
    #[arg(long, global = true, env = "MESHKV_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

impl Target {
    /// The secret named by `--secret-file`, if any.
    pub fn secret(&self) -> Result<Option<Secret>> {
        self.secret_file.as_deref().map(load_secret).transpose()
    }
}

/// Reads a secret file, warning if others may read it.
pub fn load_secret(path: &std::path::Path) -> Result<Secret> {
    let secret = Secret::load(path).map_err(|e| anyhow!("{e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the secret file is readable by other users; chmod 600 it");
            }
        }
    }
    Ok(secret)
}

/// Key-range flags shared by scan, export and watch.
#[derive(Debug, Args)]
pub struct RangeArgs {
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    prefix: Option<OsString>,
    /// Only keys greater than K.
    #[arg(long, value_name = "K")]
    gt: Option<OsString>,
    /// Only keys greater than or equal to K.
    #[arg(long, value_name = "K")]
    gte: Option<OsString>,
    /// Only keys less than K.
    #[arg(long, value_name = "K")]
    lt: Option<OsString>,
    /// Only keys less than or equal to K.
    #[arg(long, value_name = "K")]
    lte: Option<OsString>,
}

impl RangeArgs {
    fn into_range(self) -> KeyRange {
        KeyRange {
            gt: self.gt.map(arg_bytes),
            gte: self.gte.map(arg_bytes),
            lt: self.lt.map(arg_bytes),
            lte: self.lte.map(arg_bytes),
            prefix: self.prefix.map(arg_bytes),
        }
    }
}

/// `meshkv put KEY VALUE`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    key: OsString,
    /// The value (binary values: use `import`).
    value: OsString,
}

/// `meshkv get KEY`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    key: OsString,
}

/// `meshkv del KEY`.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// The key (deleting a missing key succeeds).
    key: OsString,
}

/// `meshkv scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Stop after N entries.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Descending key order.
    #[arg(long)]
    reverse: bool,
    /// One JSON object per line: {"key":…,"value":…}.
    #[arg(long)]
    json: bool,
}

/// `meshkv watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// One JSON object per line: {"key":…,"value":…} (value null: deleted).
    #[arg(long)]
    json: bool,
}

/// `meshkv status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// `meshkv import FILE|-`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// JSON lines {"key":…,"value":…} (value null: delete); `-` reads stdin.
    #[arg(value_name = "FILE|-")]
    file: PathBuf,
}

/// `meshkv export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    range: RangeArgs,
}

/// Runs a client command on a fresh runtime and turns its outcome into the
/// exit code (printing the error, if any, on stderr).
fn client_command<F, Fut>(target: Target, command: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow!(e).context("cannot start the tokio runtime")),
    };
    let outcome = runtime.block_on(async {
        let client = connect(&target).await?;
        command(client).await
    });
    // Do not wait for the client's background task.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Prints `e` and returns exit code 2.
pub fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("meshkv: error: {e:#}");
    ExitCode::from(2)
}

/// Whether `e` is a write to a closed pipe (`meshkv scan | head`): not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

async fn connect(target: &Target) -> Result<Client> {
    let node = target.node.as_str();
    let addr = tokio::net::lookup_host(node)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| anyhow!("cannot resolve node address {node:?} (expected HOST:PORT)"))?;
    let cluster = target.cluster.clone().unwrap_or_else(|| DEFAULT_CLUSTER.into());
    let options = ClientOptions { cluster: cluster.clone(), secret: target.secret()?, ..ClientOptions::default() };
    Client::connect(addr, options).await.map_err(|e| match e.code {
        ErrorCode::Unauthorized if e.message.contains("does not speak meshkv") || e.message.contains("malformed handshake") => {
            anyhow!("{node} is not a meshkv node ({}); see --node / MESHKV_NODE", e.message)
        }
        ErrorCode::Unauthorized if e.message.contains("secret") => {
            anyhow!("the node at {node} refused the connection: {} (see --secret-file / MESHKV_SECRET_FILE)", e.message)
        }
        ErrorCode::Unauthorized => {
            anyhow!("the node at {node} refused the connection: {} (this client asked for cluster {cluster:?}; see --cluster)", e.message)
        }
        _ => {
            let detail = e.message.strip_prefix(&format!("cannot connect to {addr}: ")).unwrap_or(&e.message);
            anyhow!("cannot connect to {node}: {detail} (is `meshkv serve` running there? see --node / MESHKV_NODE)")
        }
    })
}

/// A client call's error with its code, for the user.
fn remote(e: RemoteError) -> anyhow::Error {
    match e.code {
        ErrorCode::ConnectionLost => anyhow!("lost the connection to the node: {}", e.message),
        ErrorCode::ReadOnly => anyhow!("the node refused the write: it is read-only ({})", e.message),
        ErrorCode::Rejected => anyhow!("the node rejected the write: {}", e.message),
        _ => anyhow!(e),
    }
}

/// `meshkv put`.
pub fn put(args: PutArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        client.put(arg_bytes(args.key), arg_bytes(args.value)).await.map_err(remote)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshkv del`.
pub fn del(args: DelArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        client.delete(arg_bytes(args.key)).await.map_err(remote)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshkv get`: the raw value on stdout, plus a newline only when stdout
/// is a terminal; a missing key prints `not found` on stderr and exits 1.
pub fn get(args: GetArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        let key = arg_bytes(args.key);
        match client.get(key.clone()).await.map_err(remote)? {
            Some(value) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                if out.is_terminal() {
                    out.write_all(b"\n")?;
                }
                out.flush()?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("meshkv: not found: {}", escape(&key));
                Ok(ExitCode::from(1))
            }
        }
    })
}

/// `meshkv scan`: `key<TAB>value` lines (escaped), or JSON lines.
pub fn scan(args: ScanArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        let options = ScanOptions {
            range: args.range.into_range(),
            limit: args.limit,
            reverse: args.reverse,
            ..ScanOptions::default()
        };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut stream = client.scan(options, SCAN_CHUNK);
        while let Some(entry) = stream.next().await {
            let entry = entry.map_err(remote)?;
            if args.json {
                writeln!(out, "{}", json_line(&entry.key, Some(&entry.value)))?;
            } else {
                writeln!(out, "{}\t{}", escape(&entry.key), escape(&entry.value))?;
            }
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshkv export`: JSON lines of every entry in the range, in key order.
pub fn export(args: ExportArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut stream = client.scan(ScanOptions::range(args.range.into_range()), SCAN_CHUNK);
        while let Some(entry) = stream.next().await {
            let entry = entry.map_err(remote)?;
            writeln!(out, "{}", json_line(&entry.key, Some(&entry.value)))?;
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshkv watch`: one line per change until Ctrl-C: `put<TAB>key<TAB>value`
/// and `del<TAB>key`, or JSON lines (value null for a deletion).
pub fn watch(args: WatchArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        let mut events = client.watch(args.range.into_range()).await.map_err(remote)?;
        if std::io::stderr().is_terminal() {
            eprintln!("meshkv: watching; Ctrl-C to stop");
        }
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        let mut out = std::io::stdout().lock();
        loop {
            let event = tokio::select! {
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
                event = events.recv() => event,
            };
            match event {
                Some(WatchEvent::Change { key, value }) => {
                    if args.json {
                        writeln!(out, "{}", json_line(&key, value.as_deref()))?;
                    } else if let Some(value) = value {
                        writeln!(out, "put\t{}\t{}", escape(&key), escape(&value))?;
                    } else {
                        writeln!(out, "del\t{}", escape(&key))?;
                    }
                    out.flush()?;
                }
                Some(WatchEvent::Lagged) => {
                    eprintln!("meshkv: warning: some changes were not delivered (slow reader or reconnect)");
                }
                None => bail!("lost the connection to the node"),
            }
        }
    })
}

/// `meshkv status`.
pub fn status(args: StatusArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        let status = client.status().await.map_err(remote)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", status_json(&status))?;
        } else {
            out.write_all(status_table(&status).as_bytes())?;
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

fn status_json(s: &Status) -> serde_json::Value {
    let vv: serde_json::Map<String, serde_json::Value> =
        s.version_vector.iter().map(|(node, seq)| (node.to_string(), json!(seq))).collect();
    let peers: Vec<_> = s
        .peers
        .iter()
        .map(|p| {
            json!({
                "addr": p.addr,
                "node_id": p.node_id.map(|n| n.to_string()),
                "state": p.state,
                "lag": p.lag,
                "sync": p.sync.map(|(applied, at_most)| json!({ "applied": applied, "at_most": at_most })),
            })
        })
        .collect();
    json!({
        "node_id": s.node_id.to_string(),
        "cluster": s.cluster,
        "listen": s.listen,
        "version_vector": vv,
        "keys": s.keys,
        "conflicts": s.conflicts,
        "peers": peers,
    })
}

fn status_table(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(t, "node       {}", s.node_id);
    let _ = writeln!(t, "listen     {}", s.listen.as_deref().unwrap_or("-"));
    let _ = writeln!(t, "keys       {}", s.keys);
    let _ = writeln!(t, "conflicts  {}", s.conflicts);
    let _ = writeln!(t, "writes     {} (version vector {})", s.version_vector.total(), s.version_vector);
    if s.peers.is_empty() {
        let _ = writeln!(t, "peers      none connected");
    } else {
        let _ = writeln!(t, "peers      {}", s.peers.len());
        let _ = writeln!(t, "  {:<24} {:<16}  {:<10} {:>8}  INITIAL SYNC", "ADDR", "NODE", "STATE", "LAG");
        for p in &s.peers {
            let id = p.node_id.map_or_else(|| "-".into(), |n| n.to_string());
            let sync =
                p.sync.map_or_else(|| "-".into(), |(applied, at_most)| format!("{applied} of at most {at_most}"));
            let _ = writeln!(t, "  {:<24} {:<16}  {:<10} {:>8}  {sync}", p.addr, id, p.state, p.lag);
        }
    }
    t
}

/// `meshkv import`: loads JSON lines in batches of up to 1000 operations,
/// each applied atomically; stops at the first bad line (earlier batches
/// stay applied).
pub fn import(args: ImportArgs, target: Target) -> ExitCode {
    // Open the input first: a missing file is reported without contacting the node.
    let (input, total): (Box<dyn Read>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        match std::fs::File::open(&args.file) {
            Ok(f) => {
                let len = f.metadata().map(|m| m.len()).ok();
                (Box::new(f), len)
            }
            Err(e) => return fail(anyhow!(e).context(format!("cannot open {}", args.file.display()))),
        }
    };
    client_command(target, |client| async move { load(client, input, total).await })
}

async fn load(client: Client, input: Box<dyn Read>, total: Option<u64>) -> Result<ExitCode> {
    let started = Instant::now();
    let bar = progress_bar(total);
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let (mut line, mut line_no, mut bytes_read) = (String::new(), 0u64, 0u64);
    let (mut puts, mut deletes) = (0u64, 0u64);
    let mut batch = Pending::default();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| format!("cannot read line {}", line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        bytes_read += n as u64;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let (key, value) = parse_line(text).with_context(|| format!("line {line_no}"))?;
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if !batch.ops.is_empty() && batch.bytes + size > IMPORT_BATCH_BYTES {
            batch.send(&client).await?;
        }
        if batch.ops.is_empty() {
            batch.first_line = line_no;
        }
        batch.last_line = line_no;
        batch.bytes += size;
        match value {
            Some(value) => {
                puts += 1;
                batch.ops.push(BatchOp::Put { key, value });
            }
            None => {
                deletes += 1;
                batch.ops.push(BatchOp::Delete { key });
            }
        }
        if batch.ops.len() >= IMPORT_BATCH_OPS {
            batch.send(&client).await?;
            bar.set_position(if total.is_some() { bytes_read } else { puts + deletes });
        }
    }
    batch.send(&client).await?;
    bar.finish_and_clear();
    eprintln!(
        "meshkv: imported {} records ({puts} puts, {deletes} deletes) in {:.1} s",
        puts + deletes,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The operations of the next import batch and the lines they came from.
#[derive(Default)]
struct Pending {
    ops: Vec<BatchOp>,
    bytes: usize,
    first_line: u64,
    last_line: u64,
}

impl Pending {
    async fn send(&mut self, client: &Client) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        self.bytes = 0;
        client.batch(ops).await.map_err(remote).with_context(|| {
            format!("batch of lines {}-{} not applied (earlier lines were)", self.first_line, self.last_line)
        })?;
        Ok(())
    }
}

/// A progress bar on stderr: by bytes for a file, a record counter for
/// stdin; hidden when stderr is not a terminal.
fn progress_bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} records ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshkv::protocol::PeerInfo;
    use meshkv::{NodeId, VersionVector};

    fn sample() -> Status {
        Status {
            node_id: NodeId(0xab),
            cluster: "meshkv".into(),
            listen: Some("127.0.0.1:7420".into()),
            version_vector: [(NodeId(0xab), 3), (NodeId(0xcd), 2)].into_iter().collect::<VersionVector>(),
            keys: 4,
            conflicts: 1,
            peers: vec![PeerInfo {
                addr: "127.0.0.1:7421".into(),
                node_id: Some(NodeId(0xcd)),
                state: "connected".into(),
                lag: 0,
                sync: Some((10, 20)),
            }],
        }
    }

    #[test]
    fn status_json_has_the_documented_fields() {
        let v = status_json(&sample());
        assert_eq!(v["node_id"], "00000000000000ab");
        assert_eq!(v["listen"], "127.0.0.1:7420");
        assert_eq!(v["version_vector"]["00000000000000cd"], 2);
        assert_eq!(v["keys"], 4);
        assert_eq!(v["peers"][0]["addr"], "127.0.0.1:7421");
        assert_eq!(v["peers"][0]["node_id"], "00000000000000cd");
        assert_eq!(v["peers"][0]["state"], "connected");
        assert_eq!(v["peers"][0]["lag"], 0);
        assert_eq!(v["peers"][0]["sync"], json!({ "applied": 10, "at_most": 20 }));
    }

    #[test]
    fn status_table_lists_peers() {
        let t = status_table(&sample());
        assert!(t.contains("00000000000000ab"), "{t}");
        assert!(t.contains("127.0.0.1:7421"), "{t}");
        assert!(t.contains("connected") && t.contains("10 of at most 20"), "{t}");
    }
}
