//! Client commands: `put`, `get`, `del`, `scan`, `watch`, `status`, `import`
//! and `export` talk to a running node over TCP with [`meshkv::client::Client`].
//!
//! Exit codes: 0 success, 1 `get` of a missing key, 2 any error (node
//! unreachable, refused request, bad input; clap's usage errors are 2 too).

use crate::encoding::{arg_bytes, escape};
use anyhow::{anyhow, Result};
use clap::Args;
use meshkv::client::{Client, ClientOptions};
use meshkv::protocol::{ErrorCode, RemoteError};
use meshkv::secure::Secret;
use meshkv::KeyRange;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

mod import;
mod scan;
mod status;

pub use import::{import, ImportArgs};
pub use scan::{export, scan, watch, ExportArgs, ScanArgs, WatchArgs};
pub use status::{status, StatusArgs};

/// Default address of a node (and of `meshkv serve`).
pub const DEFAULT_NODE: &str = "127.0.0.1:7420";
/// Default cluster name (the library's).
pub const DEFAULT_CLUSTER: &str = "meshkv";

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

/// The largest frame the command line reads: a value and key at their
/// ceilings, with room for the reply around them.
const CLI_MAX_FRAME: usize = meshkv::storage::VALUE_LEN_CEILING + meshkv::storage::KEY_LEN_CEILING + (1 << 20);

async fn connect(target: &Target) -> Result<Client> {
    let node = target.node.as_str();
    let addr = tokio::net::lookup_host(node)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| anyhow!("cannot resolve node address {node:?} (expected HOST:PORT)"))?;
    let cluster = target.cluster.clone().unwrap_or_else(|| DEFAULT_CLUSTER.into());
    let options = ClientOptions {
        cluster: cluster.clone(),
        secret: target.secret()?,
        // Whatever value a node was configured to hold can be read back.
        max_frame: CLI_MAX_FRAME,
        ..ClientOptions::default()
    };
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
        // The node answered: it runs, it is busy.
        _ if e.message.contains("connection limit") => anyhow!("the node at {node} is busy: {}", e.message),
        // The node answered: it runs another protocol version.
        _ if e.message.contains("protocol version") => {
            anyhow!("the node at {node} refused the connection: {}", e.message)
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
