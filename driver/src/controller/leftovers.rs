//! Files a failed or earlier delete left behind: found by name, removed only when no disk uses
//! them (a disk of another slot, such as an imported volume, may have a file of that name).

use std::collections::HashSet;

use tokio::time::Instant;
use tonic::Status;

use super::ControllerService;
use crate::grpc::rds_status;
use crate::ids::{self, ManagedFile};
use crate::rds::command::RdsPath;

impl ControllerService {
    /// Removes the files of the managed grammar under the base paths that `wanted` selects and
    /// that no disk uses.
    pub(super) async fn remove_leftover_files(
        &self,
        wanted: impl Fn(&ManagedFile) -> bool,
        deadline: Instant,
    ) -> Result<(), Status> {
        let files = self
            .rds
            .list_files_in(self.bases(), deadline)
            .await
            .map_err(rds_status)?;
        let candidates: Vec<_> = files
            .iter()
            .filter(|f| !f.is_directory())
            .filter(|f| {
                ids::classify_managed_file(self.bases(), &f.path).is_some_and(|m| wanted(&m))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        // Read after the files, so a disk made meanwhile is seen.
        let disks = self.rds.list_disks(deadline).await.map_err(rds_status)?;
        let in_use: HashSet<&str> = disks
            .iter()
            .filter_map(|d| d.file_path.as_deref())
            .collect();
        for file in candidates {
            if in_use.contains(file.path.as_str()) {
                tracing::warn!(path = %file.path,
                    "a file named like a leftover of this volume is used by another disk; keeping it");
                continue;
            }
            let path =
                RdsPath::new(file.path.as_str()).map_err(|e| Status::internal(e.to_string()))?;
            tracing::info!(path = %path, "removing a leftover backing file");
            self.rds
                .remove_file(&path, deadline)
                .await
                .map_err(rds_status)?;
        }
        Ok(())
    }
}
