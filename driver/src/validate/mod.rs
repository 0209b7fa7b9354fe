//! `rds-csi validate`: settles on a real RDS what RouterOS does where nobody has checked (the
//! behaviours mock-rds can play as profile variants), safely: it works only inside a fresh
//! scratch directory under the base path, names everything it makes with a unique prefix, and
//! removes all of it at the end, also after a failure or an interruption. The raw output of
//! every command becomes a bundle in the layout of `fixtures/routeros/`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::rds::command::{quote, RdsPath, Slot};
use crate::rds::error::{classify, ExecOutput};
use crate::rds::{Disk, FileInfo, RdsClient};

mod probes;
mod scripting;

/// Each command's deadline.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// How long a copy or a resize may take to show before it counts as never showing.
const SETTLE: Duration = Duration::from_secs(10);
const BURST: usize = 8;
const MIB: u64 = 1 << 20;
/// Failure texts the reference documents without a `failure:` prefix (rds-protocol.md §1.4).
const BARE_TEXTS: &[&str] = &[
    "disk is in use",
    "disk is busy",
    "file already exists",
    "invalid parameter",
];

/// Whether the driver copes with what the RDS did (`true` or `false` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Yes,
    /// The RDS did something no profile variant describes: please report it.
    No,
}

impl Serialize for Handled {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(*self == Handled::Yes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub step: &'static str,
    pub assumption: &'static str,
    pub observed: String,
    /// The mock-rds variants this matches (`default` behaviour has none).
    pub variants: Vec<&'static str>,
    pub handled: Handled,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub routeros_version: Option<String>,
    pub board: Option<String>,
    pub scratch: String,
    pub findings: Vec<Finding>,
    /// What could not be removed, each with the command that removes it.
    pub leftovers: Vec<String>,
    pub interrupted: bool,
    /// Why the run stopped before its last step, when a step could not go on (the RDS
    /// refused, was silent, or the scratch directory was taken).
    pub error: Option<String>,
}

impl Report {
    /// Every variant observed, over all steps.
    pub fn variants(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .findings
            .iter()
            .flat_map(|f| f.variants.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The raw output of the commands run, named as in `fixtures/routeros/`.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    pub files: Vec<(String, String)>,
    /// `exit=<status> <command>` per command, in order.
    pub log: Vec<String>,
    /// What the bundle's outputs must parse to (slot, path, size, NQN of the scratch disk).
    pub expected: serde_json::Value,
}

impl Bundle {
    /// Writes the bundle into `dir`, ready to become `fixtures/routeros/hardware/<version>/`.
    pub fn write(&self, dir: &Path, report: &Report) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in &self.files {
            std::fs::write(dir.join(name), text)?;
        }
        std::fs::write(dir.join("commands.txt"), self.log.join("\n") + "\n")?;
        std::fs::write(
            dir.join("expected.json"),
            serde_json::to_string_pretty(&self.expected)? + "\n",
        )?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(report)? + "\n",
        )?;
        Ok(())
    }
}

struct Run<'a> {
    rds: &'a RdsClient,
    prefix: String,
    scratch: RdsPath,
    bundle: Bundle,
    report: Report,
    /// What this run made, removed in reverse at the end. Only these: the clean-up never
    /// lists a directory, so a scratch directory that was already there (refused) keeps its files.
    disks: Vec<Slot>,
    files: Vec<RdsPath>,
    dirs: Vec<RdsPath>,
}

/// Runs every step against the RDS, then removes what it made. `progress` gets one line per
/// step; `cancel` stops the steps (the clean-up still runs). A step that cannot go on ends the
/// run with [`Report::error`] set: the report so far is still the answer.
pub async fn run(
    rds: &RdsClient,
    base: &RdsPath,
    cancel: CancellationToken,
    progress: impl FnMut(&str),
) -> (Report, Bundle) {
    let tag = format!("{:08x}", rand::random::<u32>());
    run_tagged(rds, base, &tag, cancel, progress).await
}

/// [`run`] with the scratch directory's tag chosen (`rds-csi-validate-<tag>`, slots `rdsv-<tag>-…`)
/// rather than random: what a test needs to meet a directory that is already there.
pub async fn run_tagged(
    rds: &RdsClient,
    base: &RdsPath,
    tag: &str,
    cancel: CancellationToken,
    mut progress: impl FnMut(&str),
) -> (Report, Bundle) {
    let scratch = match base.join(&format!("rds-csi-validate-{tag}")) {
        Ok(scratch) => scratch,
        Err(e) => {
            let report = Report {
                error: Some(format!("the scratch directory's name: {e}")),
                ..Report::default()
            };
            return (report, Bundle::default());
        }
    };
    let mut run = Run {
        rds,
        prefix: format!("rdsv-{tag}"),
        scratch: scratch.clone(),
        bundle: Bundle::default(),
        report: Report {
            scratch: scratch.to_string(),
            ..Report::default()
        },
        disks: Vec::new(),
        files: Vec::new(),
        dirs: Vec::new(),
    };
    // Stopped at once, mid-command too: everything is noted before the command that makes it.
    let steps = tokio::select! {
        steps = run.steps(base, &cancel, &mut progress) => steps,
        () = cancel.cancelled() => Ok(()),
    };
    progress("clean-up");
    run.clean_up().await;
    run.report.interrupted = cancel.is_cancelled();
    run.report.error = steps.err().map(|e| format!("{e:#}"));
    (run.report, run.bundle)
}

fn text(out: &ExecOutput) -> String {
    let t = format!("{}{}", out.stdout, out.stderr);
    t.trim().replace("\r\n", " / ").replace('\n', " / ")
}

