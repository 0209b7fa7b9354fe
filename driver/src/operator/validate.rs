//! `rds-csi validate`: runs the probes of `crate::validate` on a scratch disk and reports which
//! RouterOS variant the RDS is.

use std::path::PathBuf;

use super::{emit, OutputFormat, RdsTarget};

pub struct ValidateOptions {
    pub rds: RdsTarget,
    /// Where to write the raw outputs, in the layout of `fixtures/routeros/`.
    pub bundle: Option<PathBuf>,
    pub output: OutputFormat,
}

pub async fn run(options: ValidateOptions) -> anyhow::Result<()> {
    let rds = options.rds.client()?;
    let base = options.rds.base_paths()?.remove(0);
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: removing what was made, then stopping");
            on_interrupt.cancel();
        }
    });
    let (report, bundle) =
        crate::validate::run(&rds, &base, cancel, |line| eprintln!("{line}")).await?;
    if let Some(dir) = &options.bundle {
        bundle.write(dir, &report)?;
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
    emit(options.output, &report, |out| {
        writeln!(
            out,
            "{:<14} {:<8} {:<56} observed",
            "step", "handled", "assumption"
        )?;
        for f in &report.findings {
            let handled = match f.handled {
                crate::validate::Handled::Yes => "yes",
                crate::validate::Handled::No => "NO",
            };
            writeln!(
                out,
                "{:<14} {handled:<8} {:<56} {}",
                f.step, f.assumption, f.observed
            )?;
        }
        let variants = report.variants();
        writeln!(
            out,
            "\nmock-rds profile matching this RDS: --profile {}",
            if variants.is_empty() {
                "default".to_string()
            } else {
                variants.join(",")
            }
        )?;
        for l in &report.leftovers {
            writeln!(out, "NOT REMOVED, remove by hand: {l}")?;
        }
        Ok(())
    })?;
    let unhandled = report
        .findings
        .iter()
        .any(|f| f.handled == crate::validate::Handled::No);
    if report.interrupted {
        anyhow::bail!("interrupted before every step ran");
    }
    if !report.leftovers.is_empty() {
        anyhow::bail!(
            "{} thing(s) could not be removed (listed above)",
            report.leftovers.len()
        );
    }
    if unhandled {
        anyhow::bail!(
            "the RDS did something the driver does not handle (marked NO): please report it"
        );
    }
    Ok(())
}
