//! Making a volume's or snapshot's disk so that it is exactly what was asked, whatever RouterOS
//! does: the disk is read back and checked, a copy counts only once its file is whole, a copy
//! that kept its source's size is grown, and whatever a failed attempt made is removed again.

use tokio::time::Instant;
use tonic::Status;

use super::ControllerService;
use crate::grpc::rds_status;
use crate::rds::command::{AllocSize, DiskAdd, Nqn, NvmeExport, Port, RdsPath, Slot};
use crate::rds::script::Created;
use crate::rds::{disk_mismatch, CopyState, Disk, RdsError};

/// The export settings a disk shows, if it is exported.
pub(super) fn export_of(disk: &Disk) -> Option<NvmeExport> {
    if !disk.nvme_export {
        return None;
    }
    Some(NvmeExport {
        port: Port::new(disk.nvme_port?.into()).ok()?,
        nqn: Nqn::new(disk.nqn.clone()?).ok()?,
    })
}

impl ControllerService {
    /// Creates the disk of `add` (the caller holds its lock and has seen neither the slot nor the
    /// file in use) and returns it as RouterOS shows it once complete.
    pub(super) async fn make_disk(
        &self,
        add: &DiskAdd,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let made = match self.rds.create_disk(add, deadline).await {
            Ok(disk) => disk,
            Err(e) => {
                // An answer the driver could not read may still have made the disk.
                if matches!(
                    e,
                    RdsError::Failed { .. } | RdsError::InvalidArgument(_) | RdsError::Parse(_)
                ) {
                    self.discard_made(add, deadline).await;
                }
                return Err(e);
            }
        };
        match self.complete_disk(add, made, deadline).await {
            Ok(disk) => Ok(disk),
            // A copy still running when time ran out is left for the CO's retry to wait for.
            Err(e @ RdsError::Transport(_)) => Err(e),
            Err(e) => {
                self.discard_made(add, deadline).await;
                Err(e)
            }
        }
    }

    /// Creates the disk of `add` (not a copy; the caller holds its lock) in one exec when this
    /// RDS runs scripts: the script adds it only if no file is at its path, and reads it back.
    /// None when the sequence must decide instead: no scripting, a file already there (a
    /// retry, or a leftover), a lost reply, or a refusal the sequence knows how to handle
    /// (a directory to create). Output the driver cannot read is a failure, and whatever the
    /// script may have made is removed.
    pub(super) async fn make_disk_scripted(
        &self,
        add: &DiskAdd,
        deadline: Instant,
    ) -> Result<Option<Disk>, RdsError> {
        if !self.rds.scripting(deadline).await? {
            return Ok(None);
        }
        let made = match self.rds.create_scripted(add, deadline).await {
            Ok(Created::Made(Some(disk))) => disk,
            Ok(Created::Made(None)) => {
                self.discard_made(add, deadline).await;
                return Err(RdsError::Failed {
                    exit_status: Some(0),
                    text: format!(
                        "disk {} is not there after `/disk add` reported success",
                        add.slot
                    ),
                });
            }
            Err(e @ (RdsError::Parse(_) | RdsError::OutOfSpace(_))) => {
                self.discard_made(add, deadline).await;
                return Err(e);
            }
            Ok(Created::FileExists(_)) | Err(_) => return Ok(None),
        };
        match self.complete_disk(add, made, deadline).await {
            Ok(disk) => Ok(Some(disk)),
            Err(e) => {
                self.discard_made(add, deadline).await;
                Err(e)
            }
        }
    }

    async fn complete_disk(
        &self,
        add: &DiskAdd,
        disk: Disk,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let disk = match &add.copy_from {
            Some(_) => self.whole_copy(&add.slot, deadline).await?,
            None => disk,
        };
        if let Some(problem) = disk_mismatch(add, &disk) {
            return Err(RdsError::Failed {
                exit_status: Some(0),
                text: format!("the RDS made disk {} differently: {problem}", add.slot),
            });
        }
        match add.size {
            Some(want) if disk.size_bytes.unwrap_or_default() < want.bytes() => {
                // The copy kept its source's size.
                self.grow(&add.slot, &disk, want, deadline).await
            }
            _ => Ok(disk),
        }
    }

    /// Waits for a copy's file to be whole; an interrupted copy is an error.
    pub(super) async fn whole_copy(
        &self,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        match self.rds.wait_for_copy(slot, deadline).await? {
            CopyState::Complete(disk) => Ok(*disk),
            CopyState::Interrupted(why) => Err(RdsError::Interrupted(why)),
        }
    }

