//! `meshkv secret`: generates a cluster secret, printed or written to a
//! file only its owner can read.

use anyhow::{Context, Result};
use clap::Args;
use meshkv::secure::Secret;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `meshkv secret`.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Write the secret to FILE (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace FILE if it exists (every node and client must then get the new one).
    #[arg(long, requires = "out")]
    force: bool,
}

/// Runs `meshkv secret`.
pub fn run(args: SecretArgs) -> Result<()> {
    let text = format!("{}\n", Secret::generate().to_hex());
    let Some(path) = args.out else {
        print!("{text}");
        return Ok(());
    };
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if args.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let mut file = open.open(&path).with_context(|| {
        format!("cannot create {} (an existing secret is never overwritten without --force)", path.display())
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // `mode` applies only to new files; a replaced one is tightened here.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote a new cluster secret to {}; give it to every node and client (--secret-file)", path.display());
    Ok(())
}
