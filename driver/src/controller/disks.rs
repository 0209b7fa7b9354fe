//! Making a volume's or snapshot's disk so that it is exactly what was asked, whatever RouterOS
//! does: the disk is read back and checked, a copy counts only once its file is whole, a copy
//! that kept its source's size is grown, and whatever a failed attempt made is removed again.

use tokio::time::Instant;
use tonic::Status;

use super::ControllerService;
use crate::grpc::rds_status;
use crate::rds::command::{AllocSize, DiskAdd, Nqn, NvmeExport, Port, RdsPath, Slot};
use crate::rds::script::{CopyTail, Created};
use crate::rds::{disk_mismatch, CopySeen, CopyState, Disk, FileInfo, RdsError};

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

/// Whether the file at a failed create's path is known to be the create's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileAtPath {
    /// The create saw no file there before its add.
    Ours,
    /// A script's reply could not be read: its own file check may have found one.
    Unknown,
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
                    self.discard_made(add, FileAtPath::Ours, deadline).await;
                }
                return Err(e);
            }
        };
        match self.complete_disk(add, made, None, deadline).await {
            Ok(disk) => Ok(disk),
            // A copy still running when time ran out is left for the CO's retry to wait for.
            Err(e @ RdsError::Transport(_)) => Err(e),
            Err(e) => {
                self.discard_made(add, FileAtPath::Ours, deadline).await;
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
        let outcome = self.rds.create_scripted(add, deadline).await;
        let Some(made) = self.made_by_script(add, outcome, deadline).await? else {
            return Ok(None);
        };
        match self.complete_disk(add, made, None, deadline).await {
            Ok(disk) => Ok(Some(disk)),
            Err(e) => {
                self.discard_made(add, FileAtPath::Ours, deadline).await;
                Err(e)
            }
        }
    }

    /// Makes a snapshot's copy (`add.copy_from`; the caller holds the locks, has seen its
    /// slot empty and knows the RDS runs scripts) in one exec: added only if no file is at its
    /// path, and read back with its file, the file's exact size and the clock, so a copy
    /// already whole costs no further command. Returns the disk once whole, and its file.
    /// None when the command-by-command sequence must decide instead (a file at the path, a
    /// refusal): the script may have run, so the caller reads the slot again first. A lost
    /// reply is an error: the copy may be running, and the CO's retry finds it.
    pub(super) async fn make_copy_scripted(
        &self,
        add: &DiskAdd,
        deadline: Instant,
    ) -> Result<Option<(Disk, Option<FileInfo>)>, RdsError> {
        let (outcome, tail) = match self.rds.copy_scripted(add, deadline).await {
            Ok((created, tail)) => (Ok(created), tail),
            // A lost reply may leave a copy running: never sent again, it is found by the
            // CO's retry, which waits for it.
            Err(e @ RdsError::Transport(_)) => return Err(e),
            Err(e) => (Err(e), CopyTail::default()),
        };
        let Some(made) = self.made_by_script(add, outcome, deadline).await? else {
            return Ok(None);
        };
        let seen = CopySeen {
            disk: made.clone(),
            file: tail.file.clone(),
            exact: tail.exact,
        };
        match self.complete_disk(add, made, Some(seen), deadline).await {
            Ok(disk) => Ok(Some((disk, tail.file))),
            // A copy still running when time ran out is left for the CO's retry to wait for.
            Err(e @ RdsError::Transport(_)) => Err(e),
            Err(e) => {
                self.discard_made(add, FileAtPath::Ours, deadline).await;
                Err(e)
            }
        }
    }

    /// The disk a create script made, read back; None when the sequence must decide instead
    /// (a file at the path, a refusal, a lost reply). A failure removes what the script may
    /// have made.
    async fn made_by_script(
        &self,
        add: &DiskAdd,
        outcome: Result<Created, RdsError>,
        deadline: Instant,
    ) -> Result<Option<Disk>, RdsError> {
        match outcome {
            Ok(Created::Made(Some(disk))) => Ok(Some(disk)),
            Ok(Created::Made(None)) => {
                self.discard_made(add, FileAtPath::Ours, deadline).await;
                Err(RdsError::missing_after_add(&add.slot))
            }
            // Refused for want of space: the add ran, so no file was there before it.
            Err(e @ RdsError::OutOfSpace(_)) => {
                self.discard_made(add, FileAtPath::Ours, deadline).await;
                Err(e)
            }
            Err(e @ RdsError::Parse(_)) => {
                self.discard_made(add, FileAtPath::Unknown, deadline).await;
                Err(e)
            }
            Ok(Created::FileExists(_)) | Err(_) => Ok(None),
        }
    }

    /// Checks a disk just made against `add`: a copy once whole (starting from what a script
    /// `seen` of it), and grown if it kept its source's size.
    async fn complete_disk(
        &self,
        add: &DiskAdd,
        disk: Disk,
        seen: Option<CopySeen>,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let disk = match &add.copy_from {
            Some(_) => self.whole_copy(&add.slot, seen, deadline).await?,
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

    /// Waits for a copy's file to be whole (from what a script `seen` of it, if anything);
    /// an interrupted copy is an error.
    pub(super) async fn whole_copy(
        &self,
        slot: &Slot,
        seen: Option<CopySeen>,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        match self.rds.wait_for_copy(slot, seen, deadline).await? {
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
        match self.whole_copy(slot, None, deadline).await {
            Ok(disk) => Ok(disk),
            Err(e @ RdsError::Interrupted(_)) => {
                tracing::warn!(slot = %slot, error = %e, "removing an interrupted copy");
                self.remove_disk_and_file(slot, disk, deadline).await?;
                Err(rds_status(e))
            }
            Err(e) => Err(rds_status(e)),
        }
    }

    /// Removes what a failed create made at exactly this slot and path. A file with no disk
    /// is removed only when it is known to be the create's own (`file`): a script whose reply
    /// could not be read may have found a leftover there and added nothing.
    async fn discard_made(&self, add: &DiskAdd, file: FileAtPath, deadline: Instant) {
        let result = async {
            match self.rds.get_disk(&add.slot, deadline).await? {
                Some(disk) if disk.file_path.as_deref() != Some(add.file_path.as_str()) => {
                    return Ok(()); // not what this call made
                }
                Some(_) => self.rds.remove_disk(&add.slot, deadline).await?,
                None if file == FileAtPath::Unknown => {
                    tracing::warn!(
                        slot = %add.slot, path = %add.file_path,
                        "a failed create left no disk; its path's file, if any, is left alone \
                         (it may be a leftover the create did not make)"
                    );
                    return Ok(());
                }
                None => {}
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
