//! `meshkv`: the command line of the meshkv store.
//!
//! One module per subcommand group; `main` only parses the arguments, sets up
//! logging and dispatches.

mod bench;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// meshkv: an embedded, multi-master replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "meshkv", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Top-level subcommands. Each variant owns the arguments of one group and
/// is handled by the module of the same name.
#[derive(Debug, Subcommand)]
enum Command {
    /// Measure write throughput.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Bench(args) => bench::run(args),
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
/// filtered by `RUST_LOG` (default: warnings and errors).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
