//! `import`: JSON lines applied to a node in atomic batches, with a progress bar.

use super::{client_command, fail, remote, Target};
use crate::encoding::parse_line;
use anyhow::{anyhow, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meshkv::client::Client;
use meshkv::protocol::{BatchOp, ErrorCode};
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Operations per `import` batch (fewer if they would exceed [`IMPORT_BATCH_BYTES`]).
const IMPORT_BATCH_OPS: usize = 1000;
/// Bytes of keys and values per `import` batch, well under the default
/// 17 MiB frame limit (a node with a smaller one gets smaller batches; a
/// single larger operation goes alone).
const IMPORT_BATCH_BYTES: usize = 8 << 20;
/// What one operation adds to a batch's encoding beyond its key and value,
/// at most.
const OP_OVERHEAD: usize = 32;

/// `meshkv import FILE|-`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// JSON lines {"key":…,"value":…} (value null: delete); `-` reads stdin.
    #[arg(value_name = "FILE|-")]
    file: PathBuf,
}

/// `meshkv import`: loads JSON lines in batches of up to 1000 operations,
/// each applied atomically; stops at the first bad line, with every line
/// before it applied and none after.
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
    let (mut line, mut line_no, mut bytes_read) = (Vec::new(), 0u64, 0u64);
    let (mut puts, mut deletes) = (0u64, 0u64);
    let mut batch = Pending::default();
    // Within the node's frame limit, with room for the request's framing.
    let limit = client.max_request_bytes();
    let budget = IMPORT_BATCH_BYTES.min(limit.saturating_sub(limit / 8 + 1024));
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line);
        let parsed = match read {
            Ok(0) => break,
            Ok(n) => {
                line_no += 1;
                bytes_read += n as u64;
                // A byte-order mark (as some editors write) opens no JSON.
                let bytes =
                    if line_no == 1 { line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&line) } else { &line };
                match std::str::from_utf8(bytes).map(str::trim) {
                    Ok("") => continue,
                    Ok(text) => parse_line(text),
                    Err(e) => Err(anyhow!(e).context("not valid UTF-8 (JSON lines are UTF-8)")),
                }
            }
            Err(e) => {
                line_no += 1;
                Err(anyhow!(e).context("cannot read it"))
            }
        };
        let (key, value) = match parsed {
            Ok(kv) => kv,
            Err(e) => {
                // The lines before it are good: apply them, so the message
                // says exactly what was applied.
                batch.send(&client).await?;
                return Err(e.context(format!("line {line_no}: not applied; {}", applied_before(line_no))));
            }
        };
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + OP_OVERHEAD;
        if !batch.ops.is_empty() && batch.bytes + size > budget {
            batch.send(&client).await?;
        }
        batch.lines.push(line_no);
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

/// What was applied when line `n` was not: every line before it.
fn applied_before(n: u64) -> String {
    match n {
        1 => "nothing was applied".to_string(),
        n => format!("lines 1-{} were applied, none after", n - 1),
    }
}

/// The operations of the next import batch and the lines they came from.
#[derive(Default)]
struct Pending {
    ops: Vec<BatchOp>,
    lines: Vec<u64>,
    bytes: usize,
}

impl Pending {
    /// Applies the batch. If the node refuses it for what an operation
    /// holds (too large, rejected by a hook), the operations are applied
    /// one by one up to the refused one, so the error names its line.
    async fn send(&mut self, client: &Client) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        let lines = std::mem::take(&mut self.lines);
        self.bytes = 0;
        let (first, last) = (lines[0], lines[lines.len() - 1]);
        match client.batch(ops.clone()).await {
            Ok(_) => Ok(()),
            Err(e) if ops.len() > 1 && matches!(e.code, ErrorCode::BadRequest | ErrorCode::Rejected) => {
                for (op, line) in ops.into_iter().zip(lines) {
                    if let Err(e) = client.batch(vec![op]).await {
                        return Err(remote(e).context(format!("line {line}: not applied; {}", applied_before(line))));
                    }
                }
                // Refused together, accepted one by one (a hook judging
                // whole batches): every line is applied now.
                Ok(())
            }
            Err(e) => {
                Err(remote(e).context(format!("batch of lines {first}-{last} not applied; {}", applied_before(first))))
            }
        }
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
