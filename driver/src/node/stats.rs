//! NodeGetVolumeStats and NodeExpandVolume: the volume is looked for at its path (the mount
//! there and the device behind it), never taken from memory.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::volume_usage::Unit;
use csi_proto::v1::{
    NodeExpandVolumeRequest, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    VolumeCondition, VolumeUsage,
};
use tokio::time::Instant;

use super::context::validate_volume_id;
use super::crypt;
use super::error::{NodeError, Result};
use super::mounts::{self, device_numbers, device_size, MountInfo};
use super::{exec, NodeService};

/// How long one look at the volume (a stat, a statfs) may take: a file system whose device
/// stopped answering can hold such a call indefinitely, and kubelet polls stats.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a blocking look at the file system on a thread of its own, bounded by `LOOK_TIMEOUT`;
/// Err(message) when it did not return (its thread is left to finish on its own).
async fn bounded<T: Send + 'static>(
    what: String,
    look: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(LOOK_TIMEOUT, tokio::task::spawn_blocking(look)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Err(_) => Err(format!(
            "{what} did not return within {}s: the device is not answering",
            LOOK_TIMEOUT.as_secs()
        )),
    }
}

impl NodeService {
    pub(super) async fn stats(
        &self,
        req: NodeGetVolumeStatsRequest,
    ) -> Result<NodeGetVolumeStatsResponse> {
        let i = &self.inner;
        validate_volume_id(&req.volume_id)?;
        let path = self.volume_path(&req.volume_id, &req.volume_path)?;
        // No volume guard: stats are read-only and kubelet polls them while other calls run.
        let record = i.state.load(&req.volume_id)?;
        let unhealthy = |message: String| NodeGetVolumeStatsResponse {
            usage: Vec::new(),
            volume_condition: Some(abnormal(message)),
        };
        let stat_path = path.clone();
        let meta = match bounded(format!("stat of {}", path.display()), move || {
            std::fs::metadata(stat_path)
        })
        .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeError::NotFound(format!(
                    "volume_path {} does not exist",
                    path.display()
                )))
            }
            Ok(Err(e)) => return Ok(unhealthy(format!("{} cannot be read: {e}", path.display()))),
            Err(message) => return Ok(unhealthy(message)),
        };
        let Some(m) = i.mounter.mount_at(&path)? else {
            // The volume's staging mount went missing underneath it. Anywhere else the volume
            // may simply never have been (NotFound, as csi-sanity checks): no record says where
            // it was published.
            let staged_here = record.as_ref().is_some_and(|r| r.staging_path == path);
            if staged_here {
                return Ok(unhealthy(format!(
                    "nothing is mounted at {}: the volume's mount is gone",
                    path.display()
                )));
            }
            return Err(NodeError::NotFound(format!(
                "volume_path {} is not a mount point",
                path.display()
            )));
        };
        let (numbers, usage, mut problem) = if meta.file_type().is_block_device() {
            let numbers = (
                nix::sys::stat::major(meta.rdev()) as u32,
                nix::sys::stat::minor(meta.rdev()) as u32,
            );
            match device_size(&i.cfg.sys_root, numbers.0, numbers.1)? {
                Some(size) => (
                    numbers,
                    vec![VolumeUsage {
                        total: size as i64,
                        unit: Unit::Bytes as i32,
                        ..Default::default()
                    }],
                    None,
                ),
                None => (
                    numbers,
                    Vec::new(),
                    Some("the block device is gone".to_string()),
                ),
            }
        } else {
            let numbers = (m.major, m.minor);
            let statfs_path = path.clone();
            match bounded(format!("statfs of {}", path.display()), move || {
                nix::sys::statvfs::statvfs(&statfs_path)
            })
            .await
            {
                Ok(Ok(s)) => {
                    let frsize = s.fragment_size();
                    let blocks = s.blocks();
                    let bfree = s.blocks_free();
                    let bavail = s.blocks_available();
                    let files = s.files();
                    let ffree = s.files_free();
                    let usage = vec![
                        VolumeUsage {
                            total: (blocks * frsize) as i64,
                            available: (bavail * frsize) as i64,
                            used: (blocks.saturating_sub(bfree) * frsize) as i64,
                            unit: Unit::Bytes as i32,
                        },
                        VolumeUsage {
                            total: files as i64,
                            available: ffree as i64,
                            used: files.saturating_sub(ffree) as i64,
                            unit: Unit::Inodes as i32,
                        },
                    ];
                    let problem = if device_size(&i.cfg.sys_root, m.major, m.minor)?.is_none() {
                        Some("the block device behind the mount is gone".to_string())
                    } else {
                        read_only_problem(&m, record.as_ref().map(|r| r.read_only))
                    };
                    (numbers, usage, problem)
                }
                Ok(Err(e)) => (numbers, Vec::new(), Some(format!("statfs failed: {e}"))),
                Err(message) => (numbers, Vec::new(), Some(message)),
            }
        };
        if problem.is_none() {
            if let Some(rec) = &record {
                problem = match self
                    .data_device(&rec.volume_id, &rec.target, rec.encrypted)
                    .await?
                {
                    None => Some(format!("volume {} is no longer attached", req.volume_id)),
                    Some(d) => match device_numbers(&d) {
                        Ok(n) if n == numbers => {
                            i.connector.attachment_problem(&rec.target).await?
                        }
                        _ => Some(format!(
                            "stale mount: volume {} is now {}, the mount uses {}:{}",
                            req.volume_id,
                            d.display(),
                            numbers.0,
                            numbers.1
                        )),
                    },
                };
            }
        }
        Ok(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(match problem {
                Some(msg) => abnormal(msg),
                None => VolumeCondition {
                    abnormal: false,
                    message: "healthy".into(),
                },
            }),
        })
    }

    pub(super) async fn expand(&self, req: NodeExpandVolumeRequest) -> Result<i64> {
        let i = &self.inner;
        validate_volume_id(&req.volume_id)?;
        let path = self.volume_path(&req.volume_id, &req.volume_path)?;
        let _guard = i.locks.try_lock(&req.volume_id)?;
        let deadline = self.deadline();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeError::NotFound(format!(
                    "volume_path {} does not exist",
                    path.display()
                )))
            }
            Err(e) => return Err(NodeError::io(path.display(), e)),
        };
        let m = i.mounter.mount_at(&path)?.ok_or_else(|| {
            NodeError::NotFound(format!(
                "volume_path {} is not a mount point",
                path.display()
            ))
        })?;
        let is_block = meta.file_type().is_block_device()
            || matches!(
                req.volume_capability
                    .as_ref()
                    .and_then(|c| c.access_type.as_ref()),
                Some(AccessType::Block(_))
            );
        let numbers = if meta.file_type().is_block_device() {
            (
                nix::sys::stat::major(meta.rdev()) as u32,
                nix::sys::stat::minor(meta.rdev()) as u32,
            )
        } else {
            (m.major, m.minor)
        };
        // An encrypted volume is mounted (or published) from its mapping; the attached device
        // under it is what grows first.
        let mapping =
            crypt::mapping_of(&i.cfg.sys_root, &req.volume_id)?.filter(|m| m.numbers == numbers);
        let attached = self.attached_numbers(&req.volume_id, numbers)?;
        let target = match i.state.load(&req.volume_id)? {
            Some(r) => r.target,
            None => self
                .target_for_device(&req.volume_id, numbers)
                .await?
                .ok_or_else(|| {
                    NodeError::NotFound(format!(
                        "volume {} is not staged on this node",
                        req.volume_id
                    ))
                })?,
        };
        let device = i.connector.find_device(&target).await?.ok_or_else(|| {
            NodeError::FailedPrecondition(format!("volume {} is not attached", req.volume_id))
        })?;
        if device_numbers(&device)? != attached {
            return Err(NodeError::FailedPrecondition(format!(
                "{} is a stale mount: volume {} is now {}",
                path.display(),
                req.volume_id,
                device.display()
            )));
        }
        i.connector.rescan(&target, &device, deadline).await?;
        let required = req
            .capacity_range
            .as_ref()
            .map_or(0, |c| c.required_bytes.max(0) as u64);
        // The kernel may publish the new size a little after the rescan.
        let wait_until = deadline.min(Instant::now() + Duration::from_secs(30));
        let size = exec::poll_until(wait_until, Duration::from_millis(100), || {
            Ok(device_size(&i.cfg.sys_root, attached.0, attached.1)?.filter(|s| *s >= required))
        })
        .await?
        .ok_or_else(|| {
            NodeError::FailedPrecondition(format!(
                "{} did not grow to the required {required} bytes; was the volume expanded on the RDS?",
                device.display()
            ))
        })?;
        let data_device = match &mapping {
            Some(m) => {
                i.cryptsetup.resize(m, deadline).await?;
                m.device.clone()
            }
            None => device,
        };
        if !is_block {
            mounts::grow(&m.fs_type, &data_device, &path, deadline).await?;
        }
        tracing::info!(volume_id = %req.volume_id, bytes = size, "expanded");
        Ok(size as i64)
    }
}

/// A file system that is read-only although the volume was staged writable: the kernel turned
/// it so after I/O errors, or someone remounted it. Without a record (staged by the Go driver),
/// a read-only file system under a writable mount point tells the same.
fn read_only_problem(m: &MountInfo, staged_read_only: Option<bool>) -> Option<String> {
    let expected = staged_read_only.unwrap_or_else(|| m.is_read_only());
    (m.file_system_read_only() && !expected).then(|| {
        format!(
            "the file system on {} is read-only although the volume was staged writable (remounted \
             read-only after I/O errors?): writes fail; check the node's kernel log",
            m.source
        )
    })
}

fn abnormal(message: String) -> VolumeCondition {
    VolumeCondition {
        abnormal: true,
        message,
    }
}