fn exit_of(out: &ExecOutput) -> String {
    out.exit_status
        .map_or("no exit status".to_string(), |s| format!("exit {s}"))
}

/// The driver's view of a mutation's reply: true when it reads as a failure.
fn failed(out: &ExecOutput) -> bool {
    classify(out.clone(), true).is_err()
}

impl Run<'_> {
    fn deadline() -> Instant {
        Instant::now() + STEP_DEADLINE
    }

    async fn exec(&mut self, line: &str, fixture: Option<&str>) -> anyhow::Result<ExecOutput> {
        let out = self
            .rds
            .transport()
            .exec(line, Self::deadline())
            .await
            .map_err(|e| anyhow::anyhow!("`{line}`: {e}"))?;
        self.bundle.log.push(format!(
            "{} {line}",
            out.exit_status
                .map_or("exit=-".into(), |s| format!("exit={s}"))
        ));
        if let Some(name) = fixture {
            self.bundle
                .files
                .push((name.to_string(), out.stdout.clone() + &out.stderr));
        }
        Ok(out)
    }

    fn find(
        &mut self,
        step: &'static str,
        assumption: &'static str,
        observed: String,
        variants: Vec<&'static str>,
        handled: Handled,
    ) {
        self.report.findings.push(Finding {
            step,
            assumption,
            observed,
            variants,
            handled,
        });
    }

    /// Notes a disk about to be added and its file, before the command runs (it may make
    /// them and still fail), so the clean-up removes both.
    fn adding(&mut self, slot: &Slot, path: &RdsPath) {
        self.disks.push(slot.clone());
        self.files.push(path.clone());
    }

    fn slot(&self, what: &str) -> anyhow::Result<Slot> {
        Ok(Slot::new(format!("{}-{what}", self.prefix))?)
    }

    async fn disk(&mut self, slot: &Slot) -> anyhow::Result<Option<Disk>> {
        Ok(self.rds.get_disk(slot, Self::deadline()).await?)
    }

    async fn file(&mut self, path: &RdsPath) -> anyhow::Result<Option<FileInfo>> {
        Ok(self.rds.get_file(path, Self::deadline()).await?)
    }

    async fn steps(
        &mut self,
        base: &RdsPath,
        cancel: &CancellationToken,
        progress: &mut impl FnMut(&str),
    ) -> anyhow::Result<()> {
        type Step = &'static str;
        const STEPS: &[Step] = &[
            "version",
            "clock",
            "print-terse",
            "scratch",
            "directories",
            "add",
            "wrapping",
            "failures",
            "regex",
            "file-times",
            "copy",
            "exact-size",
            "scripting",
            "copy-size",
            "wrapping-list",
            "resize",
            "allow-host",
            "sessions",
        ];
        for (i, step) in STEPS.iter().enumerate() {
            if cancel.is_cancelled() {
                return Ok(());
            }
            progress(&format!("[{}/{}] {step}", i + 1, STEPS.len()));
            match *step {
                "version" => self.version().await?,
                "clock" => self.clock().await?,
                "print-terse" => self.print_terse().await?,
                "scratch" => self.make_scratch(base).await?,
                "directories" => self.directories().await?,
                "add" => self.add().await?,
                "wrapping" => self.wrapping().await?,
                "failures" => self.failures().await?,
                "regex" => self.regex().await?,
                "file-times" => self.file_times().await?,
                "copy" => self.copy().await?,
                "exact-size" => self.exact_size().await?,
                "scripting" => self.scripting().await?,
                "copy-size" => self.copy_size().await?,
                "wrapping-list" => self.wrapping_list().await?,
                "resize" => self.resize().await?,
                "allow-host" => self.allow_host().await?,
                "sessions" => self.sessions().await?,
                _ => unreachable!("every step is listed"),
            }
        }
        Ok(())
    }

    /// Removes what the run made: disks, then their files, then the directories it made,
    /// deepest first.
    /// What cannot be removed is listed with the command that removes it.
    async fn clean_up(&mut self) {
        let deadline = Self::deadline();
        for slot in std::mem::take(&mut self.disks).into_iter().rev() {
            // A copy may still be running: give it the settle time.
            let until = Instant::now() + SETTLE;
            loop {
                match self.rds.remove_disk(&slot, deadline).await {
                    Ok(()) => break,
                    Err(crate::rds::RdsError::Busy(_)) if Instant::now() < until => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        self.report.leftovers.push(format!(
                            "/disk remove [find slot={}]   # {e}",
                            quote(slot.as_str())
                        ));
                        break;
                    }
                }
            }
        }
        // A disk's file stays when the disk goes; removing one that was never made is a no-op.
        for path in std::mem::take(&mut self.files).into_iter().rev() {
            if let Err(e) = self.rds.remove_file(&path, deadline).await {
                self.report.leftovers.push(format!(
                    "/file remove [find name={}]   # {e}",
                    quote(path.file_name())
                ));
            }
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_str().len()));
        for dir in dirs {
            if let Err(e) = self.rds.remove_file(&dir, deadline).await {
                self.report.leftovers.push(format!(
                    "/file remove [find name={}]   # {e}",
                    quote(dir.file_name())
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_collected_once() {
        let finding = |v: Vec<&'static str>| Finding {
            step: "x",
            assumption: "y",
            observed: String::new(),
            variants: v,
            handled: Handled::Yes,
        };
        let report = Report {
            findings: vec![finding(vec!["b", "a"]), finding(vec!["a"])],
            ..Report::default()
        };
        assert_eq!(report.variants(), vec!["a", "b"]);
    }
}
