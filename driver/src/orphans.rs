//! Finds what the driver left on the RDS without a counterpart: backing files of the managed
//! grammar with no disk, and managed disks whose file is gone. Files of every disk on the RDS
//! count as in use (snapshots, other tools' disks), files younger than a grace period are left
//! alone, and only `<dir>/<id>.img` names directly in a base path are ever considered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::ids::{classify_disk, classify_managed_file, ManagedFile};
use crate::rds::{RdsClient, RdsClock, RdsError, RdsPath};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrphanKind {
    /// A managed `.img` file that no disk uses (a delete that removed the disk but not the file).
    FileWithoutDisk,
    /// A managed disk whose backing file is missing.
    DiskWithoutFile,
    /// A managed volume disk whose ID no PersistentVolume of this driver references (only
    /// reported when the cluster's references are known).
    DiskWithoutPv,
}

impl OrphanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FileWithoutDisk => "file-without-disk",
            Self::DiskWithoutFile => "disk-without-file",
            Self::DiskWithoutPv => "disk-without-pv",
        }
    }
}

/// What the cluster references: the volume handles of this driver's PVs and the snapshot
/// handles of its VolumeSnapshotContents, and the volumes its VolumeAttachments say are
/// attached. Anything referenced is never an orphan file, and never deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    pub volumes: HashSet<String>,
    pub snapshots: HashSet<String>,
    pub attached: HashSet<String>,
}

/// One orphan as a scan saw it. Equality covers the size and the modification time too, so a
/// file that changed between two scans (one still being written) is not the same orphan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Orphan {
    pub kind: OrphanKind,
    pub path: Option<String>,
    pub slot: Option<String>,
    pub size_bytes: Option<u64>,
    pub last_modified: Option<String>,
}

pub async fn scan(
    rds: &RdsClient,
    bases: &[RdsPath],
    grace: Duration,
    deadline: Instant,
) -> Result<Vec<Orphan>, RdsError> {
    scan_at(rds, bases, grace, None, SystemTime::now(), deadline).await
}

/// Whether a file last modified at `last_modified` (as the RDS printed it, in its own zone) is
/// older than `grace` both by the RDS's own clock and by ours (using the RDS's offset from
/// UTC), so neither a misread zone nor a wrong RDS clock can make a fresh file look old. A file
/// of unknown age may be a create in progress: it is never old.
fn old_enough(
    last_modified: Option<&str>,
    clock: &RdsClock,
    now: SystemTime,
    grace: Duration,
) -> bool {
    let Some(printed) = last_modified else {
        return false;
    };
    let by_rds = clock.age(printed);
    let by_us = clock
        .to_utc(printed)
        .and_then(|t| now.duration_since(t).ok());
    matches!((by_rds, by_us), (Some(a), Some(b)) if a >= grace && b >= grace)
}

