//! The `loop` connector: a loop device over the volume's backing file under a local root (the
//! mock RDS's data directory), for development, CI and demos.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Attached, Attachment, Connector};
use crate::node::context::{validate_file_path, VolumeTarget};
use crate::node::error::{NodeError, Result};
use crate::node::exec::{poll_until, run_ok};

#[derive(Debug)]
pub struct LoopConnector {
    root: PathBuf,
    sys_root: PathBuf,
    dev_root: PathBuf,
    losetup: PathBuf,
    poll_interval: Duration,
    /// Serialises losetup set-up and tear-down within this process.
    lock: Mutex<()>,
}

/// A loop device and the file behind it, from sysfs.
#[derive(Debug, Clone)]
struct LoopDev {
    name: String,
    backing: PathBuf,
    /// The backing file was deleted (or replaced) since the device was set up.
    deleted: bool,
}

impl LoopConnector {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            sys_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
            losetup: PathBuf::from("losetup"),
            poll_interval: Duration::from_millis(50),
            lock: Mutex::new(()),
        }
    }

    fn root(&self) -> Result<PathBuf> {
        std::fs::canonicalize(&self.root)
            .map_err(|e| NodeError::io(format!("loop root {}", self.root.display()), e))
    }

    /// `<root>/<filePath without leading slash>`, canonical, and still under the root.
    fn backing_file(&self, target: &VolumeTarget) -> Result<PathBuf> {
        let fp = target.file_path.as_deref().ok_or_else(|| {
            NodeError::InvalidArgument(
                "volume_context.filePath is required by the loop connector".into(),
            )
        })?;
        validate_file_path("volume_context.filePath", fp)?;
        let root = self.root()?;
        let path = root.join(fp.trim_start_matches('/'));
        let canon = match std::fs::canonicalize(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeError::NotFound(format!(
                    "backing file {} of volume {} does not exist",
                    path.display(),
                    target.volume_id
                )))
            }
            Err(e) => return Err(NodeError::io(path.display(), e)),
        };
        if !canon.starts_with(&root) {
            return Err(NodeError::InvalidArgument(format!(
                "volume_context.filePath {fp} resolves outside the loop root"
            )));
        }
        Ok(canon)
    }

    fn loop_devices(&self) -> Result<Vec<LoopDev>> {
        let block = self.sys_root.join("block");
        let entries = std::fs::read_dir(&block).map_err(|e| NodeError::io(block.display(), e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            // Unbound loop devices have no `loop/` directory.
            let Ok(s) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
                continue;
            };
            let s = s.trim_end_matches('\n');
            let (path, deleted) = match s.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (s, false),
            };
            out.push(LoopDev {
                name,
                backing: PathBuf::from(path),
                deleted,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn devices_for(&self, file: &Path) -> Result<Vec<LoopDev>> {
        Ok(self
            .loop_devices()?
            .into_iter()
            .filter(|d| d.backing == file)
            .collect())
    }

    fn live_device_for(&self, file: &Path) -> Result<Option<PathBuf>> {
        Ok(self
            .devices_for(file)?
            .into_iter()
            .find(|d| !d.deleted)
            .map(|d| self.dev_root.join(d.name)))
    }

    fn target_for_file(&self, root: &Path, file: &Path) -> Option<VolumeTarget> {
        let rel = file.strip_prefix(root).ok()?;
        let file_path = format!("/{}", rel.display());
        validate_file_path("filePath", &file_path).ok()?;
        let stem = rel.file_stem()?.to_string_lossy().into_owned();
        Some(VolumeTarget {
            volume_id: stem,
            file_path: Some(file_path),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl Connector for LoopConnector {
    fn name(&self) -> &'static str {
        "loop"
    }

    fn check_target(&self, target: &VolumeTarget) -> Result<()> {
        match target.file_path.as_deref() {
            Some(fp) => validate_file_path("volume_context.filePath", fp),
            None => Err(NodeError::InvalidArgument(
                "volume_context.filePath is required by the loop connector".into(),
            )),
        }
    }

    async fn attach(&self, target: &VolumeTarget, deadline: Instant) -> Result<Attachment> {
        let file = self.backing_file(target)?;
        let _serial = self.lock.lock().await;
        if let Some(device) = self.live_device_for(&file)? {
            tracing::debug!(volume_id = %target.volume_id, device = %device.display(), "reusing loop device");
            return Ok(Attachment {
                device,
                made_now: false,
            });
        }
        // --nooverlap reuses a device another process set up over the same file meanwhile.
        let out = run_ok(
            &self.losetup,
            &[
                "--find".as_ref(),
                "--show".as_ref(),
                "--nooverlap".as_ref(),
                file.as_os_str(),
            ],
            deadline,
        )
        .await?;
        let device = PathBuf::from(out.stdout.trim());
        tracing::info!(volume_id = %target.volume_id, device = %device.display(), file = %file.display(), "attached loop device");
        Ok(Attachment {
            device,
            made_now: true,
        })
    }

    async fn find_device(&self, target: &VolumeTarget) -> Result<Option<PathBuf>> {
        match self.backing_file(target) {
            Ok(file) => self.live_device_for(&file),
            Err(NodeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn detach(&self, target: &VolumeTarget, deadline: Instant) -> Result<()> {
        self.check_target(target)?;
        let root = self.root()?;
        // The file may be gone already (volume deleted); its loop devices still name the path.
        let fp = target.file_path.as_deref().unwrap_or_default();
        let file = std::fs::canonicalize(root.join(fp.trim_start_matches('/')))
            .unwrap_or_else(|_| root.join(fp.trim_start_matches('/')));
        let _serial = self.lock.lock().await;
        for dev in self.devices_for(&file)? {
            let node = self.dev_root.join(&dev.name);
            run_ok(&self.losetup, &["-d".as_ref(), node.as_os_str()], deadline).await?;
        }
        // `losetup -d` on a device that is still open only marks it for auto-clear; verify.
        let gone = poll_until(deadline, self.poll_interval, || {
            Ok(self.devices_for(&file)?.is_empty().then_some(()))
        })
        .await?;
        if gone.is_none() {
            return Err(NodeError::Internal(format!(
                "loop device over {} is still attached (still open?)",
                file.display()
            )));
        }
        tracing::info!(volume_id = %target.volume_id, file = %file.display(), "detached loop device");
        Ok(())
    }

    async fn rescan(&self, _target: &VolumeTarget, device: &Path, deadline: Instant) -> Result<()> {
        run_ok(
            &self.losetup,
            &["-c".as_ref(), device.as_os_str()],
            deadline,
        )
        .await
        .map(|_| ())
    }

    async fn target_for_device(&self, major: u32, minor: u32) -> Result<Option<VolumeTarget>> {
        let p = self
            .sys_root
            .join(format!("dev/block/{major}:{minor}/loop/backing_file"));
        let Ok(s) = std::fs::read_to_string(&p) else {
            return Ok(None);
        };
        let file = PathBuf::from(s.trim_end_matches('\n').trim_end_matches(" (deleted)"));
        Ok(self.target_for_file(&self.root()?, &file))
    }

    async fn attached(&self) -> Result<Vec<Attached>> {
        let root = self.root()?;
        Ok(self
            .loop_devices()?
            .into_iter()
            .filter_map(|d| {
                let target = self.target_for_file(&root, &d.backing)?;
                Some(Attached {
                    target,
                    device: Some(self.dev_root.join(d.name)),
                })
            })
            .collect())
    }
}
