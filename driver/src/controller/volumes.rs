//! CreateVolume and DeleteVolume: a volume is a file-backed disk on the RDS, exported over
//! NVMe/TCP, made exactly as asked or not at all.

use csi_proto::v1::*;
use tonic::{Request, Response, Status};

use super::caps::check_capabilities;
use super::copy_source::SourceRef;
use super::params::VolumeParams;
use super::{allocation, required, ControllerService};
use crate::grpc::{deadline, rds_status};
use crate::ids::{self, parse_volume_id, ManagedFile};
use crate::rds::command::{DiskAdd, NvmeExport};
use crate::rds::{Disk, RdsError};

impl ControllerService {
    pub(super) async fn volume_create(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let name = required(&req.name, "name")?;
        check_capabilities(&req.volume_capabilities, "volume_capabilities")
            .map_err(Status::invalid_argument)?;
        let params = VolumeParams::parse(&req.parameters, &self.config.defaults)?;
        if params.fenced && self.fence.is_none() {
            return Err(Status::invalid_argument(
                "parameters.nvmeFencing: fencing is off on this controller; start it with \
                 --nvme-fencing (off by default until confirmed on hardware)",
            ));
        }
        if let (true, Some(classes)) = (params.encrypted, &self.classes) {
            classes
                .check_node_stage_secret(&req.parameters, deadline)
                .await?;
        }
        let size = allocation(req.capacity_range.as_ref(), &self.config)?;
        let id = ids::volume_id_for_name(name);
        let path = ids::volume_file(&params.dir, &id).map_err(|e| {
            Status::invalid_argument(format!("parameters.volumePath is too long: {e}"))
        })?;
        let export = NvmeExport {
            port: params.nvme_port,
            nqn: id.nqn(),
        };

        let source_ref = req
            .volume_content_source
            .as_ref()
            .map(SourceRef::of)
            .transpose()?;
        let _guards = self
            .lock_copy(&id, source_ref.as_ref().map(|s| &s.id), deadline)
            .await?;
        let source = match source_ref {
            Some(src) => {
                let disk = self.source_disk(&src, deadline).await?;
                Some((src.id, disk))
            }
            None => None,
        };
        if let Some((src_id, src_disk)) = &source {
            if src_disk.size_bytes.unwrap_or_default() > size.bytes() {
                return Err(Status::out_of_range(format!(
                    "capacity_range: {} bytes is smaller than the source {src_id} ({} bytes)",
                    size.bytes(),
                    src_disk.size_bytes.unwrap_or_default()
                )));
            }
        }
        let limit = req.capacity_range.as_ref().map_or(0, |r| r.limit_bytes) as u64;
        let response_volume = |disk: &Disk| {
            let mut volume = self.volume_of(disk, &id, Some(&params));
            volume.content_source = req.volume_content_source.clone();
            Response::new(CreateVolumeResponse {
                volume: Some(volume),
            })
        };

        let add = DiskAdd {
            slot: id.clone(),
            file_path: path.clone(),
            size: Some(size),
            copy_from: source.as_ref().map(|(src, _)| src.clone()),
            // A fenced volume is exported once its fence is set (`usable`).
            export: (!params.fenced).then(|| export.clone()),
        };
        if source.is_none() {
            let scripted = self
                .make_disk_scripted(&add, deadline)
                .await
                .map_err(rds_status)?;
            if let Some(disk) = scripted {
                let disk = self
                    .usable(&id, disk, params.fenced, export, deadline)
                    .await?;
                tracing::info!(volume = %id, name, bytes = size.bytes(), path = %path, "volume created");
                return Ok(response_volume(&disk));
            }
        }

        // One read tells whether this volume may exist: a volume's disk always has its file.
        let file = self
            .rds
            .get_file(&path, deadline)
            .await
            .map_err(rds_status)?;
        if let Some(file) = file {
            let Some(mut existing) = self.rds.get_disk(&id, deadline).await.map_err(rds_status)?
            else {
                // Never let a new volume pick up an old file's data.
                return Err(Status::failed_precondition(format!(
                    "{} already exists on the RDS without a disk (last modified {}): either a copy \
                     for this volume is still running (retry later) or it is a leftover that may \
                     hold another volume's data, so it is not reused. If it stays, inspect it, then \
                     remove it (rds-csi orphans --delete) to let this volume be created",
                    file.path,
                    file.last_modified.as_deref().unwrap_or("unknown")
                )));
            };
            let ours = self.owned_volume(&existing).is_some()
                && existing.file_path.as_deref() == Some(path.as_str());
            if ours && source.is_some() {
                // A retry of a clone or restore: its copy must be whole, and as big as asked.
                existing = self.existing_copy(&id, &existing, deadline).await?;
                if existing.size_bytes.unwrap_or_default() < size.bytes() {
                    existing = self
                        .grow(&id, &existing, size, deadline)
                        .await
                        .map_err(rds_status)?;
                }
            }
            let actual = existing.size_bytes.unwrap_or_default();
            let compatible = self.owned_volume(&existing).is_some()
                && existing.file_path.as_deref() == Some(path.as_str())
                && actual >= size.bytes()
                && (limit == 0 || actual <= limit);
            if compatible {
                // A retry after a create that made the disk but not yet its fence or export.
                let existing = self
                    .usable(&id, existing, params.fenced, export.clone(), deadline)
                    .await?;
                return Ok(response_volume(&existing));
            }
            return Err(Status::already_exists(format!(
                "a volume named {name} (ID {id}) exists with a different size or location \
                 ({actual} bytes at {})",
                existing.file_path.as_deref().unwrap_or("-")
            )));
        }
        let disk = match self.make_disk(&add, deadline).await {
            Ok(disk) => disk,
            // The slot holds a disk elsewhere (another volumePath, or one whose file is gone).
            Err(RdsError::AlreadyExists(detail)) => {
                return Err(Status::already_exists(format!(
                    "a volume named {name} (ID {id}) exists with a different size or location: {detail}"
                )))
            }
            Err(e) => return Err(rds_status(e)),
        };
        // Closed before anyone learns the volume exists; a failure leaves a volume the retry
        // finds, fences and exports.
        let disk = self
            .usable(&id, disk, params.fenced, export, deadline)
            .await?;
        tracing::info!(volume = %id, name, bytes = size.bytes(), path = %path, "volume created");
        Ok(response_volume(&disk))
    }

