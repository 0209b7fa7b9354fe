//! Storage-side fencing (`--nvme-fencing`, StorageClass `nvmeFencing: "true"`): the RDS lets
//! only the nodes a volume is published to connect, through the disk's
//! `nvme-tcp-server-allow-host-name`.
//!
//! A node connects to a fenced volume with a host NQN derived from its node ID alone
//! ([`derived_host_nqn`]), so the controller knows it without seeing the node's files, and it
//! survives restarts. What the disk must allow follows from the nodes holding the volume:
//! - none: [`CLOSED_HOST`], a host NQN no node uses, so nobody connects;
//! - one: that node's NQN;
//! - two or more (an RWX live migration, or ReadOnlyMany readers): any host. RouterOS is not
//!   known to take more than one host in the property, and a migration needs both nodes to
//!   connect, so the fence opens for that window and closes again at the unpublish that ends it.
//!
//! RouterOS is not known to drop live connections when the property changes; the fence decides
//! who may connect next, which is what a node that lost its attachment does after any network
//! blip.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::kube::attachments::AttachmentManager;
use crate::kube::events::{EventRecorder, EventType};
use crate::node::connector::nvme::derived_host_nqn;
use crate::rds::command::{Nqn, RdsPath, Slot};
use crate::rds::{Disk, RdsClient, RdsError};

use super::ids::{self, ManagedFile};

/// The allowed host of a fenced volume that no node holds: an NQN no host connects with.
pub const CLOSED_HOST: &str = "nqn.2014-08.io.srvlab.rds-csi:fenced-no-host";
/// Event reason when the RDS's fence disagreed with the attachment table and was repaired.
pub const REASON_FENCE_REPAIRED: &str = "FenceRepaired";

/// The host NQN the disk must allow for these nodes; `None`: any host.
pub fn allowed_for(nodes: &[String]) -> Option<Nqn> {
    match nodes {
        [] => Some(closed()),
        // A derived NQN is always valid; were it not, the fence stays shut rather than open.
        [one] => Some(Nqn::new(derived_host_nqn(one).0).unwrap_or_else(|_| closed())),
        _ => None,
    }
}

fn closed() -> Nqn {
    Nqn::new(CLOSED_HOST).expect("the closed-fence NQN is valid")
}

/// The controller's fences: applied at create, publish and unpublish, and repaired by
/// [`Fence::pass`].
#[derive(Clone)]
pub struct Fence {
    rds: Arc<RdsClient>,
    attachments: Arc<AttachmentManager>,
    bases: Vec<RdsPath>,
    /// Volumes published as fenced since the start. A fenced disk shows a host, except while
    /// open for a migration: this is how such a disk is still known as fenced.
    known: Arc<Mutex<BTreeSet<String>>>,
    events: Option<EventRecorder>,
}

impl Fence {
    pub fn new(
        rds: Arc<RdsClient>,
        attachments: Arc<AttachmentManager>,
        bases: Vec<RdsPath>,
    ) -> Self {
        Self {
            rds,
            attachments,
            bases,
            known: Arc::default(),
            events: None,
        }
    }

    pub fn with_events(mut self, events: EventRecorder) -> Self {
        self.events = Some(events);
        self
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that `id` is fenced (its volume context says so).
    pub fn mark(&self, id: &str) {
        self.known().insert(id.to_string());
    }

    /// Whether the volume of this disk is fenced: known so, or its disk names a host.
    pub fn is_fenced(&self, id: &str, disk: &Disk) -> bool {
        disk.allowed_host.is_some() || self.known().contains(id)
    }

    /// Makes the disk allow exactly the nodes the attachment table holds it for; true when it
    /// had to change the disk.
    pub async fn apply(&self, id: &Slot, disk: &Disk, deadline: Instant) -> Result<bool, RdsError> {
        let want = allowed_for(&self.attachments.nodes(id.as_str()));
        if disk.allowed_host.as_deref() == want.as_ref().map(Nqn::as_str) {
            return Ok(false);
        }
        self.rds
            .set_allowed_host(id, want.as_ref(), deadline)
            .await?;
        tracing::info!(volume = %id, allowed = want.as_ref().map_or("any host", Nqn::as_str), "fence set");
        Ok(true)
    }

    /// Compares every fenced volume's disk with the attachment table and repairs the disk where
    /// they differ (the table itself is rebuilt from the cluster elsewhere), with an event.
    /// Returns how many it repaired.
    pub async fn pass(&self, deadline: Instant) -> Result<usize, RdsError> {
        if !self.attachments.is_ready() {
            return Ok(0);
        }
        let mut repaired = 0;
        for disk in self.rds.list_disks(deadline).await? {
            let Some(ManagedFile::Volume(id)) = ids::classify_disk(&self.bases, &disk) else {
                continue;
            };
            if !disk.nvme_export || !self.is_fenced(id.as_str(), &disk) {
                continue;
            }
            if self.apply(&id, &disk, deadline).await? {
                repaired += 1;
                let message = format!(
                    "the RDS let {} connect to volume {id}, which the attachment table holds for {:?}: repaired",
                    disk.allowed_host.as_deref().unwrap_or("any host"),
                    self.attachments.nodes(id.as_str())
                );
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
        }
        Ok(repaired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_follows_the_nodes() {
        assert_eq!(allowed_for(&[]).unwrap().as_str(), CLOSED_HOST);
        let one = allowed_for(&["node-a".into()]).unwrap();
        assert_eq!(one.as_str(), derived_host_nqn("node-a").0);
        assert_ne!(one, allowed_for(&["node-b".into()]).unwrap());
        assert_eq!(allowed_for(&["node-a".into(), "node-b".into()]), None);
    }
}
