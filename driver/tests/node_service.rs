//! Node service behaviour that needs no root: argument validation, the per-volume operation
//! guard, NodeGetInfo and NodeGetCapabilities. A scripted connector stands in for the host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::node_service_capability::rpc::Type as RpcType;
use csi_proto::v1::node_service_capability::Type as CapType;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::v1::*;
use rds_csi::node::connector::{Attached, Attachment, Connector};
use rds_csi::node::context::VolumeTarget;
use rds_csi::node::error::{NodeError, Result};
use rds_csi::node::{NodeConfig, NodeService, TOPOLOGY_KEY};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::{Code, Request};

/// Attach parks until released, so a second call can arrive while the first is in flight.
#[derive(Default)]
struct ParkedConnector {
    entered: Notify,
    release: Notify,
}

#[tonic::async_trait]
impl Connector for ParkedConnector {
    fn name(&self) -> &'static str {
        "parked"
    }
    fn check_target(&self, _t: &VolumeTarget) -> Result<()> {
        Ok(())
    }
    async fn attach(&self, _t: &VolumeTarget, _d: Instant) -> Result<Attachment> {
        self.entered.notify_one();
        self.release.notified().await;
        Ok(Attachment {
            device: PathBuf::from("/dev/null"),
            made_now: true,
        })
    }
    async fn find_device(&self, _t: &VolumeTarget) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    async fn detach(&self, _t: &VolumeTarget, _d: Instant) -> Result<()> {
        Ok(())
    }
    async fn rescan(&self, _t: &VolumeTarget, _d: &Path, _dl: Instant) -> Result<()> {
        Err(NodeError::Internal("unused".into()))
    }
    async fn target_for_device(&self, _a: u32, _b: u32) -> Result<Option<VolumeTarget>> {
        Ok(None)
    }
    async fn attached(&self) -> Result<Vec<Attached>> {
        Ok(Vec::new())
    }
}

struct Env {
    dir: tempfile::TempDir,
    connector: Arc<ParkedConnector>,
    svc: NodeService,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let connector = Arc::new(ParkedConnector::default());
    let mut cfg = NodeConfig::new("node-7", dir.path().join("kubelet/state"));
    cfg.kubelet_dir = Some(dir.path().join("kubelet"));
    cfg.max_volumes_per_node = 17;
    let svc = NodeService::new(cfg, connector.clone());
    Env {
        dir,
        connector,
        svc,
    }
}

impl Env {
    fn k(&self, rel: &str) -> String {
        self.dir
            .path()
            .join("kubelet")
            .join(rel)
            .display()
            .to_string()
    }
}

fn cap(block: bool) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume::default())
        }),
    }
}

