//! The start-up scan: what a restarted node plugin finds of the volumes it staged, read from
//! the host (records, mounts, attachments, open mappings), never from memory.

use super::context::VolumeTarget;
use super::crypt;
use super::error::Result;
use super::mounts::device_numbers;
use super::state::AccessKind;
use super::NodeService;

/// What the start-up scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Volumes whose record, attachment and mount agree.
    pub healthy: Vec<String>,
    /// Staged volumes with a problem (stale mount, device gone, not mounted), described.
    pub problems: Vec<String>,
    /// Records removed because neither their attachment nor their mount exists any more.
    pub removed_records: Vec<String>,
    /// Attached managed volumes that no record mentions. Reported only: we cannot know who
    /// uses them, and disconnecting a device in use corrupts data.
    pub orphans: Vec<String>,
}

impl NodeService {
    /// The start-up scan: compare the records with the mounts and attachments, remove records
    /// of volumes that are entirely gone, and report the rest.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let i = &self.inner;
        let mut report = RecoveryReport::default();
        let records = i.state.list()?;
        for rec in &records {
            let id = &rec.volume_id;
            let attached = i.connector.find_device(&rec.target).await.unwrap_or(None);
            // An encrypted volume's data is its mapping's, whatever is attached under it.
            let dev = match rec.encrypted {
                true => crypt::mapping_of(&i.cfg.sys_root, id)?.map(|m| m.device),
                false => attached.clone(),
            };
            let mount = i.mounter.mount_at(&rec.staging_path)?;
            match (rec.access, mount, dev) {
                (AccessKind::Mount, Some(m), Some(d)) => {
                    if device_numbers(&d).ok() == Some((m.major, m.minor)) {
                        report.healthy.push(id.clone());
                    } else {
                        report.problems.push(format!(
                            "{id}: stale mount at {} ({}:{}); the volume is now {}",
                            rec.staging_path.display(),
                            m.major,
                            m.minor,
                            d.display()
                        ));
                    }
                }
                (AccessKind::Mount, Some(m), None) => report.problems.push(format!(
                    "{id}: mounted at {} but the device is gone ({})",
                    rec.staging_path.display(),
                    m.source
                )),
                (AccessKind::Mount, None, Some(d)) => report.problems.push(format!(
                    "{id}: attached as {} but not mounted at {}",
                    d.display(),
                    rec.staging_path.display()
                )),
                (AccessKind::Block, _, Some(_)) => report.healthy.push(id.clone()),
                (_, None, None) | (AccessKind::Block, Some(_), None) if attached.is_some() => {
                    report.problems.push(format!(
                        "{id}: attached as {} but its encrypted mapping {} is not open",
                        attached
                            .as_ref()
                            .map_or(String::new(), |d| d.display().to_string()),
                        crypt::mapping_name(id)
                    ))
                }
                (_, None, None) | (AccessKind::Block, Some(_), None) => {
                    i.state.remove(id)?;
                    report.removed_records.push(id.clone());
                }
            }
        }
        let known = |t: &VolumeTarget| {
            records.iter().any(|r| {
                (t.nqn.is_some() && r.target.nqn == t.nqn)
                    || (t.file_path.is_some() && r.target.file_path == t.file_path)
            })
        };
        for a in i.connector.attached().await? {
            if !known(&a.target) {
                report.orphans.push(format!(
                    "{} ({})",
                    a.target
                        .nqn
                        .clone()
                        .or(a.target.file_path.clone())
                        .unwrap_or_default(),
                    a.device
                        .as_ref()
                        .map_or("no device".into(), |d| d.display().to_string())
                ));
            }
        }
        // Open mappings of this driver's volumes that no record mentions, reported like the
        // attachments: whoever opened one may be using it.
        for m in crypt::mappings(&i.cfg.sys_root)? {
            if !records.iter().any(|r| r.volume_id == m.volume_id) {
                report.orphans.push(format!(
                    "{} (encrypted mapping {})",
                    m.name,
                    m.device.display()
                ));
            }
        }
        for p in &report.problems {
            tracing::warn!(problem = %p, "node recovery");
        }
        for o in &report.orphans {
            tracing::warn!(attachment = %o, "attached volume with no record on this node (left alone)");
        }
        tracing::info!(
            healthy = report.healthy.len(),
            problems = report.problems.len(),
            removed_records = report.removed_records.len(),
            orphans = report.orphans.len(),
            "node recovery scan done"
        );
        Ok(report)
    }
}