/// `scan` with the cluster's references (which adds disks without PV and protects referenced
/// files) and an explicit "now" for the grace period.
pub async fn scan_at(
    rds: &RdsClient,
    bases: &[RdsPath],
    grace: Duration,
    refs: Option<&References>,
    now: SystemTime,
    deadline: Instant,
) -> Result<Vec<Orphan>, RdsError> {
    // Files first: a volume created between the two listings then shows its disk with no file
    // listed (confirmed below), never a file without its disk.
    let clock = rds.clock(deadline).await?;
    let files = rds.list_files_in(bases, deadline).await?;
    let disks = rds.list_disks(deadline).await?;
    let used: HashSet<&str> = disks
        .iter()
        .filter_map(|d| d.file_path.as_deref())
        .collect();
    let present: HashMap<&str, &crate::rds::FileInfo> =
        files.iter().map(|f| (f.path.as_str(), f)).collect();
    let referenced = |m: &ManagedFile| {
        refs.is_some_and(|r| match m {
            ManagedFile::Volume(id) => r.volumes.contains(id.as_str()),
            ManagedFile::Snapshot { id, .. } => r.snapshots.contains(id.as_str()),
        })
    };
    let mut orphans = Vec::new();
    for file in files.iter().filter(|f| !f.is_directory()) {
        if used.contains(file.path.as_str()) {
            continue;
        }
        let Some(managed) = classify_managed_file(bases, &file.path) else {
            continue;
        };
        if referenced(&managed) {
            tracing::warn!(path = %file.path, "file without disk is referenced by the cluster; not an orphan");
            continue;
        }
        if old_enough(file.last_modified.as_deref(), &clock, now, grace) {
            orphans.push(Orphan {
                kind: OrphanKind::FileWithoutDisk,
                path: Some(file.path.clone()),
                slot: None,
                size_bytes: file.size_bytes,
                last_modified: file.last_modified.clone(),
            });
        }
    }
    for disk in &disks {
        let Some(managed) = classify_disk(bases, disk) else {
            continue;
        };
        let path = disk.file_path.as_deref().unwrap_or_default();
        match present.get(path) {
            None => {
                // Confirm with an exact query: the file may have been made after the listing.
                let exact = RdsPath::new(path).map_err(RdsError::from)?;
                if rds.get_file(&exact, deadline).await?.is_none() {
                    orphans.push(Orphan {
                        kind: OrphanKind::DiskWithoutFile,
                        path: Some(path.to_string()),
                        slot: Some(disk.slot.clone()),
                        size_bytes: disk.size_bytes,
                        last_modified: None,
                    });
                }
            }
            Some(file) => {
                // Only volumes: a snapshot disk belongs to no PV. The file's age guards a volume
                // whose PV the provisioner has not written yet.
                let unreferenced_volume = matches!(managed, ManagedFile::Volume(_))
                    && refs.is_some()
                    && !referenced(&managed);
                if unreferenced_volume
                    && old_enough(file.last_modified.as_deref(), &clock, now, grace)
                {
                    orphans.push(Orphan {
                        kind: OrphanKind::DiskWithoutPv,
                        path: Some(path.to_string()),
                        slot: Some(disk.slot.clone()),
                        size_bytes: disk.size_bytes,
                        last_modified: file.last_modified.clone(),
                    });
                }
            }
        }
    }
    Ok(orphans)
}

/// Removes what `scan` found: the file of a file orphan, the disk entry of a disk orphan.
pub async fn delete(rds: &RdsClient, orphan: &Orphan, deadline: Instant) -> Result<(), RdsError> {
    match orphan.kind {
        OrphanKind::FileWithoutDisk => {
            let path = RdsPath::new(orphan.path.clone().unwrap_or_default())?;
            rds.remove_file(&path, deadline).await
        }
        OrphanKind::DiskWithoutFile => {
            let slot = crate::rds::Slot::new(orphan.slot.clone().unwrap_or_default())?;
            rds.remove_disk(&slot, deadline).await
        }
        // As DeleteVolume does: the disk, then its file (RouterOS keeps the file).
        OrphanKind::DiskWithoutPv => {
            let slot = crate::rds::Slot::new(orphan.slot.clone().unwrap_or_default())?;
            let path = RdsPath::new(orphan.path.clone().unwrap_or_default())?;
            rds.remove_disk(&slot, deadline).await?;
            rds.remove_file(&path, deadline).await
        }
    }
}