    /// Checks an existing disk made by a copy (a retry of a create): whole, it is returned; an
    /// interrupted copy is removed, so the CO's next retry makes it again.
    pub(super) async fn existing_copy(
        &self,
        slot: &Slot,
        disk: &Disk,
        deadline: Instant,
    ) -> Result<Disk, Status> {
        match self.whole_copy(slot, deadline).await {
            Ok(disk) => Ok(disk),
            Err(e @ RdsError::Interrupted(_)) => {
                tracing::warn!(slot = %slot, error = %e, "removing an interrupted copy");
                self.remove_disk_and_file(slot, disk, deadline).await?;
                Err(rds_status(e))
            }
            Err(e) => Err(rds_status(e)),
        }
    }

    /// Removes what a failed create made at exactly this slot and path.
    async fn discard_made(&self, add: &DiskAdd, deadline: Instant) {
        let result = async {
            if let Some(disk) = self.rds.get_disk(&add.slot, deadline).await? {
                if disk.file_path.as_deref() != Some(add.file_path.as_str()) {
                    return Ok(()); // not what this call made
                }
                self.rds.remove_disk(&add.slot, deadline).await?;
            }
            self.rds.remove_file(&add.file_path, deadline).await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(slot = %add.slot, "removed what a failed create made"),
            Err(e) => tracing::error!(
                slot = %add.slot, path = %add.file_path, error = %e,
                "could not remove what a failed create made; the orphan scan will report it"
            ),
        }
    }

    /// Grows a disk to `size`. Some RouterOS builds may refuse to resize an exported disk: one
    /// that nothing uses stops being exported for the resize, and the caller exports it again
    /// (`usable`), whatever the resize did.
    pub(super) async fn grow(
        &self,
        slot: &Slot,
        disk: &Disk,
        size: AllocSize,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let refusal = match self.rds.resize_disk(slot, size, deadline).await {
            Ok(grown) => return Ok(grown),
            Err(e @ (RdsError::Failed { .. } | RdsError::InvalidArgument(_))) => e,
            Err(e) => return Err(e),
        };
        if !disk.nvme_export {
            return Err(refusal);
        }
        if !self.attached_nodes(slot.as_str()).is_empty() {
            return Err(RdsError::Busy(format!(
                "the RDS refused to resize the exported disk of volume {slot} ({refusal}); it \
                 is in use, so it is not unexported: the expansion completes once no node uses it"
            )));
        }
        tracing::info!(slot = %slot, error = %refusal, "resizing with the export off, as the RDS asks");
        self.rds.set_export(slot, None, deadline).await?;
        // Exported again by the caller (`usable`), with its fence if it has one: whatever the
        // resize did, no call reports the volume usable before that.
        self.rds.resize_disk(slot, size, deadline).await
    }

    /// Exports a disk that is not exported, as `export`, and reads it back. A disk already
    /// exported is left as it is. Calls that report a volume usable (create, expand, publish)
    /// pass through here, so none succeeds with its disk unexported.
    pub(super) async fn ensure_exported(
        &self,
        slot: &Slot,
        disk: Disk,
        export: NvmeExport,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        if disk.nvme_export {
            return Ok(disk);
        }
        let now = self
            .rds
            .set_export(slot, Some(export.clone()), deadline)
            .await?
            .ok_or_else(|| {
                RdsError::NotFound(format!("disk {slot} disappeared while exporting it"))
            })?;
        match export_of(&now) {
            Some(e) if e == export => Ok(now),
            _ => Err(RdsError::Failed {
                exit_status: Some(0),
                text: format!(
                    "disk {slot} is not exported on port {} as {} after `/disk set` answered success",
                    export.port.get(),
                    export.nqn
                ),
            }),
        }
    }

    /// How the volume `slot` is exported: as its disk shows it, else on `port` under its
    /// own NQN.
    pub(super) fn export_for(slot: &Slot, disk: &Disk, port: Port) -> NvmeExport {
        NvmeExport {
            port: disk
                .nvme_port
                .and_then(|p| Port::new(p.into()).ok())
                .unwrap_or(port),
            nqn: disk
                .nqn
                .as_deref()
                .and_then(|n| Nqn::new(n).ok())
                .unwrap_or_else(|| slot.nqn()),
        }
    }

    /// The file of a disk, as an RDS path.
    pub(super) fn file_path_of(disk: &Disk) -> Result<RdsPath, Status> {
        RdsPath::new(disk.file_path.clone().unwrap_or_default())
            .map_err(|e| Status::internal(e.to_string()))
    }
}
