//! CreateSnapshot, DeleteSnapshot, ListSnapshots and GetSnapshot: snapshots as copies of a
//! volume's disk, next to it, named after their source.

use std::collections::BTreeMap;

use csi_proto::v1::*;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::page::{Listing, Page};
use super::{required, ControllerService};
use crate::grpc::{deadline, rds_status};
use crate::ids::{self, parse_snapshot_id, parse_volume_id, ManagedFile};
use crate::rds::command::{DiskAdd, RdsPath, Slot};
use crate::rds::{Disk, FileInfo, RdsClock};

impl ControllerService {
    /// The ID and recorded source of a snapshot this driver made.
    pub(super) fn owned_snapshot(&self, disk: &Disk) -> Option<(Slot, Option<Slot>)> {
        match ids::classify_disk(self.bases(), disk)? {
            ManagedFile::Snapshot { id, source } => Some((id, source)),
            ManagedFile::Volume(_) => None,
        }
    }

    fn snapshot_of(
        &self,
        id: &Slot,
        source: Option<&Slot>,
        size: Option<u64>,
        file: Option<&FileInfo>,
        clock: Option<&RdsClock>,
    ) -> Snapshot {
        Snapshot {
            size_bytes: size.unwrap_or_default() as i64,
            snapshot_id: id.to_string(),
            source_volume_id: source.map(ToString::to_string).unwrap_or_default(),
            creation_time: file
                .and_then(|f| f.last_modified.as_deref())
                .zip(clock)
                .and_then(|(printed, clock)| clock.to_utc(printed))
                .map(prost_types::Timestamp::from),
            ready_to_use: true,
            group_snapshot_id: String::new(),
        }
    }
    pub(super) async fn snapshot_create(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let name = required(&req.name, "name")?;
        let source_raw = required(&req.source_volume_id, "source_volume_id")?;
        let not_found = || Status::not_found(format!("source volume {source_raw} does not exist"));
        let source = parse_volume_id(source_raw).ok_or_else(not_found)?;
        let id = ids::snapshot_id_for_name(name);
        let _guards = self.lock_copy(&id, Some(&source), deadline).await?;

        // The slot and the source, read together (one exec where the RDS runs scripts).
        let [existing, source_disk]: [Option<Disk>; 2] = self
            .rds
            .get_disks(&[&id, &source], deadline)
            .await
            .map_err(rds_status)?
            .try_into()
            .map_err(|_| Status::internal("the RDS read back a different number of disks"))?;
        if let Some(existing) = existing {
            return self
                .snapshot_exists(name, &id, &source, &existing, deadline)
                .await;
        }
        let source_disk = source_disk.ok_or_else(not_found)?;
        if self.owned_volume(&source_disk).is_none() {
            return Err(not_found());
        }
        // The snapshot sits next to its source, and its name records the source.
        let source_path = source_disk.file_path.clone().unwrap_or_default();
        let dir = RdsPath::new(
            source_path
                .rsplit_once('/')
                .map(|(d, _)| d)
                .unwrap_or_default(),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let path = ids::snapshot_file(&dir, &id, &source).map_err(|e| {
            Status::failed_precondition(format!(
                "the snapshot's file name does not fit next to its source volume: {e}"
            ))
        })?;
        let add = DiskAdd {
            slot: id.clone(),
            file_path: path.clone(),
            size: None,
            copy_from: Some(source.clone()),
            export: None,
        };
        let size_of = |disk: &Disk| disk.size_bytes.or(source_disk.size_bytes);
        let scripting = self.rds.scripting(deadline).await.map_err(rds_status)?;
        let scripted = if scripting {
            self.make_copy_scripted(&add, deadline)
                .await
                .map_err(rds_status)?
        } else {
            None
        };
        if let Some((disk, file)) = scripted {
            tracing::info!(snapshot = %id, source = %source, "snapshot created");
            return Ok(self
                .snapshot_made(&id, &source, size_of(&disk), file, deadline)
                .await);
        }

        // Command by command; a script that ran part way may have made the copy.
        if scripting {
            if let Some(existing) = self.rds.get_disk(&id, deadline).await.map_err(rds_status)? {
                return self
                    .snapshot_exists(name, &id, &source, &existing, deadline)
                    .await;
            }
        }
        if let Some(file) = self
            .rds
            .get_file(&path, deadline)
            .await
            .map_err(rds_status)?
        {
            return Err(Status::failed_precondition(format!(
                "{} already exists on the RDS without a disk; remove it to take this snapshot",
                file.path
            )));
        }
        let disk = self.make_disk(&add, deadline).await.map_err(rds_status)?;
        let file = self
            .rds
            .get_file(&path, deadline)
            .await
            .map_err(rds_status)?;
        tracing::info!(snapshot = %id, source = %source, "snapshot created");
        Ok(self
            .snapshot_made(&id, &source, size_of(&disk), file, deadline)
            .await)
    }

    /// CreateSnapshot's answer for a whole copy of `source` in `id`.
    async fn snapshot_made(
        &self,
        id: &Slot,
        source: &Slot,
        size: Option<u64>,
        file: Option<FileInfo>,
        deadline: Instant,
    ) -> Response<CreateSnapshotResponse> {
        let clock = self.clock(deadline).await;
        Response::new(CreateSnapshotResponse {
            snapshot: Some(self.snapshot_of(id, Some(source), size, file.as_ref(), clock.as_ref())),
        })
    }

    /// CreateSnapshot when its slot holds a disk: a retry of a snapshot this driver made from
    /// `source` is answered once its copy is whole; anything else already exists.
    async fn snapshot_exists(
        &self,
        name: &str,
        id: &Slot,
        source: &Slot,
        existing: &Disk,
        deadline: Instant,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let Some((_, recorded_source)) = self.owned_snapshot(existing) else {
            return Err(Status::already_exists(format!(
                "slot {id} is taken by a disk that is not a snapshot"
            )));
        };
        if recorded_source.as_ref().is_some_and(|s| s != source) {
            return Err(Status::already_exists(format!(
                "snapshot {name} exists with a different source volume"
            )));
        }
        let existing = self.existing_copy(id, existing, deadline).await?;
        let file = self.file_of(&existing, deadline).await?;
        Ok(self
            .snapshot_made(id, source, existing.size_bytes, file, deadline)
            .await)
    }

    pub(super) async fn snapshot_delete(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let raw = required(&req.snapshot_id, "snapshot_id")?;
        let Some(id) = parse_snapshot_id(raw) else {
            return Ok(Response::new(DeleteSnapshotResponse {}));
        };
        let _guard = self.locks.lock(id.as_str(), deadline).await?;
        if let Some(disk) = self.rds.get_disk(&id, deadline).await.map_err(rds_status)? {
            if self.owned_snapshot(&disk).is_none() {
                return Err(Status::failed_precondition(format!(
                    "disk {id} on the RDS is not a snapshot made by this driver; refusing to delete it"
                )));
            }
            self.remove_disk_and_file(&id, &disk, deadline).await?;
            tracing::info!(snapshot = %id, "snapshot deleted");
        }
        // A snapshot's file names its source: an earlier snapshot of this name from another
        // volume, whose delete removed the disk only, left a file of another name.
        self.remove_leftover_files(
            |m| matches!(m, ManagedFile::Snapshot { id: s, .. } if s == &id),
            deadline,
        )
        .await?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    pub(super) async fn snapshot_list(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let page = Page::parse(Listing::Snapshots, req.max_entries, &req.starting_token)?;
        // IDs that cannot exist match nothing.
        if (!req.snapshot_id.is_empty() && parse_snapshot_id(&req.snapshot_id).is_none())
            || (!req.source_volume_id.is_empty()
                && parse_volume_id(&req.source_volume_id).is_none())
        {
            return Ok(Response::new(ListSnapshotsResponse::default()));
        }
        let disks = self.rds.list_disks(deadline).await.map_err(rds_status)?;
        let snapshots: Vec<(Slot, Option<Slot>, &Disk)> = disks
            .iter()
            .filter_map(|d| self.owned_snapshot(d).map(|(id, src)| (id, src, d)))
            .filter(|(id, src, _)| {
                (req.snapshot_id.is_empty() || id.as_str() == req.snapshot_id)
                    && (req.source_volume_id.is_empty()
                        || src
                            .as_ref()
                            .is_some_and(|s| s.as_str() == req.source_volume_id))
            })
            .collect();
        let files: BTreeMap<String, FileInfo> = if snapshots.is_empty() {
            BTreeMap::new()
        } else {
            self.rds
                .list_files_in(self.bases(), deadline)
                .await
                .map_err(rds_status)?
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect()
        };
        let clock = if snapshots.is_empty() {
            None
        } else {
            self.clock(deadline).await
        };
        let items = snapshots
            .into_iter()
            .map(|(id, src, disk)| {
                let file = disk.file_path.as_ref().and_then(|p| files.get(p));
                let entry = list_snapshots_response::Entry {
                    snapshot: Some(self.snapshot_of(
                        &id,
                        src.as_ref(),
                        disk.size_bytes,
                        file,
                        clock.as_ref(),
                    )),
                };
                (id.to_string(), entry)
            })
            .collect();
        let (entries, next_token) = page.of(items);
        Ok(Response::new(ListSnapshotsResponse {
            entries,
            next_token,
        }))
    }

    pub(super) async fn snapshot_get(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let raw = required(&req.snapshot_id, "snapshot_id")?;
        let not_found = || Status::not_found(format!("snapshot {raw} does not exist"));
        let id = parse_snapshot_id(raw).ok_or_else(not_found)?;
        let disk = self
            .rds
            .get_disk(&id, deadline)
            .await
            .map_err(rds_status)?
            .ok_or_else(not_found)?;
        let (_, source) = self.owned_snapshot(&disk).ok_or_else(not_found)?;
        let file = self.file_of(&disk, deadline).await?;
        let clock = self.clock(deadline).await;
        Ok(Response::new(GetSnapshotResponse {
            snapshot: Some(self.snapshot_of(
                &id,
                source.as_ref(),
                disk.size_bytes,
                file.as_ref(),
                clock.as_ref(),
            )),
        }))
    }
}