/// Why a found orphan must be kept, or None when it may be deleted: the rules the reconciler
/// and `rds-csi orphans --delete` share. `refs` are every reading of the cluster (before and
/// after the scan): a reference in any of them protects.
pub fn keep_reason(
    bases: &[RdsPath],
    orphan: &Orphan,
    refs: &[&References],
) -> Option<&'static str> {
    let managed = match (&orphan.slot, &orphan.path) {
        (Some(_), _) => None,
        (None, Some(path)) => classify_managed_file(bases, path),
        (None, None) => None,
    };
    if matches!(managed, Some(ManagedFile::Snapshot { .. })) {
        // The Go driver deleted live snapshot files (test-scenarios §6.4.1): a person judges.
        return Some(
            "a snapshot file is never deleted as an orphan; remove it by hand if it is one",
        );
    }
    let id = orphan.slot.clone().or_else(|| match managed {
        Some(ManagedFile::Volume(id)) => Some(id.to_string()),
        _ => None,
    });
    let id = id?;
    if refs
        .iter()
        .any(|r| r.volumes.contains(&id) || r.snapshots.contains(&id))
    {
        return Some("the cluster references it");
    }
    if refs.iter().any(|r| r.attached.contains(&id)) {
        return Some("a node has it attached");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_named_in_logs_and_events_as_reports_serialize_them() {
        for kind in [
            OrphanKind::FileWithoutDisk,
            OrphanKind::DiskWithoutFile,
            OrphanKind::DiskWithoutPv,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn a_file_is_old_only_when_both_clocks_say_so() {
        // The RDS reads 12:00:00 at UTC+1, so 11:00:00 UTC.
        let clock = RdsClock {
            offset_seconds: 3600,
            now_wall: crate::rds::model::wall_clock_seconds("2026-12-06 12:00:00").unwrap(),
        };
        let utc_noon = clock.to_utc("2026-12-06 12:00:00").unwrap();
        let grace = Duration::from_secs(600);
        let old = |printed: Option<&str>, now: SystemTime| old_enough(printed, &clock, now, grace);
        assert!(
            old(Some("2026-12-06 11:50:00"), utc_noon),
            "exactly the grace"
        );
        assert!(!old(Some("2026-12-06 11:50:01"), utc_noon));
        assert!(
            !old(None, utc_noon + grace * 10),
            "unknown age is never old"
        );
        // Our clock is behind the RDS's: the RDS says old, we say fresh.
        assert!(!old(Some("2026-12-06 11:50:00"), utc_noon - grace));
        // The RDS's clock is behind ours: we say old, the RDS says fresh.
        assert!(!old(Some("2026-12-06 12:00:00"), utc_noon + grace));
    }

    fn orphan(kind: OrphanKind, slot: Option<&str>, path: &str) -> Orphan {
        Orphan {
            kind,
            path: Some(path.to_string()),
            slot: slot.map(str::to_string),
            size_bytes: None,
            last_modified: None,
        }
    }

    #[test]
    fn references_and_attachments_keep_an_orphan_and_snapshot_files_are_always_kept() {
        let bases = [RdsPath::new("/pool/csi").unwrap()];
        let file = orphan(OrphanKind::FileWithoutDisk, None, "/pool/csi/pvc-1.img");
        let disk = orphan(
            OrphanKind::DiskWithoutPv,
            Some("pvc-2"),
            "/pool/csi/pvc-2.img",
        );
        let none = References::default();
        assert_eq!(keep_reason(&bases, &file, &[&none]), None);
        assert_eq!(keep_reason(&bases, &disk, &[&none]), None);
        for (orphan, id) in [(&file, "pvc-1"), (&disk, "pvc-2")] {
            let by_pv = References {
                volumes: [id.to_string()].into(),
                ..References::default()
            };
            let by_snapshot = References {
                snapshots: [id.to_string()].into(),
                ..References::default()
            };
            let attached = References {
                attached: [id.to_string()].into(),
                ..References::default()
            };
            assert_eq!(
                keep_reason(&bases, orphan, &[&none, &by_pv]),
                Some("the cluster references it"),
                "any reading protects"
            );
            assert_eq!(
                keep_reason(&bases, orphan, &[&by_snapshot]),
                Some("the cluster references it")
            );
            assert_eq!(
                keep_reason(&bases, orphan, &[&attached]),
                Some("a node has it attached")
            );
        }
        let snapshot_file = orphan(
            OrphanKind::FileWithoutDisk,
            None,
            "/pool/csi/snap-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b-at-1739800000.from-pvc-1.img",
        );
        assert!(keep_reason(&bases, &snapshot_file, &[&none])
            .unwrap()
            .starts_with("a snapshot file is never deleted"));
    }
}
