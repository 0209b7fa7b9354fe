//! Storage-side fencing (`--nvme-fencing`, StorageClass `nvmeFencing: "true"`): the RDS lets
//! only the nodes a volume is published to connect, through the disk's
//! `nvme-tcp-server-allow-host-name`.
//!
//! A node connects to a fenced volume with a host identity derived from the cluster's fence key
//! and its node ID ([`FenceKey::host_identity`]), so the controller knows it without seeing the
//! node's files, and it survives restarts. What the disk must allow follows from the nodes
//! holding the volume:
//! - none: [`FenceKey::closed_host`], a host NQN no node is given, so nobody connects;
//! - one: that node's NQN;
//! - two or more (an RWX live migration, or ReadOnlyMany readers): any host. RouterOS is not
//!   known to take more than one host in the property, and a migration needs both nodes to
//!   connect, so the fence opens for that window and closes again at the unpublish that ends it.
//!
//! Whether a volume is fenced is durable: its disk names a host, or (while open) the attachment
//! table says so, which publish fills from the volume context and the rebuild from the PVs'
//! volume attributes. Every change of a fence runs under the volume's lock, so the repair pass
//! and publish/unpublish never overtake each other.
//!
//! RouterOS is not known to drop live connections when the property changes; the fence decides
//! who may connect next, which is what a node that lost its attachment does after any network
//! blip.

use std::sync::Arc;

use tokio::time::Instant;

use crate::fence_key::FenceKey;
use crate::grpc::KeyedLocks;
use crate::kube::attachments::{AttachmentManager, AttachmentSync};
use crate::kube::events::{EventRecorder, EventType};
use crate::rds::command::{Nqn, NvmeExport, RdsPath, Slot};
use crate::rds::{Disk, RdsClient, RdsError};

use crate::ids::{self, ManagedFile};

/// Event reason when the RDS's fence disagreed with the attachment table and was repaired.
pub const REASON_FENCE_REPAIRED: &str = "FenceRepaired";

/// The host NQN a fenced disk must allow for these nodes; `None`: any host.
pub fn allowed_for(key: &FenceKey, nodes: &[String]) -> Option<Nqn> {
    let nqn = match nodes {
        [] => key.closed_host(),
        [one] => key.host_identity(one).nqn,
        _ => return None,
    };
    // A derived NQN is always valid; were it not, the fence stays shut rather than open.
    Some(Nqn::new(nqn).unwrap_or_else(|_| Nqn::new(key.closed_host()).expect("a valid NQN")))
}

/// The repair pass as a task for the Lease holder (`ControllerKube::run_on_leader`).
pub fn leader_task(fence: Fence) -> crate::kube::LeaderTask {
    use futures_util::FutureExt;
    Arc::new(move || {
        let fence = fence.clone();
        async move { fence.pass_logged().await }.boxed()
    })
}

/// What one repair pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Fences changed to match the attachment table.
    pub repaired: usize,
    /// Fenced disks that could not be checked or set (the next pass tries again).
    pub failed: usize,
}

/// The controller's fences: applied at create, publish and unpublish, and repaired by
/// [`Fence::pass`].
#[derive(Clone)]
pub struct Fence {
    rds: Arc<RdsClient>,
    attachments: Arc<AttachmentManager>,
    locks: Arc<KeyedLocks>,
    bases: Vec<RdsPath>,
    key: FenceKey,
    events: Option<EventRecorder>,
    sync: Option<AttachmentSync>,
}

impl Fence {
    pub fn new(
        rds: Arc<RdsClient>,
        attachments: Arc<AttachmentManager>,
        locks: Arc<KeyedLocks>,
        bases: Vec<RdsPath>,
        key: FenceKey,
    ) -> Self {
        Self {
            rds,
            attachments,
            locks,
            bases,
            key,
            events: None,
            sync: None,
        }
    }

    /// Re-read the cluster's attachments before repairing a fence (another replica may have
    /// published or unpublished the volume).
    pub fn with_sync(mut self, sync: AttachmentSync) -> Self {
        self.sync = Some(sync);
        self
    }

    pub fn key(&self) -> &FenceKey {
        &self.key
    }

    pub fn with_events(mut self, events: EventRecorder) -> Self {
        self.events = Some(events);
        self
    }

    /// Whether the volume of this disk is fenced: its disk names a host, or the attachment
    /// table (from the volume context or the PV) says so.
    pub fn is_fenced(&self, id: &str, disk: &Disk) -> bool {
        disk.allowed_host.is_some() || self.attachments.is_fenced(id)
    }

    /// Makes the disk allow exactly the nodes the attachment table holds it for; true when it
    /// had to change the disk. The caller holds the volume's lock.
    pub async fn apply(&self, id: &Slot, disk: &Disk, deadline: Instant) -> Result<bool, RdsError> {
        let want = allowed_for(&self.key, &self.attachments.nodes(id.as_str()));
        if disk.allowed_host.as_deref() == want.as_ref().map(Nqn::as_str) {
            return Ok(false);
        }
        self.rds
            .set_allowed_host(id, want.as_ref(), deadline)
            .await?;
        tracing::info!(volume = %id, allowed = want.as_ref().map_or("any host", Nqn::as_str), "fence set");
        Ok(true)
    }

