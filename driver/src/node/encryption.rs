//! The node service's side of encrypted volumes: unlocking the attached device at stage, the
//! device a volume's data is read through, and locking it again at unstage. The cryptsetup
//! calls and the sysfs view of mappings are in `crypt`.

use std::path::{Path, PathBuf};

use tokio::time::Instant;

use super::context::VolumeTarget;
use super::crypt::{self, Mapping, Passphrase};
use super::error::{NodeError, Result};
use super::mounts::{self, device_numbers, Probe};
use super::NodeService;

/// blkid's name for a LUKS header.
const LUKS_TYPE: &str = "crypto_LUKS";

/// The opened mapping of a stage.
pub(super) struct Unlocked {
    pub device: PathBuf,
    /// This call opened it (so a failed stage closes it again).
    pub opened_now: bool,
}

impl NodeService {
    /// Opens the volume's mapping over its attached `device`, first writing a LUKS2 header when
    /// the device is blank (never on a read-only stage). A device holding anything but a LUKS
    /// header is refused: an encrypted volume never formats over data.
    pub(super) async fn unlock(
        &self,
        volume_id: &str,
        device: &Path,
        passphrase: &Passphrase,
        read_only: bool,
        deadline: Instant,
    ) -> Result<Unlocked> {
        let i = &self.inner;
        let attached = device_numbers(device)?;
        if let Some(m) = crypt::mapping_of(&i.cfg.sys_root, volume_id)? {
            if m.backing == [attached] {
                return Ok(Unlocked {
                    device: m.device,
                    opened_now: false,
                });
            }
            return Err(NodeError::FailedPrecondition(format!(
                "mapping {} of volume {volume_id} is open over another device ({:?}), not {}; \
                 close it (cryptsetup close {}) once nothing uses it",
                m.name,
                m.backing,
                device.display(),
                m.name
            )));
        }
        // A new volume is made ready in steps (header, open, zeros on the mapping), and any of
        // them may be cut short: the header's label says the zeros are still owed, so a retry
        // (on this node or another) finishes the job instead of finding noise.
        let unready = match mounts::probe(device, deadline).await? {
            Probe::Filesystem(t) if t == LUKS_TYPE => {
                crypt::header_label(device, deadline).await?.as_deref()
                    == Some(crypt::UNREADY_LABEL)
            }
            Probe::Empty if read_only => {
                return Err(NodeError::FailedPrecondition(format!(
                    "{} is blank and the volume is published read-only, so no LUKS2 header is \
                     written; publish it read-write once to create it",
                    device.display()
                )))
            }
            Probe::Empty => {
                tracing::info!(volume_id, device = %device.display(), "writing a LUKS2 header on a blank device");
                i.cryptsetup.format(device, passphrase, deadline).await?;
                true
            }
            Probe::Filesystem(t) => {
                return Err(NodeError::FailedPrecondition(format!(
                    "{} holds an unencrypted {t} file system, and volume {volume_id} is \
                     encrypted; refusing to encrypt over data",
                    device.display()
                )))
            }
            Probe::Other(what) => {
                return Err(NodeError::FailedPrecondition(format!(
                    "{} holds {what}, not a LUKS2 header; refusing to encrypt over it",
                    device.display()
                )))
            }
        };
        if unready && read_only {
            return Err(NodeError::FailedPrecondition(format!(
                "volume {volume_id} was never made ready (its LUKS2 header is labelled {}) and \
                 is published read-only; publish it read-write once to finish it",
                crypt::UNREADY_LABEL
            )));
        }
        let opened = async {
            i.cryptsetup
                .open(device, volume_id, passphrase, read_only, deadline)
                .await?;
            let mapping = crypt::mapping_of(&i.cfg.sys_root, volume_id)?.ok_or_else(|| {
                NodeError::Internal(format!(
                    "cryptsetup opened {} but sysfs shows no mapping {}",
                    device.display(),
                    crypt::mapping_name(volume_id)
                ))
            })?;
            if unready {
                // A new header's mapping reads as the decryption of zeros, which is noise:
                // zeroed where signatures sit, it is blank, and formatting follows the rule of
                // every volume. Only then is the label taken off.
                mounts::zero_where_signatures_sit(&mapping.device, deadline).await?;
                i.cryptsetup.clear_label(device, deadline).await?;
            }
            Ok::<_, NodeError>(mapping)
        }
        .await;
        let mapping = match opened {
            Ok(m) => m,
            Err(e) => {
                // No mapping of this volume was open before this call: whatever is open now
                // (an open cut short by the deadline included) is this call's to close.
                if let Ok(Some(m)) = crypt::mapping_of(&i.cfg.sys_root, volume_id) {
                    if let Err(close) = i.cryptsetup.close(&m, super::cleanup_deadline()).await {
                        tracing::warn!(volume_id, error = %close,
                            "failed stage: could not close the mapping it opened");
                    }
                }
                return Err(e);
            }
        };
        Ok(Unlocked {
            device: mapping.device,
            opened_now: true,
        })
    }

    /// Closes the volume's mapping, if one is open, unless something still uses it. Returns
    /// what it closed.
    pub(super) async fn lock(&self, volume_id: &str, deadline: Instant) -> Result<Option<Mapping>> {
        let Some(mapping) = crypt::mapping_of(&self.inner.cfg.sys_root, volume_id)? else {
            return Ok(None);
        };
        let users = self.mounts_of_device(&mapping.device)?;
        if !users.is_empty() {
            let at: Vec<String> = users.iter().map(|m| m.display().to_string()).collect();
            return Err(NodeError::FailedPrecondition(format!(
                "{} ({}) is still mounted at {}; not closing volume {volume_id}",
                mapping.name,
                mapping.device.display(),
                at.join(", ")
            )));
        }
        self.inner.cryptsetup.close(&mapping, deadline).await?;
        tracing::info!(volume_id, mapping = %mapping.name, "closed the encrypted mapping");
        Ok(Some(mapping))
    }

    /// The device a volume's data is read through: its open mapping, else the attached device.
    /// An encrypted volume whose mapping is not open has none: its attached device holds
    /// ciphertext, which no pod is given.
    pub(super) async fn data_device(
        &self,
        volume_id: &str,
        target: &VolumeTarget,
        encrypted: bool,
    ) -> Result<Option<PathBuf>> {
        if let Some(m) = crypt::mapping_of(&self.inner.cfg.sys_root, volume_id)? {
            return Ok(Some(m.device));
        }
        if encrypted {
            return Ok(None);
        }
        self.inner.connector.find_device(target).await
    }

    /// The attached device under the data device `numbers`: the mapping's backing device when
    /// `numbers` are the volume's mapping, else `numbers` themselves.
    pub(super) fn attached_numbers(
        &self,
        volume_id: &str,
        numbers: (u32, u32),
    ) -> Result<(u32, u32)> {
        Ok(
            match crypt::mapping_of(&self.inner.cfg.sys_root, volume_id)? {
                Some(m) if m.numbers == numbers => m.backing.first().copied().unwrap_or(numbers),
                _ => numbers,
            },
        )
    }

    /// The volume's target from the device mounted for it (the record is lost).
    pub(super) async fn target_for_device(
        &self,
        volume_id: &str,
        numbers: (u32, u32),
    ) -> Result<Option<VolumeTarget>> {
        let (major, minor) = self.attached_numbers(volume_id, numbers)?;
        self.inner.connector.target_for_device(major, minor).await
    }
}