fn ctx() -> HashMap<String, String> {
    [
        ("nqn", "nqn.2000-02.com.mikrotik:pvc-1"),
        ("nvmeAddress", "10.0.0.1"),
        ("nvmePort", "4420"),
        ("filePath", "/storage-pool/metal-csi/pvc-1.img"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn stage_req(e: &Env) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: "pvc-1".into(),
        staging_target_path: e.k("staging/pvc-1"),
        volume_capability: Some(cap(true)),
        volume_context: ctx(),
        ..Default::default()
    }
}

fn assert_invalid(r: std::result::Result<(), tonic::Status>, field: &str) {
    let e = r.expect_err(field);
    assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
    assert!(e.message().contains(field), "{field}: {}", e.message());
}

#[tokio::test]
async fn stage_arguments_are_validated_and_named() {
    let e = env();
    let s = &e.svc;
    // Bad input is refused before the connector is asked anything; its attach would park, so
    // a bound turns a missed check into a failure rather than a hang.
    let call = |r: NodeStageVolumeRequest| async move {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            s.node_stage_volume(Request::new(r)),
        )
        .await
        .expect("refused before attaching")
        .map(|_| ())
    };
    let mut r = stage_req(&e);
    r.volume_id.clear();
    assert_invalid(call(r).await, "volume_id");
    let mut r = stage_req(&e);
    r.staging_target_path.clear();
    assert_invalid(call(r).await, "staging_target_path");
    let mut r = stage_req(&e);
    r.staging_target_path = "/elsewhere/staging".into();
    assert_invalid(call(r).await, "staging_target_path");
    let mut r = stage_req(&e);
    r.staging_target_path = e.k("a/../../../etc");
    assert_invalid(call(r).await, "staging_target_path");
    let mut r = stage_req(&e);
    r.volume_capability = None;
    assert_invalid(call(r).await, "volume_capability");
    let mut r = stage_req(&e);
    r.volume_capability.as_mut().unwrap().access_type = None;
    assert_invalid(call(r).await, "volume_capability.access_type");
    let mut r = stage_req(&e);
    r.volume_capability = Some(VolumeCapability {
        access_mode: Some(AccessMode { mode: 1 }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "btrfs".into(),
            ..Default::default()
        })),
    });
    assert_invalid(call(r).await, "volume_capability.mount.fs_type");
    let mut r = stage_req(&e);
    r.volume_context
        .insert("nqn".into(), "nqn.2000-02.com.mikrotik:nixos.var".into());
    assert_invalid(call(r).await, "volume_context.nqn");
    let mut r = stage_req(&e);
    r.volume_context
        .insert("nvmeAddress".into(), "rds.lan".into());
    assert_invalid(call(r).await, "volume_context.nvmeAddress");
    let mut r = stage_req(&e);
    r.volume_context
        .insert("filePath".into(), "/storage-pool/../etc/shadow".into());
    assert_invalid(call(r).await, "volume_context.filePath");
    let mut r = stage_req(&e);
    r.publish_context.insert("readonly".into(), "yes".into());
    assert_invalid(call(r).await, "publish_context.readonly");
    let mut r = stage_req(&e);
    r.volume_capability.as_mut().unwrap().access_mode = Some(AccessMode { mode: 99 });
    assert_invalid(call(r).await, "volume_capability.access_mode");
    // Encrypted volumes: the flag's grammar, and the passphrase before anything is attached.
    let mut r = stage_req(&e);
    r.volume_context.insert("encrypted".into(), "yes".into());
    assert_invalid(call(r).await, "volume_context.encrypted");
    let mut r = stage_req(&e);
    r.volume_context.insert("encrypted".into(), "true".into());
    assert_invalid(call(r).await, "secrets.encryptionPassphrase");
    let mut r = stage_req(&e);
    r.volume_context.insert("encrypted".into(), "true".into());
    r.secrets
        .insert("encryptionPassphrase".into(), "fifteen-bytes!!".into());
    let refused = call(r).await.unwrap_err();
    assert_invalid(Err(refused.clone()), "secrets.encryptionPassphrase");
    assert!(
        !refused.message().contains("fifteen"),
        "{}",
        refused.message()
    );
}

/// A fake sysfs holding the device-mapper devices `(dm, name, uuid)`.
fn fake_sys(root: &Path, mappings: &[(&str, &str, &str)]) {
    for (i, (dm, name, uuid)) in mappings.iter().enumerate() {
        let dir = root.join("block").join(dm);
        std::fs::create_dir_all(dir.join("dm")).unwrap();
        std::fs::write(dir.join("dev"), format!("253:{i}\n")).unwrap();
        std::fs::write(dir.join("dm/name"), format!("{name}\n")).unwrap();
        std::fs::write(dir.join("dm/uuid"), format!("{uuid}\n")).unwrap();
    }
}

/// After a restart the node plugin reports the open mappings of its own volumes that no record
/// mentions, and leaves them open; other device-mapper devices are not its business.
#[tokio::test]
async fn recovery_reports_unrecorded_mappings_of_its_volumes_only() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let ours = "rds-csi-pvc-6ec89291-e651-4af7-8470-1168d64acbcd";
    fake_sys(
        &sys,
        &[
            (
                "dm-0",
                ours,
                &format!("CRYPT-LUKS2-76cbeaf9295d44d5-{ours}"),
            ),
            (
                "dm-1",
                "luks-root",
                "CRYPT-LUKS2-0123456789abcdef-luks-root",
            ),
            ("dm-2", "rds-csi-pvc-7", "LVM-0123"),
        ],
    );
    let mut cfg = NodeConfig::new("node-7", dir.path().join("state"));
    cfg.sys_root = sys;
    let svc = NodeService::new(cfg, Arc::new(ParkedConnector::default()));
    let report = svc.recover().await.unwrap();
    assert_eq!(
        report.orphans,
        vec![format!("{ours} (encrypted mapping /dev/dm-0)")]
    );
}

