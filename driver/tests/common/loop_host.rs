//! The Node service on this host with the loop connector: a test world of sparse backing files
//! laid out like mock-rds's data directory, a kubelet directory and a state directory, whose
//! Drop unmounts everything under it and detaches its loop devices, also when a test fails.
//! Shared by the test binaries that need root (real loop devices, mkfs, mount).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::v1::*;
use rds_csi::node::connector::LoopConnector;
use rds_csi::node::{NodeConfig, NodeService};
use tonic::Request;

pub const BASE: &str = "/storage-pool/metal-csi";
pub const MIB: u64 = 1 << 20;

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[allow(unused_macros)]
macro_rules! require_root {
    () => {
        if !$crate::common::loop_host::is_root() {
            // CI runs as root: there a missing privilege is a failure, never a skip.
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "needs root (loop devices, mkfs, mount), and CI=true does not skip"
            );
            eprintln!("SKIPPED: needs root (loop devices, mkfs, mount)");
            return;
        }
    };
}

/// A test's world: data dir (the "RDS"), kubelet dir, state dir. Its Drop unmounts everything
/// under it and detaches every loop device over its files.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data").join(&BASE[1..])).unwrap();
        std::fs::create_dir_all(dir.path().join("kubelet")).unwrap();
        Env { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn kubelet(&self, rel: &str) -> String {
        self.path("kubelet").join(rel).display().to_string()
    }

    pub fn service(&self) -> NodeService {
        let mut cfg = NodeConfig::new(
            "node-1",
            self.path("kubelet/plugins/rds.csi.srvlab.io/volumes"),
        );
        cfg.kubelet_dir = Some(self.path("kubelet"));
        NodeService::new(cfg, Arc::new(LoopConnector::new(self.path("data"))))
    }

    pub fn image(&self, id: &str) -> PathBuf {
        self.path("data").join(&BASE[1..]).join(format!("{id}.img"))
    }

    /// A sparse backing file, as mock-rds would create it; returns the volume context.
    pub fn volume(&self, id: &str, size: u64, fs: Option<&str>) -> HashMap<String, String> {
        let f = std::fs::File::create(self.image(id)).unwrap();
        f.set_len(size).unwrap();
        let mut ctx: HashMap<String, String> = [
            ("nqn", format!("nqn.2000-02.com.mikrotik:{id}")),
            ("nvmeAddress", "127.0.0.1".to_string()),
            ("nvmePort", "4420".to_string()),
            ("filePath", format!("{BASE}/{id}.img")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(fs) = fs {
            ctx.insert("fsType".into(), fs.into());
        }
        ctx
    }

    pub fn loops(&self) -> Vec<String> {
        loop_devices_under(self.dir.path())
    }
}

pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim()).starts_with(dir) {
                out.push(name);
            }
        }
    }
    out
}

pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|l| {
            l.split(' ')
                .nth(4)
                .map(|p| PathBuf::from(p.replace("\\040", " ")))
        })
        .filter(|p| p.starts_with(dir))
        .collect()
}

impl Drop for Env {
    fn drop(&mut self) {
        let dir = self.dir.path().to_path_buf();
        // Innermost first; lazy so a busy mount cannot keep the temp dir alive.
        let mut mounts = mounts_under(&dir);
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        for l in loop_devices_under(&dir) {
            // A loop device keeps its read-only flag for its next user.
            let _ = Command::new("blockdev")
                .arg("--setrw")
                .arg(format!("/dev/{l}"))
                .status();
            let _ = Command::new("losetup")
                .arg("-d")
                .arg(format!("/dev/{l}"))
                .status();
        }
    }
}

pub fn mount_cap(fs: &str, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: vec![],
            volume_mount_group: String::new(),
        })),
    }
}

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

pub fn stage_req(
    id: &str,
    staging: &str,
    cap: VolumeCapability,
    ctx: &HashMap<String, String>,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        volume_capability: Some(cap),
        volume_context: ctx.clone(),
        ..Default::default()
    }
}

pub fn publish_req(
    id: &str,
    staging: &str,
    target: &str,
    cap: VolumeCapability,
    ro: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        target_path: target.into(),
        volume_capability: Some(cap),
        readonly: ro,
        ..Default::default()
    }
}

pub async fn stage(svc: &NodeService, r: NodeStageVolumeRequest) -> Result<(), tonic::Status> {
    svc.node_stage_volume(Request::new(r)).await.map(|_| ())
}
pub async fn unstage(svc: &NodeService, id: &str, staging: &str) -> Result<(), tonic::Status> {
    svc.node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
    }))
    .await
    .map(|_| ())
}
pub async fn publish(svc: &NodeService, r: NodePublishVolumeRequest) -> Result<(), tonic::Status> {
    svc.node_publish_volume(Request::new(r)).await.map(|_| ())
}
pub async fn unpublish(svc: &NodeService, id: &str, target: &str) -> Result<(), tonic::Status> {
    svc.node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
    }))
    .await
    .map(|_| ())
}
pub async fn stats(
    svc: &NodeService,
    id: &str,
    path: &str,
) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
    svc.node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    }))
    .await
    .map(|r| r.into_inner())
}

pub fn is_mounted(p: &str) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    mounts_under(&p).contains(&p)
}
