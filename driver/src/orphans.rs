//! Finds what the driver left on the RDS without a counterpart: backing files of the managed
//! grammar with no disk, and managed disks whose file is gone. Files of every disk on the RDS
//! count as in use (snapshots, other tools' disks), files younger than a grace period are left
//! alone, and only `<dir>/<id>.img` names at or below the base path are ever considered.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

use crate::controller::ids::{classify_disk, classify_managed_file};
use crate::rds::{RdsClient, RdsError, RdsPath};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrphanKind {
    /// A managed `.img` file that no disk uses (a delete that removed the disk but not the file).
    FileWithoutDisk,
    /// A managed disk whose backing file is missing.
    DiskWithoutFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub kind: OrphanKind,
    pub path: Option<String>,
    pub slot: Option<String>,
    pub size_bytes: Option<u64>,
    pub last_modified: Option<String>,
}

/// Parses RouterOS's `2025-11-11 16:47:07` (read as UTC: RouterOS prints no zone).
pub fn routeros_time(text: &str) -> Option<SystemTime> {
    let ts = crate::controller::timestamp(text)?;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(ts.seconds).ok()?))
}

pub async fn scan(
    rds: &RdsClient,
    base: &RdsPath,
    grace: Duration,
    deadline: Instant,
) -> Result<Vec<Orphan>, RdsError> {
    let disks = rds.list_disks(deadline).await?;
    let files = rds.list_files(base, deadline).await?;
    let used: HashSet<&str> = disks
        .iter()
        .filter_map(|d| d.file_path.as_deref())
        .collect();
    let present: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let now = SystemTime::now();
    let mut orphans = Vec::new();
    for file in files.iter().filter(|f| !f.is_directory()) {
        if used.contains(file.path.as_str()) || classify_managed_file(base, &file.path).is_none() {
            continue;
        }
        // A file of unknown age may be a create in progress: leave it.
        let old_enough = file
            .last_modified
            .as_deref()
            .and_then(routeros_time)
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= grace);
        if old_enough {
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
        if classify_disk(base, disk).is_none() {
            continue;
        }
        let path = disk.file_path.as_deref().unwrap_or_default();
        if !present.contains(path) {
            orphans.push(Orphan {
                kind: OrphanKind::DiskWithoutFile,
                path: Some(path.to_string()),
                slot: Some(disk.slot.clone()),
                size_bytes: disk.size_bytes,
                last_modified: None,
            });
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
    }
}
