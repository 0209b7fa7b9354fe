//! `rds-csi orphans`: files without disks, disks without files or PVs, under the base paths;
//! removed with `--delete` by the reconciler's rules.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{emit, OutputFormat, RdsTarget};
use crate::orphans::{self, OrphanKind};
use crate::rds::{deadline_in, RdsPath};

pub struct OrphansOptions {
    pub rds: RdsTarget,
    /// Remove what is found (otherwise only report it).
    pub delete: bool,
    /// Files younger than this are left alone (a create may be in progress).
    pub grace_period: Duration,
    pub output: OutputFormat,
    /// With a cluster, disks without PV are orphans too and referenced files never are.
    pub kubeconfig: Option<PathBuf>,
    pub driver_name: String,
}

/// The cluster's references, when `--kubeconfig` names one.
async fn cluster_references(
    client: Option<&::kube::Client>,
    driver_name: &str,
) -> anyhow::Result<Option<orphans::References>> {
    match client {
        Some(client) => Ok(Some(
            crate::kube::orphans::cluster_references(client, driver_name)
                .await
                .context(
                    "listing PersistentVolumes, VolumeAttachments and VolumeSnapshotContents",
                )?,
        )),
        None => Ok(None),
    }
}

/// An orphan found but not deleted, and why.
#[derive(Serialize)]
struct Kept<'a> {
    orphan: &'a orphans::Orphan,
    reason: &'static str,
}

pub async fn run(options: OrphansOptions) -> anyhow::Result<()> {
    let rds = options.rds.client()?;
    let bases = options.rds.base_paths()?;
    let deadline = deadline_in(options.rds.timeout);
    // With a cluster, also disks without PV; files the cluster references are never orphans.
    let client = match &options.kubeconfig {
        Some(path) => Some(
            crate::kube::connect(Some(path))
                .await?
                .context("--kubeconfig gave no client")?,
        ),
        None => None,
    };
    let refs = cluster_references(client.as_ref(), &options.driver_name).await?;
    let found = orphans::scan_at(
        &rds,
        &bases,
        options.grace_period,
        refs.as_ref(),
        std::time::SystemTime::now(),
        deadline,
    )
    .await?;
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    if options.delete && !found.is_empty() {
        // The reconciler's rules: references read again after the scan (a volume created
        // meanwhile has its PV only now), and a second scan, so only what both saw exactly as
        // it was (path, size, time: not a file still being written) is deleted.
        let refs_after = cluster_references(client.as_ref(), &options.driver_name).await?;
        let again = orphans::scan_at(
            &rds,
            &bases,
            options.grace_period,
            refs_after.as_ref(),
            std::time::SystemTime::now(),
            deadline,
        )
        .await?;
        let readings: Vec<&orphans::References> = refs.iter().chain(refs_after.iter()).collect();
        // Drawn only on a terminal: quiet in CI and in pipes.
        let progress = ProgressBar::new(found.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} removing orphans")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        for orphan in &found {
            progress.inc(1);
            let reason = if again.contains(orphan) {
                orphans::keep_reason(&bases, orphan, &readings)
            } else {
                Some("it changed or went away between two scans")
            };
            if let Some(reason) = reason {
                kept.push(Kept { orphan, reason });
                continue;
            }
            orphans::delete(&rds, orphan, deadline)
                .await
                .with_context(|| format!("removing {orphan:?}"))?;
            deleted.push(orphan.clone());
        }
        progress.finish_and_clear();
    }
    emit(
        options.output,
        &serde_json::json!({ "orphans": found, "deleted": deleted.len(), "kept": kept }),
        |out| {
            if found.is_empty() {
                let dirs: Vec<&str> = bases.iter().map(RdsPath::as_str).collect();
                writeln!(out, "no orphans under {}", dirs.join(", "))?;
            }
            for o in &found {
                let what = match o.kind {
                    OrphanKind::FileWithoutDisk => "file without disk",
                    OrphanKind::DiskWithoutFile => "disk without file",
                    OrphanKind::DiskWithoutPv => "disk without PV",
                };
                writeln!(
                    out,
                    "{what:<18} {:<64} {:>10} {}",
                    o.slot.as_deref().or(o.path.as_deref()).unwrap_or("-"),
                    o.size_bytes.map_or("-".into(), super::human_bytes),
                    o.last_modified.as_deref().unwrap_or("")
                )?;
            }
            for k in &kept {
                writeln!(
                    out,
                    "kept {}: {}",
                    k.orphan
                        .slot
                        .as_deref()
                        .or(k.orphan.path.as_deref())
                        .unwrap_or("-"),
                    k.reason
                )?;
            }
            if options.delete {
                writeln!(out, "removed {}", super::count(deleted.len(), "orphan"))?;
            } else if !found.is_empty() {
                writeln!(
                    out,
                    "{} found; run again with --delete to remove them",
                    super::count(found.len(), "orphan")
                )?;
            }
            Ok(())
        },
    )?;
    Ok(())
}
