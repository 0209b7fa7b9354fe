//! The nvme-tcp connector against sysfs fixture trees and a fake `nvme` that records its
//! arguments and adds or removes subsystems in the (copied) tree, as the kernel would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rds_csi::node::connector::nvme::{
    derived_host_nqn, parse_list_subsys, resolve_host_nqn, scan_subsystems,
};
use rds_csi::node::connector::{Connector, NvmeConfig, NvmeTcpConnector};
use rds_csi::node::context::VolumeTarget;
use rds_csi::node::error::NodeError;
use tokio::time::Instant;

const PREFIX: &str = "nqn.2000-02.com.mikrotik:";
const NQN: &str = "nqn.2000-02.com.mikrotik:pvc-abc";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

struct Fake {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sys: PathBuf,
    dev: PathBuf,
    log: PathBuf,
    bin: PathBuf,
}

impl Fake {
    /// A copy of `fixtures/sysfs/<tree>`, device nodes as plain files, and the fake `nvme`.
    fn new(tree: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let sys = root.join("sys");
        let st = Command::new("cp")
            .arg("-R")
            .arg(fixtures().join("sysfs").join(tree))
            .arg(&sys)
            .status()
            .unwrap();
        assert!(st.success());
        let dev = root.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for n in ["nvme0n1", "nvme1n1", "nvme3n1", "nvme4n1", "nvme9n1"] {
            std::fs::write(dev.join(n), b"").unwrap();
        }
        for d in ["pending", "pending-ns", "state"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let log = root.join("nvme.log");
        let bin = root.join("nvme");
        let class = sys.join("class/nvme-subsystem");
        let script = format!(
            r#"#!/bin/sh
printf '%s\n' "$*" >> '{log}'
case "$1" in
connect)
  if [ -e '{root}/state/connect-fails' ]; then echo "Failed to write to /dev/nvme-fabrics: Connection refused" >&2; exit 1; fi
  for d in '{root}'/pending/*; do [ -e "$d" ] && mv "$d" '{class}/'; done
  if [ -e '{root}/state/already' ]; then echo "Failed to write to /dev/nvme-fabrics: Operation already in progress: already connected" >&2; exit 114; fi
  ;;
disconnect)
  if [ -e '{root}/state/stuck' ]; then echo "NQN:$3 disconnected 0 controller(s)"; exit 0; fi
  for d in '{class}'/*; do
    if [ "$(cat "$d/subsysnqn")" = "$3" ]; then rm -rf "$d"; fi
  done
  ;;
ns-rescan)
  for d in '{root}'/pending-ns/*; do [ -e "$d" ] && mv "$d" '{class}/nvme-subsys3/'; done
  ;;
list-subsys)
  cat '{fixture}'
  ;;
esac
exit 0
"#,
            log = log.display(),
            root = root.display(),
            class = class.display(),
            fixture = fixtures().join("nvme/list-subsys-v2.json").display(),
        );
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake {
            _dir: dir,
            root,
            sys,
            dev,
            log,
            bin,
        }
    }

    fn class(&self) -> PathBuf {
        self.sys.join("class/nvme-subsystem")
    }

    /// Takes a subsystem out of sysfs; the fake `nvme connect` puts it back.
    fn unplug(&self, subsys: &str) {
        std::fs::rename(
            self.class().join(subsys),
            self.root.join("pending").join(subsys),
        )
        .unwrap();
    }

    fn flag(&self, name: &str) {
        std::fs::write(self.root.join("state").join(name), b"").unwrap();
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn connector(&self) -> NvmeTcpConnector {
        let mut cfg = NvmeConfig::new(HOSTNQN, PREFIX);
        cfg.nvme_bin = self.bin.clone();
        cfg.sys_root = self.sys.clone();
        cfg.dev_root = self.dev.clone();
        cfg.host_id = Some("00000000-0000-0000-0000-000000000001".into());
        cfg.ctrl_loss_tmo = 300;
        cfg.reconnect_delay = 5;
        cfg.keep_alive_tmo = 5;
        cfg.poll_interval = Duration::from_millis(10);
        NvmeTcpConnector::new(cfg)
    }
}

fn target(nqn: &str) -> VolumeTarget {
    VolumeTarget {
        volume_id: nqn.rsplit(':').next().unwrap().to_string(),
        nqn: Some(nqn.to_string()),
        address: Some("10.42.0.1".parse().unwrap()),
        port: Some(4420),
        ..Default::default()
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(3)
}

#[tokio::test]
async fn finds_the_namespace_head_with_multipath() {
    let f = Fake::new("multipath-y");
    let c = f.connector();
    assert_eq!(
        c.find_device(&target(NQN)).await.unwrap(),
        Some(f.dev.join("nvme3n1")),
        "the head nvme3n1, not the hidden path nvme3c5n1 nor the controller's number"
    );
    let subs = scan_subsystems(&f.sys).unwrap();
    let s3 = subs.iter().find(|s| s.name == "nvme-subsys3").unwrap();
    assert_eq!(
        s3.controllers,
        vec![("nvme5".to_string(), "live".to_string())]
    );
    assert_eq!(s3.namespaces.len(), 1);
    assert!(f.calls().is_empty());
}

/// A volume's record names the connector that staged it as `--connector` does.
#[test]
fn the_connector_is_named_as_the_connector_flag_names_it() {
    assert_eq!(Fake::new("multipath-y").connector().name(), "nvme-tcp");
}

/// Every namespace of a subsystem is listed once, in the kernel's numbering order (n2 before
/// n10), so the first ready one is found whatever the directory order.
#[test]
fn lists_every_namespace_of_a_subsystem_in_numbering_order() {
    let f = Fake::new("multipath-y");
    for n in ["nvme3n10", "nvme3n2"] {
        std::fs::create_dir(f.class().join("nvme-subsys3").join(n)).unwrap();
    }
    let subs = scan_subsystems(&f.sys).unwrap();
    let s3 = subs.iter().find(|s| s.name == "nvme-subsys3").unwrap();
    let names: Vec<&str> = s3.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["nvme3n1", "nvme3n2", "nvme3n10"]);
}

#[tokio::test]
async fn finds_the_namespace_under_the_controller_without_multipath() {
    let f = Fake::new("multipath-n");
    assert_eq!(
        f.connector().find_device(&target(NQN)).await.unwrap(),
        Some(f.dev.join("nvme4n1"))
    );
}

#[tokio::test]
async fn nqn_match_is_exact_never_a_substring() {
    let f = Fake::new("multipath-y");
    f.unplug("nvme-subsys3");
    // `…:pvc-abc-2` is connected and contains `…:pvc-abc`; it must not be taken for it.
    assert_eq!(f.connector().find_device(&target(NQN)).await.unwrap(), None);
    assert_eq!(
        f.connector()
            .find_device(&target("nqn.2000-02.com.mikrotik:pvc-ab"))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn attach_connects_with_the_configured_parameters() {
    let f = Fake::new("multipath-y");
    f.unplug("nvme-subsys3");
    let mut t = target(NQN);
    t.ctrl_loss_tmo = Some(-1);
    t.keep_alive_tmo = Some(7);
    let attached = f.connector().attach(&t, soon()).await.unwrap();
    assert_eq!(attached.device, f.dev.join("nvme3n1"));
    assert!(attached.made_now);
    assert_eq!(
        f.calls(),
        vec![format!(
            "connect -t tcp -a 10.42.0.1 -s 4420 -n {NQN} --hostnqn {HOSTNQN} \
             --hostid 00000000-0000-0000-0000-000000000001 --ctrl-loss-tmo -1 \
             --reconnect-delay 5 --keep-alive-tmo 7"
        )]
    );
}

#[tokio::test]
async fn zero_leaves_an_option_to_the_kernel_as_in_go_driver_volumes() {
    // The Go driver's PVs carry keepAliveTmo "0" (and ctrlLossTmo "0" for the kernel's
    // default): such an option is not passed at all; -1 is passed as it is.
    for (ctrl_loss, reconnect, keep_alive, options) in [
        (-1, 5, 0, "--ctrl-loss-tmo -1 --reconnect-delay 5"),
        (0, 5, 0, "--reconnect-delay 5"),
        (0, 0, 0, ""),
        (
            600,
            10,
            30,
            "--ctrl-loss-tmo 600 --reconnect-delay 10 --keep-alive-tmo 30",
        ),
    ] {
        let f = Fake::new("multipath-y");
        f.unplug("nvme-subsys3");
        let mut t = target(NQN);
        t.ctrl_loss_tmo = Some(ctrl_loss);
        t.reconnect_delay = Some(reconnect);
        t.keep_alive_tmo = Some(keep_alive);
        f.connector().attach(&t, soon()).await.unwrap();
        let expected = format!(
            "connect -t tcp -a 10.42.0.1 -s 4420 -n {NQN} --hostnqn {HOSTNQN} \
             --hostid 00000000-0000-0000-0000-000000000001 {options}"
        );
        assert_eq!(f.calls(), vec![expected.trim_end().to_string()]);
    }
}

#[tokio::test]
async fn attach_is_idempotent_when_already_connected() {
    let f = Fake::new("multipath-y");
    let attached = f.connector().attach(&target(NQN), soon()).await.unwrap();
    assert_eq!(attached.device, f.dev.join("nvme3n1"));
    assert!(!attached.made_now, "found, not made");
    assert!(f.calls().is_empty(), "no nvme call: {:?}", f.calls());
}

#[tokio::test]
async fn attach_tolerates_already_connected_from_a_race() {
    let f = Fake::new("multipath-y");
    f.unplug("nvme-subsys3");
    f.flag("already");
    let attached = f.connector().attach(&target(NQN), soon()).await.unwrap();
    assert_eq!(attached.device, f.dev.join("nvme3n1"));
    assert!(!attached.made_now, "another connected it first");
}

/// An expansion's rescan has the kernel re-read the namespaces of the volume's own controller,
/// and of no other.
#[tokio::test]
async fn rescan_rereads_the_volumes_controller_only() {
    let f = Fake::new("multipath-y");
    f.connector()
        .rescan(&target(NQN), &f.dev.join("nvme3n1"), soon())
        .await
        .unwrap();
    let rescan = format!("ns-rescan {}", f.dev.join("nvme5").display());
    assert_eq!(f.calls(), [rescan]);
}

#[tokio::test]
async fn attach_rescans_a_connected_subsystem_without_namespace() {
    let f = Fake::new("multipath-y");
    std::fs::rename(
        f.class().join("nvme-subsys3/nvme3n1"),
        f.root.join("pending-ns/nvme3n1"),
    )
    .unwrap();
    std::fs::remove_dir_all(f.class().join("nvme-subsys3/nvme5/nvme3c5n1")).unwrap();
    let attached = f.connector().attach(&target(NQN), soon()).await.unwrap();
    assert_eq!(attached.device, f.dev.join("nvme3n1"));
    assert!(!attached.made_now, "the controller was connected before");
    assert_eq!(
        f.calls(),
        vec![format!("ns-rescan {}", f.dev.join("nvme5").display())]
    );
}

#[tokio::test]
async fn attach_failure_and_missing_device_are_errors() {
    let f = Fake::new("multipath-y");
    f.unplug("nvme-subsys3");
    f.flag("connect-fails");
    let e = f
        .connector()
        .attach(&target(NQN), soon())
        .await
        .unwrap_err();
    assert!(matches!(e, NodeError::Internal(_)), "{e}");
    assert!(e.to_string().contains("Connection refused"), "{e}");

    // Connected, but the device node never appears: bounded by the deadline.
    let f = Fake::new("multipath-y");
    std::fs::remove_file(f.dev.join("nvme3n1")).unwrap();
    let e = f
        .connector()
        .attach(&target(NQN), Instant::now() + Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, NodeError::DeadlineExceeded(_)), "{e}");
}

#[tokio::test]
async fn attach_requires_address_and_port() {
    let f = Fake::new("multipath-y");
    let mut t = target(NQN);
    t.address = None;
    let e = f.connector().check_target(&t).unwrap_err();
    assert!(e.to_string().contains("nvmeAddress"), "{e}");
    let mut t = target(NQN);
    t.port = None;
    let e = f.connector().check_target(&t).unwrap_err();
    assert!(e.to_string().contains("nvmePort"), "{e}");
}

#[tokio::test]
async fn finds_the_device_again_after_renumbering() {
    let f = Fake::new("multipath-y");
    let c = f.connector();
    assert_eq!(
        c.find_device(&target(NQN)).await.unwrap(),
        Some(f.dev.join("nvme3n1"))
    );
    // After ctrl_loss_tmo and a new connect the kernel hands out new numbers.
    let s = f.class();
    std::fs::rename(s.join("nvme-subsys3"), s.join("nvme-subsys9")).unwrap();
    std::fs::rename(
        s.join("nvme-subsys9/nvme3n1"),
        s.join("nvme-subsys9/nvme9n1"),
    )
    .unwrap();
    std::fs::rename(s.join("nvme-subsys9/nvme5"), s.join("nvme-subsys9/nvme11")).unwrap();
    assert_eq!(
        c.find_device(&target(NQN)).await.unwrap(),
        Some(f.dev.join("nvme9n1"))
    );
}

#[tokio::test]
async fn detach_disconnects_by_nqn_and_verifies_in_sysfs() {
    let f = Fake::new("multipath-y");
    let c = f.connector();
    c.detach(&target(NQN), soon()).await.unwrap();
    assert_eq!(f.calls(), vec![format!("disconnect -n {NQN}")]);
    assert!(!f.class().join("nvme-subsys3").exists());
    // The node's /var and the look-alike volume are untouched.
    assert!(f.class().join("nvme-subsys0").exists());
    assert!(f.class().join("nvme-subsys1").exists());
    // Idempotent: nothing connected, nothing run.
    c.detach(&target(NQN), soon()).await.unwrap();
    assert_eq!(f.calls().len(), 1);
}

#[tokio::test]
async fn detach_that_does_not_take_effect_is_an_error() {
    let f = Fake::new("multipath-y");
    f.flag("stuck");
    let e = f
        .connector()
        .detach(&target(NQN), Instant::now() + Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("still connected"), "{e}");
    assert!(f.class().join("nvme-subsys3").exists());
}

#[tokio::test]
async fn never_touches_unmanaged_nqns() {
    let f = Fake::new("multipath-y");
    let c = f.connector();
    for nqn in [
        "nqn.2000-02.com.mikrotik:nixos.worker1.var",
        "nqn.2000-02.com.mikrotik:Pvc-abc",
        "nqn.2014-08.org.example:pvc-abc",
    ] {
        let e = c.detach(&target(nqn), soon()).await.unwrap_err();
        assert!(matches!(e, NodeError::InvalidArgument(_)), "{nqn}: {e}");
        let e = c.attach(&target(nqn), soon()).await.unwrap_err();
        assert!(matches!(e, NodeError::InvalidArgument(_)), "{nqn}: {e}");
    }
    assert!(f.calls().is_empty());
    assert!(f.class().join("nvme-subsys0").exists());
}

/// The attached volumes the connector reports: (volume ID, NQN), sorted.
async fn attached_volumes(f: &Fake) -> Vec<(String, String)> {
    let mut volumes: Vec<(String, String)> = f
        .connector()
        .attached()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.target.volume_id, a.target.nqn.unwrap()))
        .collect();
    volumes.sort();
    volumes
}

/// The managed attachments, each with its volume ID; the node's own export is never one.
fn managed_attachments() -> Vec<(String, String)> {
    vec![
        ("pvc-abc".to_string(), NQN.to_string()),
        ("pvc-abc-2".to_string(), format!("{NQN}-2")),
    ]
}

#[tokio::test]
async fn lists_only_managed_attachments() {
    let f = Fake::new("multipath-y");
    assert_eq!(attached_volumes(&f).await, managed_attachments());
}

/// Without sysfs's class view (a container that lacks it), the attachments come from
/// `nvme list-subsys`, with the same rule.
#[tokio::test]
async fn lists_managed_attachments_through_the_binary_without_the_sysfs_class() {
    let f = Fake::new("multipath-y");
    std::fs::remove_dir_all(f.class()).unwrap();
    assert_eq!(attached_volumes(&f).await, managed_attachments());
    assert_eq!(f.calls(), ["list-subsys -o json"]);
}

#[tokio::test]
async fn maps_a_device_number_back_to_its_volume() {
    let f = Fake::new("multipath-y");
    let c = f.connector();
    let t = c.target_for_device(259, 3).await.unwrap().unwrap();
    assert_eq!(t.nqn.as_deref(), Some(NQN));
    assert_eq!(t.volume_id, "pvc-abc");
    // The node's /var is not ours.
    assert_eq!(c.target_for_device(259, 0).await.unwrap(), None);
    assert_eq!(c.target_for_device(8, 0).await.unwrap(), None);
}

#[tokio::test]
async fn list_subsys_through_the_binary() {
    let f = Fake::new("multipath-y");
    let subs = f.connector().list_subsys(soon()).await.unwrap();
    assert_eq!(subs.len(), 3);
    assert_eq!(f.calls(), vec!["list-subsys -o json"]);
}

#[test]
fn parses_list_subsys_of_nvme_cli_1_and_2() {
    for (file, paths_of_target) in [("list-subsys-v1.json", 1), ("list-subsys-v2.json", 2)] {
        let text = std::fs::read_to_string(fixtures().join("nvme").join(file)).unwrap();
        let subs = parse_list_subsys(&text).unwrap();
        let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["nvme-subsys0", "nvme-subsys1", "nvme-subsys3"],
            "{file}"
        );
        let exact: Vec<_> = subs.iter().filter(|s| s.nqn == NQN).collect();
        assert_eq!(exact.len(), 1, "{file}: exact NQN match only");
        assert_eq!(exact[0].name, "nvme-subsys3");
        assert_eq!(exact[0].paths.len(), paths_of_target, "{file}");
        assert_eq!(exact[0].paths[0].name, "nvme5");
        assert_eq!(exact[0].paths[0].transport, "tcp");
        assert_eq!(subs[0].paths[0].state, "live");
    }
    assert!(parse_list_subsys("[]").unwrap().is_empty());
    assert!(parse_list_subsys("not json").is_err());
}

#[test]
fn host_nqn_comes_from_the_host_or_the_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hostnqn");
    std::fs::write(&file, "nqn.2014-08.org.nvmexpress:uuid:abc\n").unwrap();
    assert_eq!(
        resolve_host_nqn(&file, "node-1"),
        ("nqn.2014-08.org.nvmexpress:uuid:abc".to_string(), None)
    );
    let (nqn, id) = resolve_host_nqn(&dir.path().join("missing"), "node-1");
    assert_eq!(
        (nqn.clone(), id.clone().unwrap()),
        derived_host_nqn("node-1")
    );
    assert_ne!(
        nqn,
        resolve_host_nqn(&dir.path().join("missing"), "node-2").0
    );
    std::fs::write(&file, "garbage\n").unwrap();
    assert_eq!(resolve_host_nqn(&file, "node-1").0, nqn);
}

/// A connected controller whose namespace is not ready (yet) is not this call's to undo: a
/// failed NodeStage leaves it connected, since a consumer may be using it, and disconnects only
/// what it connected itself.
#[tokio::test]
async fn a_failed_stage_never_disconnects_a_controller_it_did_not_connect() {
    use csi_proto::v1::node_server::Node;
    use csi_proto::v1::volume_capability::{
        access_mode::Mode, AccessMode, AccessType, BlockVolume,
    };
    use csi_proto::v1::{NodeStageVolumeRequest, VolumeCapability};
    use rds_csi::node::{NodeConfig, NodeService};

    let f = Fake::new("multipath-y");
    // Connected, but its namespace is gone for now and a rescan does not bring it back.
    std::fs::remove_dir_all(f.class().join("nvme-subsys3/nvme3n1")).unwrap();
    std::fs::remove_dir_all(f.class().join("nvme-subsys3/nvme5/nvme3c5n1")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new("node-1", state.path());
    cfg.sys_root = f.sys.clone();
    cfg.operation_timeout = Duration::from_millis(300);
    let svc = NodeService::new(cfg, std::sync::Arc::new(f.connector()));
    let request = NodeStageVolumeRequest {
        volume_id: "pvc-abc".into(),
        staging_target_path: state.path().join("staging").display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Block(BlockVolume {})),
        }),
        volume_context: [
            ("nqn", NQN),
            ("nvmeAddress", "10.42.0.1"),
            ("nvmePort", "4420"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    };
    let err = svc
        .node_stage_volume(tonic::Request::new(request))
        .await
        .expect_err("no namespace appeared");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        !f.calls().iter().any(|c| c.starts_with("disconnect")),
        "disconnected a controller the stage did not connect: {:?}",
        f.calls()
    );
    assert!(f.class().join("nvme-subsys3").exists());
}

/// What a failed attach connected itself (the device never appeared) is disconnected again.
#[tokio::test]
async fn an_attach_that_connected_but_found_no_device_disconnects_again() {
    let f = Fake::new("multipath-y");
    f.unplug("nvme-subsys3");
    std::fs::remove_file(f.dev.join("nvme3n1")).unwrap();
    let e = f
        .connector()
        .attach(&target(NQN), Instant::now() + Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, NodeError::DeadlineExceeded(_)), "{e}");
    let calls = f.calls();
    assert!(calls[0].starts_with("connect"), "{calls:?}");
    assert_eq!(
        calls.last().unwrap(),
        &format!("disconnect -n {NQN}"),
        "{calls:?}"
    );
    assert!(!f.class().join("nvme-subsys3").exists());
}
