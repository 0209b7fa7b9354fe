//! Per-volume records of what NodeStageVolume did, kept on the host (under the kubelet plugin
//! directory by default) so NodeUnstageVolume can detach after a driver restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::context::{FsType, VolumeTarget};
use super::error::{NodeError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    Mount,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub volume_id: String,
    /// `nvme-tcp` or `loop`.
    pub connector: String,
    pub target: VolumeTarget,
    pub access: AccessKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<FsType>,
    pub staging_path: PathBuf,
    /// Staged read-only: the device's read-only flag is set, and cleared again before detach
    /// (a loop device keeps it for its next user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The data is read through the volume's dm-crypt mapping (see `crypt`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.json"))
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    pub fn save(&self, rec: &VolumeRecord) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| NodeError::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.path(&rec.volume_id);
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.volume_id));
        let data = serde_json::to_vec_pretty(rec)
            .map_err(|e| NodeError::Internal(format!("encoding the volume record: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| NodeError::io(format!("writing {}", path.display()), e))
    }

    pub fn load(&self, volume_id: &str) -> Result<Option<VolumeRecord>> {
        let path = self.path(volume_id);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                NodeError::Internal(format!(
                    "{} is not a valid volume record: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::io(format!("reading {}", path.display()), e)),
        }
    }

    pub fn remove(&self, volume_id: &str) -> Result<()> {
        let path = self.path(volume_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NodeError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Every readable record; unreadable ones are logged and skipped.
    pub fn list(&self) -> Result<Vec<VolumeRecord>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NodeError::io(format!("reading {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix(".json")
                .filter(|_| !name.starts_with('.'))
            else {
                continue;
            };
            match self.load(id) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping a volume record"),
            }
        }
        out.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("volumes"));
        assert!(store.list().unwrap().is_empty());
        let rec = VolumeRecord {
            volume_id: "pvc-1".into(),
            connector: "loop".into(),
            target: VolumeTarget {
                volume_id: "pvc-1".into(),
                file_path: Some("/storage-pool/metal-csi/pvc-1.img".into()),
                ..Default::default()
            },
            access: AccessKind::Mount,
            fs_type: Some(FsType::Xfs),
            staging_path: "/stage".into(),
            read_only: true,
            encrypted: true,
        };
        store.save(&rec).unwrap();
        assert_eq!(store.load("pvc-1").unwrap(), Some(rec.clone()));
        assert_eq!(store.list().unwrap(), vec![rec]);
        store.remove("pvc-1").unwrap();
        store.remove("pvc-1").unwrap();
        assert_eq!(store.load("pvc-1").unwrap(), None);
    }

    /// Records written before the device was dropped from them (devices are always looked up
    /// by their target, NVMe controllers renumber) still load.
    #[test]
    fn a_record_naming_its_device_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("volumes"));
        store
            .save(&VolumeRecord {
                volume_id: "pvc-1".into(),
                connector: "loop".into(),
                target: VolumeTarget::default(),
                access: AccessKind::Block,
                fs_type: None,
                staging_path: "/stage".into(),
                read_only: false,
                encrypted: false,
            })
            .unwrap();
        let path = dir.path().join("volumes/pvc-1.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["device"] = "/dev/nvme3n1".into();
        std::fs::write(&path, json.to_string()).unwrap();
        assert_eq!(
            store.load("pvc-1").unwrap().unwrap().staging_path,
            Path::new("/stage")
        );
    }
}
