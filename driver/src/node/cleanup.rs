//! Undoing a failed NodeStage, and the check that no one uses a device before it is detached.
//! A failed stage undoes only what it attached itself: an attachment it found (an NVMe
//! controller connected before, whose namespace was merely not ready) may be in use, and
//! disconnecting it would pull a device from under its consumer.

use std::path::{Path, PathBuf};

use super::connector::Attachment;
use super::context::VolumeTarget;
use super::error::Result;
use super::mounts::device_numbers;
use super::{cleanup_deadline, NodeService};

impl NodeService {
    /// Where `device` is mounted (a filesystem on it, or its node bind-mounted for a block
    /// volume); empty when nothing uses it.
    pub(super) fn mounts_of_device(&self, device: &Path) -> Result<Vec<PathBuf>> {
        let (major, minor) = device_numbers(device)?;
        let name = device.file_name().unwrap_or_default().to_string_lossy();
        Ok(self
            .inner
            .mounter
            .users_of_device(major, minor, &name)?
            .into_iter()
            .map(|m| m.mount_point)
            .collect())
    }

    /// After a failed stage of `volume_id`: closes the mapping this call opened and detaches
    /// what it attached, when nothing uses them, and drops the volume's record when nothing of
    /// it stays attached.
    pub(super) async fn undo_failed_stage(
        &self,
        volume_id: &str,
        target: &VolumeTarget,
        attachment: Option<&Attachment>,
        unlocked_now: bool,
    ) -> Result<()> {
        let i = &self.inner;
        if unlocked_now {
            if let Err(e) = self.lock(volume_id, cleanup_deadline()).await {
                tracing::warn!(volume_id, error = %e, "failed stage: could not close its mapping");
                return Ok(());
            }
        }
        let Some(attachment) = attachment else {
            // The attach failed; the connector undid what it had made itself.
            if i.connector.find_device(target).await?.is_none() {
                i.state.remove(volume_id)?;
            }
            return Ok(());
        };
        if !attachment.made_now {
            tracing::info!(volume_id, device = %attachment.device.display(),
                "failed stage: keeping the attachment it found");
            return Ok(());
        }
        let users = self.mounts_of_device(&attachment.device)?;
        let holders = super::crypt::holders(&i.cfg.sys_root, device_numbers(&attachment.device)?);
        if !users.is_empty() || !holders.is_empty() {
            tracing::warn!(volume_id, device = %attachment.device.display(), users = ?users,
                holders = ?holders, "failed stage: its device is in use; not detaching");
            return Ok(());
        }
        // Through `detach`: it also clears a read-only flag this stage may have set.
        match self.detach(target, cleanup_deadline()).await {
            Ok(()) => i.state.remove(volume_id)?,
            Err(e) => {
                tracing::warn!(volume_id, error = %e, "could not detach after a failed stage")
            }
        }
        Ok(())
    }
}
