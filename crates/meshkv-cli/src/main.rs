//! `meshkv`: the command line of the meshkv store.
//!
//! One module per subcommand group; `main` only parses the arguments, sets up
//! logging and dispatches.

mod bench;
mod demo;
mod encoding;
mod remote;
mod secret;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// meshkv: an embedded, multi-master replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "meshkv", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: remote::Target,
}

/// Top-level subcommands. Each variant owns the arguments of one group and
/// is handled by the module of the same name.
#[derive(Debug, Subcommand)]
enum Command {
    /// Measure write throughput.
    Bench(bench::BenchArgs),
    /// Run a node: a store that replicates with its peers and serves clients.
    Serve(serve::ServeArgs),
    /// Store a value.
    Put(remote::PutArgs),
    /// Print a value (exit 1 if the key does not exist).
    Get(remote::GetArgs),
    /// Delete a key.
    Del(remote::DelArgs),
    /// List keys and values in key order.
    Scan(remote::ScanArgs),
    /// Stream changes as they happen, until Ctrl-C.
    Watch(remote::WatchArgs),
    /// Show the node's id, keys, version vector and peers.
    Status(remote::StatusArgs),
    /// Load JSON lines {"key":…,"value":…} (value null: delete).
    Import(remote::ImportArgs),
    /// Write entries as JSON lines {"key":…,"value":…}.
    Export(remote::ExportArgs),
    /// Three nodes in this process: a partition, conflicting writes, healing.
    Demo(demo::DemoArgs),
    /// Generate a cluster secret (for --secret-file).
    Secret(secret::SecretArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(if matches!(cli.command, Command::Serve(_)) { serve::LOG_DEFAULT } else { "warn" });
    let target = cli.target;
    let outcome = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Secret(args) => return secret::run(args).map_or_else(remote::fail, |()| ExitCode::SUCCESS),
        Command::Serve(args) => return serve::run(args, target),
        Command::Put(args) => return remote::put(args, target),
        Command::Get(args) => return remote::get(args, target),
        Command::Del(args) => return remote::del(args, target),
        Command::Scan(args) => return remote::scan(args, target),
        Command::Watch(args) => return remote::watch(args, target),
        Command::Status(args) => return remote::status(args, target),
        Command::Import(args) => return remote::import(args, target),
        Command::Export(args) => return remote::export(args, target),
        Command::Demo(args) => return demo::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshkv: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout is reserved for command output such as JSON),
/// filtered by `RUST_LOG` (default: `default`, i.e. info for `serve`,
/// warnings and errors otherwise).
fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}
