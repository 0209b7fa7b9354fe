//! The source of a clone, a restore or a snapshot. Its ID is known from the request, so the
//! source is locked with the target before anything is read, and stays locked for the copy:
//! a DeleteVolume or an expansion of the source would otherwise run while RouterOS copies it.

use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use csi_proto::v1::VolumeContentSource;
use tokio::time::Instant;
use tonic::Status;

use super::ControllerService;
use crate::grpc::{rds_status, KeyGuard};
use crate::ids::{parse_snapshot_id, parse_volume_id};
use crate::rds::command::Slot;
use crate::rds::Disk;

/// A copy's source as the request names it.
pub(super) struct SourceRef {
    pub id: Slot,
    kind: &'static str,
}

impl SourceRef {
    fn not_found(kind: &str) -> Status {
        Status::not_found(format!(
            "volume_content_source: source {kind} does not exist"
        ))
    }

    /// The source named by a CreateVolume's content source; an ID outside the driver's grammar
    /// was never made by it, so it does not exist.
    pub fn of(source: &VolumeContentSource) -> Result<Self, Status> {
        let (id, kind) = match &source.r#type {
            Some(SourceType::Snapshot(SnapshotSource { snapshot_id })) => {
                (parse_snapshot_id(snapshot_id), "snapshot")
            }
            Some(SourceType::Volume(VolumeSource { volume_id })) => {
                (parse_volume_id(volume_id), "volume")
            }
            None => {
                return Err(Status::invalid_argument(
                    "volume_content_source: type is required",
                ))
            }
        };
        let id = id.ok_or_else(|| Self::not_found(kind))?;
        Ok(Self { id, kind })
    }
}

impl ControllerService {
    /// Locks a copy's target and, when there is one, its source, for as long as the guards live.
    pub(super) async fn lock_copy(
        &self,
        target: &Slot,
        source: Option<&Slot>,
        deadline: Instant,
    ) -> Result<Vec<KeyGuard>, Status> {
        let mut keys = vec![target.as_str()];
        keys.extend(source.map(Slot::as_str));
        self.locks.lock_all(&keys, deadline).await
    }

    /// The source's disk, when it is one this driver made of the kind the request names.
    pub(super) async fn source_disk(
        &self,
        source: &SourceRef,
        deadline: Instant,
    ) -> Result<Disk, Status> {
        let not_found = || SourceRef::not_found(source.kind);
        let disk = self
            .rds
            .get_disk(&source.id, deadline)
            .await
            .map_err(rds_status)?
            .ok_or_else(not_found)?;
        let owned = if source.kind == "snapshot" {
            self.owned_snapshot(&disk).is_some()
        } else {
            self.owned_volume(&disk).is_some()
        };
        if !owned {
            return Err(not_found());
        }
        Ok(disk)
    }
}