#[tokio::test]
async fn other_calls_name_missing_fields() {
    let e = env();
    let s = &e.svc;
    let r = s
        .node_publish_volume(Request::new(NodePublishVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: e.k("staging/pvc-1"),
            volume_capability: Some(cap(false)),
            ..Default::default()
        }))
        .await
        .map(|_| ());
    assert_invalid(r, "target_path");
    let r = s
        .node_publish_volume(Request::new(NodePublishVolumeRequest {
            volume_id: "pvc-1".into(),
            target_path: e.k("pods/x"),
            volume_capability: Some(cap(false)),
            ..Default::default()
        }))
        .await
        .map(|_| ());
    assert_invalid(r, "staging_target_path");
    let r = s
        .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
            volume_id: String::new(),
            target_path: e.k("pods/x"),
        }))
        .await
        .map(|_| ());
    assert_invalid(r, "volume_id");
    let r = s
        .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: String::new(),
        }))
        .await
        .map(|_| ());
    assert_invalid(r, "staging_target_path");
    let r = s
        .node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
            volume_id: "pvc-1".into(),
            ..Default::default()
        }))
        .await
        .map(|_| ());
    assert_invalid(r, "volume_path");
    let r = s
        .node_expand_volume(Request::new(NodeExpandVolumeRequest {
            volume_path: e.k("pods/x"),
            ..Default::default()
        }))
        .await
        .map(|_| ());
    assert_invalid(r, "volume_id");
    // Unpublish and unstage of things that are not there succeed.
    s.node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
        volume_id: "pvc-1".into(),
        target_path: e.k("pods/never"),
    }))
    .await
    .unwrap();
    s.node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
        volume_id: "pvc-1".into(),
        staging_target_path: e.k("staging/never"),
    }))
    .await
    .unwrap();
}

/// A path that cannot hold the volume (the node only ever puts volumes at absolute paths under
/// the kubelet directory) means the volume is not there: NotFound, as csi-sanity's
/// `some/path` expects, not InvalidArgument. A missing or `..` path is still bad input.
#[tokio::test]
async fn stats_and_expand_of_a_volume_not_at_the_path_are_not_found() {
    let e = env();
    let s = &e.svc;
    let stats = |id: &str, path: &str| {
        s.node_get_volume_stats(Request::new(NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            ..Default::default()
        }))
    };
    let expand = |id: &str, path: &str| {
        s.node_expand_volume(Request::new(NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            ..Default::default()
        }))
    };
    let outside = e.dir.path().join("elsewhere").display().to_string();
    for (id, path) in [
        ("id", "some/path"),
        ("pvc-1", "some/path"),
        ("pvc-1", outside.as_str()),
        ("pvc-1", &e.k("pods/never")),
    ] {
        for (rpc, r) in [
            ("stats", stats(id, path).await.map(|_| ())),
            ("expand", expand(id, path).await.map(|_| ())),
        ] {
            let err = r.expect_err(path);
            assert_eq!(err.code(), Code::NotFound, "{rpc} {id} at {path}: {err:?}");
            assert!(
                err.message().contains(path),
                "{rpc}: the message names the path: {}",
                err.message()
            );
        }
    }
    for (rpc, r) in [
        ("stats", stats("pvc-1", &e.k("a/../b")).await.map(|_| ())),
        ("expand", expand("pvc-1", &e.k("a/../b")).await.map(|_| ())),
    ] {
        let err = r.expect_err(rpc);
        assert_eq!(err.code(), Code::InvalidArgument, "{rpc}: {err:?}");
        assert!(err.message().contains("volume_path"), "{}", err.message());
    }
}

