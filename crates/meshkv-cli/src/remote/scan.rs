//! `scan`, `export` and `watch`: the commands that read a key range.

use super::{client_command, remote, RangeArgs, Target};
use crate::encoding::{escape, json_line};
use anyhow::bail;
use clap::Args;
use meshkv::client::WatchEvent;
use meshkv::ScanOptions;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// Entries per scan chunk (the node also caps a chunk at about 1 MiB, so any
/// chunk fits the default frame limit).
const SCAN_CHUNK: u32 = 1000;

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

/// `meshkv export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    range: RangeArgs,
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
