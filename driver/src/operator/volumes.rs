//! `rds-csi volumes`: the volumes and snapshots on the RDS that are this driver's.

use serde::Serialize;

use super::{emit, gib, OutputFormat, RdsTarget};
use crate::controller::health::{condition_of, disk_problems, file_problem, Backing};
use crate::ids::{classify_disk, ManagedFile};
use crate::rds::deadline_in;

pub struct VolumesOptions {
    pub rds: RdsTarget,
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct ListedVolume {
    kind: &'static str,
    id: String,
    size_bytes: Option<u64>,
    file_path: Option<String>,
    nqn: Option<String>,
    source: Option<String>,
    /// A volume's condition as its disk shows it (`healthy`, or what keeps nodes from it);
    /// None for a snapshot.
    condition: Option<String>,
}

pub async fn run(options: VolumesOptions) -> anyhow::Result<()> {
    let rds = options.rds.client()?;
    let bases = options.rds.base_paths()?;
    let deadline = deadline_in(options.rds.timeout);
    let disks = rds.list_disks(deadline).await?;
    let files: std::collections::HashMap<_, _> = rds
        .list_files_in(&bases, deadline)
        .await?
        .into_iter()
        .map(|f| (f.path.clone(), f))
        .collect();
    let mut listed: Vec<ListedVolume> = disks
        .iter()
        .filter_map(|d| {
            let (kind, source, condition) = match classify_disk(&bases, d)? {
                ManagedFile::Volume(id) => {
                    let mut problems = disk_problems(&id, d);
                    problems.extend(file_problem(&id, d, Backing::of(d, &files)));
                    ("volume", None, Some(condition_of(&problems).message))
                }
                ManagedFile::Snapshot { source, .. } => {
                    ("snapshot", source.map(|s| s.to_string()), None)
                }
            };
            Some(ListedVolume {
                kind,
                id: d.slot.clone(),
                size_bytes: d.size_bytes,
                file_path: d.file_path.clone(),
                nqn: d.nqn.clone(),
                source,
                condition,
            })
        })
        .collect();
    listed.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    emit(
        options.output,
        &serde_json::json!({ "volumes": listed }),
        |out| {
            if listed.is_empty() {
                // As `orphans` says "no orphans": a bare header reads like a failed listing.
                writeln!(out, "no volumes or snapshots of this driver on the RDS")?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<9} {:<64} {:>10} FILE  CONDITION",
                "KIND", "ID", "SIZE(GiB)"
            )?;
            for v in &listed {
                writeln!(
                    out,
                    "{:<9} {:<64} {:>10.2} {}{}  {}",
                    v.kind,
                    v.id,
                    gib(v.size_bytes.unwrap_or_default()),
                    v.file_path.as_deref().unwrap_or("-"),
                    v.source
                        .as_deref()
                        .map(|s| format!(" (from {s})"))
                        .unwrap_or_default(),
                    v.condition.as_deref().unwrap_or("-")
                )?;
            }
            Ok(())
        },
    )?;
    Ok(())
}