#[tokio::test]
async fn a_second_operation_on_the_same_volume_is_aborted() {
    let e = env();
    let svc = e.svc.clone();
    let first = tokio::spawn({
        let r = stage_req(&e);
        async move { svc.node_stage_volume(Request::new(r)).await.map(|_| ()) }
    });
    // Wait until the first call is inside attach (a signal, not a sleep).
    e.connector.entered.notified().await;
    let err = e
        .svc
        .node_stage_volume(Request::new(stage_req(&e)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let err = e
        .svc
        .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: e.k("staging/pvc-1"),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    // Another volume is not blocked.
    e.svc
        .node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
            volume_id: "pvc-2".into(),
            target_path: e.k("pods/none"),
        }))
        .await
        .unwrap();
    e.connector.release.notify_one();
    first.await.unwrap().unwrap();
    // Released: the next call goes through (the guard is gone).
    e.svc
        .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
            volume_id: "pvc-1".into(),
            staging_target_path: e.k("staging/pvc-1"),
        }))
        .await
        .unwrap();
}

#[tokio::test]
async fn info_and_capabilities() {
    let e = env();
    let info = e
        .svc
        .node_get_info(Request::new(NodeGetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-7");
    assert_eq!(info.max_volumes_per_node, 17);
    assert_eq!(
        info.accessible_topology.unwrap().segments,
        HashMap::from([(TOPOLOGY_KEY.to_string(), "default".to_string())])
    );
    let caps = e
        .svc
        .node_get_capabilities(Request::new(NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let mut types: Vec<i32> = caps
        .into_iter()
        .map(|c| match c.r#type {
            Some(CapType::Rpc(r)) => r.r#type,
            None => 0,
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            RpcType::StageUnstageVolume as i32,
            RpcType::GetVolumeStats as i32,
            RpcType::ExpandVolume as i32,
            RpcType::VolumeCondition as i32,
            RpcType::SingleNodeMultiWriter as i32
        ]
    );
}

/// mkfs runs in a pod that sees the host: options that read host paths into the new
/// filesystem (`mke2fs -d DIR`, `mkfs.xfs -p FILE`) are refused before anything is attached.
#[tokio::test]
async fn stage_refuses_mkfs_options_that_name_host_paths() {
    let e = env();
    for (fs, options) in [
        ("ext4", "-d var"),
        ("ext4", "-m 0 -d /var/lib/kubelet"),
        ("ext4", "-jd var"),
        ("ext3", "-l /etc/shadow"),
        ("ext4", "-J device=/dev/sda"),
        ("ext4", "-z /tmp/undo"),
        ("xfs", "-p /etc/passwd"),
        ("xfs", "-d name=/dev/sda"),
        ("xfs", "-c options=/etc/mkfs.conf"),
        ("xfs", "-m 0"),
    ] {
        let mut r = stage_req(&e);
        r.volume_capability = Some(VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            })),
        });
        r.volume_context
            .insert("mkfsOptions".into(), options.into());
        // A deadline, not a sleep: on a regression the parked attach would hold the call.
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            e.svc.node_stage_volume(Request::new(r)),
        )
        .await
        .unwrap_or_else(|_| panic!("{fs} `{options}` was not refused: the call went on to attach"))
        .map(|_| ());
        assert_invalid(result, "volume_context.mkfsOptions");
    }
}

/// The NQN is tied to the volume: exactly the managed prefix and this volume's ID, of the
/// driver's ID grammar. A static PV naming another volume's NQN (or a node's own export, such
/// as a diskless node's `...:nixos-var`) is refused before anything is attached.
#[tokio::test]
async fn stage_refuses_an_nqn_that_is_not_this_volumes() {
    let e = env();
    for (volume, nqn) in [
        ("pvc-1", "nqn.2000-02.com.mikrotik:pvc-2"),
        ("pvc-1", "nqn.2000-02.com.mikrotik:nixos-var"),
        ("nixos-var", "nqn.2000-02.com.mikrotik:nixos-var"),
    ] {
        let mut r = stage_req(&e);
        r.volume_id = volume.into();
        r.volume_context.insert("nqn".into(), nqn.into());
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            e.svc.node_stage_volume(Request::new(r)),
        )
        .await
        .unwrap_or_else(|_| panic!("{volume} with {nqn} was not refused: it went on to attach"))
        .map(|_| ());
        assert_invalid(result, "volume_context.nqn");
    }
}
