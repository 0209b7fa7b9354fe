//! The operator commands: `doctor`, `volumes`, `orphans`, `validate` and `migrate-check`. Each
//! takes an options type of its own, which the command line builds, and prints through [`emit`].

pub mod doctor;
pub mod migrate_check;
pub mod orphans;
pub mod validate;
pub mod volumes;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::rds::{RdsClient, RdsPath, SshConfig};

/// Long enough to list a large pool over a slow link.
const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// How an operator command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A table for people.
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// The RDS an operator command works on, as the flags gave it. The settings stay unresolved
/// errors (not a failed command) so that `doctor` can report a bad flag as one of its rows.
pub struct RdsTarget {
    pub ssh: Result<SshConfig, String>,
    pub base_paths: Result<Vec<RdsPath>, String>,
    /// The private key's file, named by `doctor` once it has loaded.
    pub key_file: PathBuf,
}

impl RdsTarget {
    pub fn client(&self) -> anyhow::Result<std::sync::Arc<RdsClient>> {
        let config = self.ssh.clone().map_err(anyhow::Error::msg)?;
        Ok(crate::server::rds_client(config))
    }

    /// The base paths, the first one first; at least one.
    pub fn base_paths(&self) -> anyhow::Result<Vec<RdsPath>> {
        self.base_paths.clone().map_err(anyhow::Error::msg)
    }
}

/// Prints `doc` as one JSON document, or what `text` writes, on stdout.
fn emit<T: Serialize + ?Sized>(
    format: OutputFormat,
    doc: &T,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(doc)?)?,
        OutputFormat::Text => text(&mut out)?,
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}