    /// `apply` for a disk that may not be exported yet (a new fenced volume, or one an
    /// expansion left unexported): an unexported disk is exported with its fence in one
    /// command, so it is never open in between. Returns the disk as it now is.
    pub async fn apply_exported(
        &self,
        id: &Slot,
        disk: Disk,
        export: &NvmeExport,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        if disk.nvme_export {
            self.apply(id, &disk, deadline).await?;
            return Ok(disk);
        }
        let want = allowed_for(&self.key, &self.attachments.nodes(id.as_str()));
        let disk = self
            .rds
            .export_fenced(id, export, want.as_ref(), deadline)
            .await?;
        tracing::info!(volume = %id, allowed = want.as_ref().map_or("any host", Nqn::as_str), "exported with its fence");
        Ok(disk)
    }

    /// Compares every fenced volume's disk with the attachment table and repairs the disk where
    /// they differ, with an event. Each volume is re-read under its lock, so a publish or
    /// unpublish that ran since the listing is never overtaken; a disk that fails is counted
    /// and the pass goes on. Only the listing failing fails the pass.
    pub async fn pass(&self, deadline: Instant) -> Result<PassReport, RdsError> {
        let mut report = PassReport::default();
        if !self.attachments.is_ready() {
            return Ok(report);
        }
        for listed in self.rds.list_disks(deadline).await? {
            let Some(ManagedFile::Volume(id)) = ids::classify_disk(&self.bases, &listed) else {
                continue;
            };
            if !listed.nvme_export || !self.is_fenced(id.as_str(), &listed) {
                continue;
            }
            match self.repair(&id, deadline).await {
                Ok(None) => {}
                Ok(Some(message)) => {
                    report.repaired += 1;
                    tracing::warn!(volume = %id, "{message}");
                    if let Some(events) = &self.events {
                        events
                            .publish_for_volume(
                                id.as_str(),
                                EventType::Warning,
                                REASON_FENCE_REPAIRED,
                                &message,
                            )
                            .await;
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(volume = %id, error = %e, "fence pass: cannot check or repair this volume's fence");
                }
            }
        }
        Ok(report)
    }

    /// One pass, with its outcome logged: the repair task the Lease holder runs.
    pub async fn pass_logged(&self) {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        // Only what is logged depends on the report (its mutants change nothing else).
        match self.pass(deadline).await {
            Ok(report) if report == PassReport::default() => {}
            Ok(report) => tracing::warn!(
                repaired = report.repaired,
                failed = report.failed,
                "fence pass"
            ),
            Err(e) => tracing::warn!(error = %e, "fence pass failed"),
        }
    }

    /// One volume of the pass, under its lock: what it repaired, if anything.
    async fn repair(&self, id: &Slot, deadline: Instant) -> Result<Option<String>, RdsError> {
        let _guard = self
            .locks
            .lock(id.as_str(), deadline)
            .await
            .map_err(|s| RdsError::Busy(s.message().to_string()))?;
        let Some(disk) = self.rds.get_disk(id, deadline).await? else {
            return Ok(None);
        };
        if !disk.nvme_export || !self.is_fenced(id.as_str(), &disk) {
            return Ok(None);
        }
        let want = allowed_for(&self.key, &self.attachments.nodes(id.as_str()));
        if disk.allowed_host.as_deref() == want.as_ref().map(Nqn::as_str) {
            return Ok(None);
        }
        // The table and the RDS differ: first make sure the table is not the one behind, and
        // leave a volume alone while an attach or detach of it is under way (its publish or
        // unpublish sets the fence, on whichever replica runs it).
        if let Some(sync) = &self.sync {
            let cluster = sync
                .refresh(Some(id.as_str()))
                .await
                .map_err(|e| RdsError::Busy(format!("cannot read the VolumeAttachments: {e}")))?;
            if cluster.changing.contains(id.as_str()) {
                tracing::debug!(volume = %id, "fence pass: an attach or detach is under way; next pass");
                return Ok(None);
            }
        }
        if !self.apply(id, &disk, deadline).await? {
            return Ok(None);
        }
        Ok(Some(format!(
            "the RDS let {} connect to volume {id}, which the attachment table holds for {:?}: repaired",
            disk.allowed_host.as_deref().unwrap_or("any host"),
            self.attachments.nodes(id.as_str())
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_follows_the_nodes() {
        let key = FenceKey::new(&[7u8; 32]).unwrap();
        assert_eq!(allowed_for(&key, &[]).unwrap().as_str(), key.closed_host());
        let one = allowed_for(&key, &["node-a".into()]).unwrap();
        assert_eq!(one.as_str(), key.host_identity("node-a").nqn);
        assert_ne!(one, allowed_for(&key, &["node-b".into()]).unwrap());
        assert_eq!(allowed_for(&key, &["node-a".into(), "node-b".into()]), None);
    }
}
