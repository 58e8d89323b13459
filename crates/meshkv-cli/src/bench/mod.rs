//! `meshkv bench ...`: benchmarks.

mod local;
mod machine;
mod timing;
mod workload;

use clap::{Args, Subcommand};

/// Arguments of `meshkv bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Put throughput of a local store (`Db::write`) against plain fjall with
    /// the same keys, values, batch sizes and durability.
    Local(local::LocalArgs),
}

/// Runs `meshkv bench ...`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Local(a) => local::run(a),
    }
}
