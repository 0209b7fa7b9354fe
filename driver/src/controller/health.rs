//! The controller's side of a volume's condition (ControllerGetVolume, ListVolumes): what the
//! RDS shows of its disk that keeps nodes from using it. Read from the disk listing the call
//! makes anyway, and from the attachment table; a missing disk is NotFound, not a condition.

use csi_proto::v1::VolumeCondition;

use super::fence::allowed_for;
use super::ControllerService;
use crate::rds::command::Slot;
use crate::rds::Disk;

impl ControllerService {
    /// The condition of the volume in `id` whose disk is `disk`: the disk's own problems, then
    /// its fence against the nodes the attachment table holds it for.
    pub(super) fn condition(&self, id: &Slot, disk: &Disk) -> VolumeCondition {
        let problems = self.problems(id, disk);
        VolumeCondition {
            abnormal: !problems.is_empty(),
            message: if problems.is_empty() {
                "healthy".into()
            } else {
                problems.join("; ")
            },
        }
    }

    fn problems(&self, id: &Slot, disk: &Disk) -> Vec<String> {
        let mut problems = disk_problems(id, disk);
        if problems.is_empty() {
            problems.extend(self.fenced_out(id, disk));
        }
        problems
    }

    /// Nodes the volume is published to that its fence keeps out.
    fn fenced_out(&self, id: &Slot, disk: &Disk) -> Option<String> {
        let fence = self.fence.as_ref()?;
        let allowed = disk.allowed_host.as_deref()?;
        let nodes = self.attachments.nodes(id.as_str());
        let key = fence.key();
        // Two holders (a migration) need the disk open to any host.
        let open_wanted = allowed_for(key, &nodes).is_none();
        let kept_out: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                open_wanted
                    || !allowed
                        .split(',')
                        .any(|h| h.trim() == key.host_identity(n).nqn)
            })
            .map(String::as_str)
            .collect();
        (!kept_out.is_empty()).then(|| {
            format!(
                "the fence of disk {id} (nvme-tcp-server-allow-host-name={allowed}) keeps out \
                 {}, which the volume is published to; the controller's repair pass resets it",
                kept_out.join(" and ")
            )
        })
    }
}

/// What the disk alone shows keeping nodes from the volume in `id`: not exported, or exported
/// under an NQN other than the one its nodes connect to. Shared with `rds-csi volumes`.
pub fn disk_problems(id: &Slot, disk: &Disk) -> Vec<String> {
    if !disk.nvme_export {
        return vec![format!(
            "disk {id} is not exported (nvme-tcp-export=no): no node can connect"
        )];
    }
    let wanted = id.nqn();
    disk.nqn
        .as_deref()
        .filter(|n| *n != wanted.as_str())
        .map(|nqn| {
            format!(
                "disk {id} is exported as {nqn}, not {wanted}: nodes connect to the NQN the \
                 volume was made with"
            )
        })
        .into_iter()
        .collect()
}
