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

use crate::rds::{RdsClient, RdsPath, RetryPolicy, SshConfig, Transport};

/// The exit status of an operator command that ran and found something needing action (a
/// failed check, an object to change, an orphan not removed). Any other error means the command
/// could not do its work: [`EXIT_NOT_DONE`].
pub const EXIT_NEEDS_ACTION: u8 = 1;
/// Bad flags: nothing was tried.
pub const EXIT_USAGE: u8 = 2;
/// The command could not do its work: the RDS or the cluster unreachable, silent or refusing,
/// a file it could not write, its --timeout over.
pub const EXIT_NOT_DONE: u8 = 3;
/// Stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// What an operator command found that needs action: exit status [`EXIT_NEEDS_ACTION`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NeedsAction(pub String);

/// The command was stopped by Ctrl-C: exit status [`EXIT_INTERRUPTED`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// The exit status for an operator command's result.
pub fn exit_status(result: &anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) if e.is::<NeedsAction>() => EXIT_NEEDS_ACTION,
        Err(e) if e.is::<Interrupted>() => EXIT_INTERRUPTED,
        Err(_) => EXIT_NOT_DONE,
    }
}

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
    /// How long the whole command may take (--timeout).
    pub timeout: Duration,
}

impl RdsTarget {
    /// A client that tries each command twice: someone is waiting, and --timeout bounds the
    /// whole run anyway.
    pub fn client(&self) -> anyhow::Result<std::sync::Arc<RdsClient>> {
        let config = self.ssh.clone().map_err(anyhow::Error::msg)?;
        let retry = RetryPolicy {
            attempts: 2,
            ..RetryPolicy::default()
        };
        Ok(std::sync::Arc::new(RdsClient::new(
            Transport::new(config),
            retry,
        )))
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

/// `1 file`, `2 files`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A size as people read it: `512 B`, `1.5 MiB`, `10.0 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_read_as_words() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(count(1, "orphan"), "1 orphan");
        assert_eq!(count(0, "orphan"), "0 orphans");
    }
}