    pub(super) async fn volume_delete(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let raw = required(&req.volume_id, "volume_id")?;
        // An ID outside the volume grammar was never made by this driver, so it does not exist.
        let Some(id) = parse_volume_id(raw) else {
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let _guard = self.locks.lock(id.as_str(), deadline).await?;
        self.require_attachments_ready()?;
        self.refresh_attachments(Some(id.as_str()), deadline)
            .await?;
        let nodes = self.attached_nodes(id.as_str());
        if !nodes.is_empty() {
            return Err(Status::failed_precondition(format!(
                "volume {id} is still published to {}",
                nodes.join(", ")
            )));
        }
        match self.rds.get_disk(&id, deadline).await.map_err(rds_status)? {
            Some(disk) => {
                if self.owned_volume(&disk).is_none() {
                    return Err(Status::failed_precondition(format!(
                        "disk {id} on the RDS was not made by this driver (file {}); refusing to delete it",
                        disk.file_path.as_deref().unwrap_or("-")
                    )));
                }
                self.remove_disk_and_file(&id, &disk, deadline).await?;
                tracing::info!(volume = %id, "volume deleted");
            }
            None => {
                self.remove_leftover_files(|m| m == &ManagedFile::Volume(id.clone()), deadline)
                    .await?;
            }
        }
        self.forget_condition(&id);
        Ok(Response::new(DeleteVolumeResponse {}))
    }
}
