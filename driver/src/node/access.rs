//! What a volume capability asks of the node: a filesystem or a raw block device, and the rules
//! of its access mode. Reader-only modes are read-only on the node whatever a call says; a
//! single-writer volume (SINGLE_NODE_SINGLE_WRITER, Kubernetes' ReadWriteOncePod) is published
//! at one target path at a time.

use std::path::Path;

use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::VolumeCapability;

use super::context::{validate_mount_flags, FsType};
use super::error::{NodeError, Result};
use super::mounts::{MountInfo, Mounter};

pub(super) enum Access {
    Mount {
        fs_type: Option<FsType>,
        flags: Vec<String>,
    },
    Block,
}

/// A checked volume capability.
pub(super) struct Requested {
    pub access: Access,
    pub mode: Mode,
}

impl Requested {
    /// SINGLE_NODE_READER_ONLY and MULTI_NODE_READER_ONLY: nothing may write, not even a journal
    /// replay on a device other nodes read.
    pub fn is_reader_only(&self) -> bool {
        matches!(
            self.mode,
            Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
        )
    }

    pub fn is_single_writer(&self) -> bool {
        self.mode == Mode::SingleNodeSingleWriter
    }
}

pub(super) fn requested(cap: Option<&VolumeCapability>) -> Result<Requested> {
    let cap =
        cap.ok_or_else(|| NodeError::InvalidArgument("volume_capability is required".into()))?;
    let raw_mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| {
            NodeError::InvalidArgument("volume_capability.access_mode is required".into())
        })?
        .mode;
    let mode = Mode::try_from(raw_mode)
        .ok()
        .filter(|m| *m != Mode::Unknown)
        .ok_or_else(|| {
            NodeError::InvalidArgument(format!(
                "volume_capability.access_mode.mode {raw_mode} is not a known access mode"
            ))
        })?;
    let access = match &cap.access_type {
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(m)) => {
            validate_mount_flags(&m.mount_flags)?;
            let fs_type = if m.fs_type.is_empty() {
                None
            } else {
                Some(FsType::parse(&m.fs_type).ok_or_else(|| {
                    NodeError::InvalidArgument(format!(
                        "volume_capability.mount.fs_type `{}` must be one of ext4, ext3, xfs",
                        m.fs_type
                    ))
                })?)
            };
            Access::Mount {
                fs_type,
                flags: m.mount_flags.clone(),
            }
        }
        None => {
            return Err(NodeError::InvalidArgument(
                "volume_capability.access_type is required".into(),
            ))
        }
    };
    Ok(Requested { access, mode })
}

/// Refuses to publish a single-writer volume at `target` while `others` (the volume's mounts
/// other than its staging path) include a publish elsewhere.
pub(super) fn check_single_writer(
    volume_id: &str,
    target: &Path,
    others: &[MountInfo],
) -> Result<()> {
    let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let elsewhere: Vec<String> = others
        .iter()
        .filter(|m| m.mount_point != target)
        .map(|m| m.mount_point.display().to_string())
        .collect();
    if elsewhere.is_empty() {
        return Ok(());
    }
    Err(NodeError::FailedPrecondition(format!(
        "volume {volume_id} is SINGLE_NODE_SINGLE_WRITER and already published at {}; \
         unpublish it there first",
        elsewhere.join(", ")
    )))
}

/// The mounts of a filesystem volume staged at `staging`, other than the staging mount itself.
pub(super) fn publishes_of_staged(
    mounter: &Mounter,
    staging: &MountInfo,
) -> Result<Vec<MountInfo>> {
    Ok(mounter
        .mounts()?
        .into_iter()
        .filter(|m| {
            (m.major, m.minor, &m.root) == (staging.major, staging.minor, &staging.root)
                && m.mount_point != staging.mount_point
        })
        .collect())
}
