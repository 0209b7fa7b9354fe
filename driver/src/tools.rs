//! Operator commands: `rds-csi orphans`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{OrphansArgs, OutputFormat};
use crate::orphans::{self, OrphanKind};
use crate::rds::{deadline_in, RdsPath};

/// Long enough to list a large pool over a slow link.
const TOOL_DEADLINE: Duration = Duration::from_secs(120);

pub async fn orphans(args: OrphansArgs) -> anyhow::Result<()> {
    let rds = crate::server::rds_client(&args.rds)?;
    let base =
        RdsPath::new(args.rds.rds_volume_base_path.as_str()).context("--rds-volume-base-path")?;
    let deadline = deadline_in(TOOL_DEADLINE);
    let found = orphans::scan(&rds, &base, args.grace_period, deadline).await?;
    let mut deleted = Vec::new();
    if args.delete {
        for orphan in &found {
            orphans::delete(&rds, orphan, deadline)
                .await
                .with_context(|| format!("removing {orphan:?}"))?;
            deleted.push(orphan.clone());
        }
    }
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => {
            let doc = serde_json::json!({ "orphans": found, "deleted": deleted.len() });
            writeln!(out, "{doc}")?;
        }
        OutputFormat::Text => {
            if found.is_empty() {
                writeln!(out, "no orphans under {base}")?;
            }
            for o in &found {
                let what = match o.kind {
                    OrphanKind::FileWithoutDisk => "file without disk",
                    OrphanKind::DiskWithoutFile => "disk without file",
                };
                writeln!(
                    out,
                    "{what:<18} {:<64} {:>16} {}",
                    o.slot.as_deref().or(o.path.as_deref()).unwrap_or("-"),
                    o.size_bytes.map_or("-".into(), |s| s.to_string()),
                    o.last_modified.as_deref().unwrap_or("")
                )?;
            }
            if args.delete {
                writeln!(out, "removed {} orphan(s)", deleted.len())?;
            } else if !found.is_empty() {
                writeln!(
                    out,
                    "{} orphan(s) found; run again with --delete to remove them",
                    found.len()
                )?;
            }
        }
    }
    Ok(())
}
