//! `rds-csi validate`: runs the probes of `crate::validate` on a scratch disk and reports which
//! RouterOS variant the RDS is.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::{count, emit, Interrupted, NeedsAction, OutputFormat, RdsTarget};
use crate::validate::Report;

pub struct ValidateOptions {
    pub rds: RdsTarget,
    /// Where to write the raw outputs, in the layout of `fixtures/routeros/`.
    pub bundle: Option<PathBuf>,
    pub output: OutputFormat,
}

/// The JSON report: the run's findings, whether the driver handles all of them, and the
/// mock-rds profile that plays this RDS (none when the run did not finish).
#[derive(Serialize)]
struct ValidateDoc<'a> {
    ok: bool,
    profile: Option<String>,
    #[serde(flatten)]
    report: &'a Report,
}

/// Makes `dir` and checks a file can be written in it, before anything runs on the RDS.
fn check_bundle_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            let probe = dir.join(".rds-csi-write-test");
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .with_context(|| format!("--bundle {}: cannot write there", dir.display()))
}

pub async fn run(options: ValidateOptions) -> anyhow::Result<()> {
    if let Some(dir) = &options.bundle {
        check_bundle_dir(dir)?;
    }
    let rds = options.rds.client()?;
    let base = options.rds.base_paths()?.remove(0);
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_interrupt = cancel.clone();
    let interrupted = Arc::new(AtomicBool::new(false));
    let was_interrupted = Arc::clone(&interrupted);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: removing what was made, then stopping");
            was_interrupted.store(true, Ordering::SeqCst);
            on_interrupt.cancel();
        }
    });
    let timeout = options.rds.timeout;
    let on_timeout = cancel.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        eprintln!(
            "--timeout {} is up: removing what was made, then stopping",
            crate::duration::display(timeout)
        );
        on_timeout.cancel();
    });
    let (report, bundle) =
        crate::validate::run(&rds, &base, cancel, |line| eprintln!("{line}")).await;
    timer.abort();
    let finished = !report.interrupted && report.error.is_none();
    let unhandled = report
        .findings
        .iter()
        .any(|f| f.handled == crate::validate::Handled::No);
    let profile = finished.then(|| {
        let variants = report.variants();
        if variants.is_empty() {
            "default".to_string()
        } else {
            variants.join(",")
        }
    });
    // The report is printed whatever happens to the bundle.
    let written = match &options.bundle {
        Some(dir) => bundle
            .write(dir, &report)
            .with_context(|| format!("--bundle {}", dir.display()))
            .map(|()| Some(dir)),
        None => Ok(None),
    };
    let doc = ValidateDoc {
        ok: finished && !unhandled && report.leftovers.is_empty(),
        profile: profile.clone(),
        report: &report,
    };
    // Columns as wide as their widest cell, so no row runs into the next column.
    let step_width = report
        .findings
        .iter()
        .map(|f| f.step.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let assumption_width = report
        .findings
        .iter()
        .map(|f| f.assumption.chars().count())
        .max()
        .unwrap_or(0)
        .max(10);
    emit(options.output, &doc, |out| {
        writeln!(
            out,
            "{:<step_width$} {:<8} {:<assumption_width$} observed",
            "step", "handled", "assumption"
        )?;
        for f in &report.findings {
            let handled = match f.handled {
                crate::validate::Handled::Yes => "yes",
                crate::validate::Handled::No => "NO",
            };
            writeln!(
                out,
                "{:<step_width$} {handled:<8} {:<assumption_width$} {}",
                f.step, f.assumption, f.observed
            )?;
        }
        if let Some(profile) = &profile {
            writeln!(
                out,
                "\nmock-rds profile matching this RDS: --profile {profile}"
            )?;
        }
        for l in &report.leftovers {
            writeln!(out, "NOT REMOVED, remove by hand: {l}")?;
        }
        Ok(())
    })?;
    if let Some(dir) = written? {
        eprintln!(
            "bundle written to {}; add it as fixtures/routeros/hardware/{}/",
            dir.display(),
            report
                .routeros_version
                .as_deref()
                .unwrap_or("unknown")
                .split_whitespace()
                .next()
                .unwrap_or("unknown")
        );
    }
    if let Some(error) = &report.error {
        anyhow::bail!("{error}");
    }
    if report.interrupted {
        let why = "stopped before every step ran";
        if interrupted.load(Ordering::SeqCst) {
            return Err(Interrupted(format!("interrupted: {why}")).into());
        }
        anyhow::bail!(
            "gave up after {} (--timeout): {why}",
            crate::duration::display(timeout)
        );
    }
    if !report.leftovers.is_empty() {
        return Err(NeedsAction(format!(
            "{} could not be removed (listed above)",
            count(report.leftovers.len(), "thing")
        ))
        .into());
    }
    if unhandled {
        return Err(NeedsAction(
            "the RDS did something the driver does not handle (marked NO): please report it".into(),
        )
        .into());
    }
    Ok(())
}
