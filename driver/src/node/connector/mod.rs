//! How a node reaches a volume's block device: NVMe/TCP in production, loop devices over the
//! backing files in development and CI.

use std::path::{Path, PathBuf};

use tokio::time::Instant;

use super::context::VolumeTarget;
use super::error::Result;

pub mod loopdev;
pub mod nvme;

pub use loopdev::LoopConnector;
pub use nvme::{NvmeConfig, NvmeTcpConnector};

/// A volume this connector has attached on the host (found by scanning, not remembered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub target: VolumeTarget,
    pub device: Option<PathBuf>,
}

/// What an attach did: the device, and whether this very call made the attachment. Only what
/// a call made itself may be undone when the rest of its stage fails; an attachment it found
/// may be in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub device: PathBuf,
    /// This call connected (`nvme connect`, `losetup`); false when it reused an attachment.
    pub made_now: bool,
}

#[tonic::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// `nvme-tcp` or `loop`; stored in the volume records.
    fn name(&self) -> &'static str;

    /// Checks that the target has what this connector needs (InvalidArgument naming the field).
    fn check_target(&self, target: &VolumeTarget) -> Result<()>;

    /// Attaches the volume (idempotent: an existing attachment is reused) and waits until its
    /// block device appears. When that fails after this call connected, it disconnects again
    /// (no device appeared, so nothing can use it); an attachment it found is left alone.
    async fn attach(&self, target: &VolumeTarget, deadline: Instant) -> Result<Attachment>;

    /// The device node of an attached volume, looked up afresh (never cached).
    async fn find_device(&self, target: &VolumeTarget) -> Result<Option<PathBuf>>;

    /// Why the attachment cannot carry I/O now although its device is there (an NVMe
    /// controller reconnecting), or None. Read from sysfs: never waits on the device.
    async fn attachment_problem(&self, _target: &VolumeTarget) -> Result<Option<String>> {
        Ok(None)
    }

    /// Detaches the volume and verifies it is gone; Ok when it was not attached.
    async fn detach(&self, target: &VolumeTarget, deadline: Instant) -> Result<()>;

    /// Makes the kernel re-read the device's size after the backing store grew.
    async fn rescan(&self, target: &VolumeTarget, device: &Path, deadline: Instant) -> Result<()>;

    /// The volume behind the block device `major:minor`, when this connector manages it. Lets
    /// unstage detach even when the state record was lost.
    async fn target_for_device(&self, major: u32, minor: u32) -> Result<Option<VolumeTarget>>;

    /// Every volume of this driver currently attached on the host.
    async fn attached(&self) -> Result<Vec<Attached>>;

    /// The attachment of `volume_id` as found on the host, for a volume staged without a
    /// record: the Go driver kept no node state, and its block volumes leave nothing at the
    /// staging path (the device node is made at the target path).
    async fn target_for_volume(&self, volume_id: &str) -> Result<Option<VolumeTarget>> {
        Ok(self
            .attached()
            .await?
            .into_iter()
            .map(|a| a.target)
            .find(|t| t.volume_id == volume_id))
    }
}
