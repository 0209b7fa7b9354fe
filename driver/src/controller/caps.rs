//! Volume capability checks, shared by CreateVolume, ValidateVolumeCapabilities and
//! ControllerPublishVolume.

use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::AccessType;
use csi_proto::v1::VolumeCapability;

use super::params::parse_fs_type;

/// Why a capability cannot be served, or Ok. `field` names the request field for messages.
pub fn check_capabilities(caps: &[VolumeCapability], field: &str) -> Result<(), String> {
    if caps.is_empty() {
        return Err(format!("{field} is required"));
    }
    for (i, cap) in caps.iter().enumerate() {
        check_capability(cap).map_err(|e| format!("{field}[{i}]: {e}"))?;
    }
    Ok(())
}

pub fn check_capability(cap: &VolumeCapability) -> Result<(), String> {
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .ok_or("access_mode is required")?;
    let block = match &cap.access_type {
        Some(AccessType::Block(_)) => true,
        Some(AccessType::Mount(mount)) => {
            parse_fs_type(&mount.fs_type).map_err(|e| format!("mount.fs_type: {e}"))?;
            false
        }
        None => return Err("access_type (block or mount) is required".into()),
    };
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter
        | Mode::MultiNodeReaderOnly => Ok(()),
        Mode::MultiNodeMultiWriter if block => Ok(()),
        Mode::MultiNodeMultiWriter => Err(
            "MULTI_NODE_MULTI_WRITER (RWX) is supported for block volumes only (for KubeVirt live \
             migration); a filesystem cannot be mounted on two nodes at once. Use volumeMode: Block"
                .into(),
        ),
        Mode::MultiNodeSingleWriter => Err(format!(
            "access mode {} is not supported",
            mode.as_str_name()
        )),
        Mode::Unknown => Err("access_mode.mode is unknown".into()),
    }
}

pub fn is_block(cap: &VolumeCapability) -> bool {
    matches!(cap.access_type, Some(AccessType::Block(_)))
}

fn mode_of(cap: &VolumeCapability) -> Option<Mode> {
    cap.access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
}

pub fn is_multi_node(cap: &VolumeCapability) -> bool {
    mode_of(cap) == Some(Mode::MultiNodeMultiWriter)
}

/// MULTI_NODE_READER_ONLY (ReadOnlyMany): shared by any number of read-only nodes.
pub fn is_multi_node_reader(cap: &VolumeCapability) -> bool {
    mode_of(cap) == Some(Mode::MultiNodeReaderOnly)
}

/// A reader-only mode: the volume is published read-only whatever `readonly` says.
pub fn is_reader_only(cap: &VolumeCapability) -> bool {
    matches!(
        mode_of(cap),
        Some(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(mode: Mode, block: bool, fs: &str) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: fs.into(),
                    ..Default::default()
                })
            }),
        }
    }

    #[test]
    fn rwx_only_for_block() {
        assert!(check_capability(&cap(Mode::MultiNodeMultiWriter, true, "")).is_ok());
        let err = check_capability(&cap(Mode::MultiNodeMultiWriter, false, "")).unwrap_err();
        assert!(err.contains("Block"), "{err}");
        assert!(check_capability(&cap(Mode::SingleNodeWriter, false, "xfs")).is_ok());
        assert!(check_capability(&cap(Mode::SingleNodeWriter, false, "ntfs")).is_err());
        assert!(check_capability(&cap(Mode::MultiNodeReaderOnly, true, "")).is_ok());
        assert!(check_capability(&cap(Mode::MultiNodeReaderOnly, false, "ext4")).is_ok());
        assert!(check_capability(&cap(Mode::MultiNodeSingleWriter, true, "")).is_err());
        assert!(check_capabilities(&[], "volume_capabilities").is_err());
        let mut no_type = cap(Mode::SingleNodeWriter, true, "");
        no_type.access_type = None;
        assert!(check_capability(&no_type).is_err());
    }
}
