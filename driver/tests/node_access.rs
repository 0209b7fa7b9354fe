//! Access modes and read-only publishing on this host, with real loop devices (needs root;
//! skips otherwise): a volume the controller published read-only is read-only on the node
//! (device and mounts), a reader-only mode is read-only without being told, a single-writer
//! volume is published at one target path only, and stats look for a volume only where it is.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::Path;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume};
use csi_proto::v1::*;
use mock_rds::MockRds;
use rds_csi::controller::ControllerService;
use rds_csi::node::NodeService;
use tonic::{Code, Request};

use common::loop_host::*;

const NODE: &str = "node-1";

fn block_cap_in(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

/// mock-rds keeping its files in the test world's data directory, and a controller for it: the
/// node's loop connector attaches exactly the files the controller made.
async fn controller_on(env: &Env) -> (MockRds, ControllerService) {
    let key = common::new_key();
    let mock = MockRds::start(mock_rds::Config {
        data_dir: Some(env.path("data")),
        auth: mock_rds::Auth::AuthorizedKeys(vec![key.public_key().clone()]),
        ..mock_rds::Config::default()
    })
    .await
    .unwrap();
    let svc = common::controller::service(&mock, &key);
    (mock, svc)
}

async fn create(ctl: &ControllerService, id: &str, bytes: u64) -> HashMap<String, String> {
    ctl.create_volume(Request::new(CreateVolumeRequest {
        name: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap("ext4", Mode::SingleNodeWriter)],
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
    .volume
    .unwrap()
    .volume_context
}

async fn controller_publish(
    ctl: &ControllerService,
    id: &str,
    cap: &VolumeCapability,
    readonly: bool,
) -> HashMap<String, String> {
    ctl.controller_publish_volume(Request::new(ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: NODE.into(),
        volume_capability: Some(cap.clone()),
        readonly,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
    .publish_context
}

async fn controller_unpublish(ctl: &ControllerService, id: &str) {
    ctl.controller_unpublish_volume(Request::new(ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: NODE.into(),
        ..Default::default()
    }))
    .await
    .unwrap();
}

fn with_publish_context(
    mut r: NodeStageVolumeRequest,
    ctx: &HashMap<String, String>,
) -> NodeStageVolumeRequest {
    r.publish_context = ctx.clone();
    r
}

fn mount_options(path: &str) -> String {
    let out = std::process::Command::new("findmnt")
        .args(["-n", "-o", "OPTIONS", "--mountpoint", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn is_read_only_mount(path: &str) -> bool {
    mount_options(path).split(',').any(|o| o == "ro")
}

/// The kernel's read-only flag of every loop device of this test world.
fn loops_read_only(env: &Env) -> Vec<bool> {
    env.loops()
        .iter()
        .map(|l| {
            std::fs::read_to_string(format!("/sys/block/{l}/ro"))
                .unwrap()
                .trim()
                == "1"
        })
        .collect()
}

fn write_fails_read_only(path: &Path) {
    let e = std::fs::write(path, b"x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(nix::libc::EROFS),
        "{}: {e}",
        path.display()
    );
}

#[tokio::test]
async fn a_volume_published_read_only_is_read_only_on_the_node() {
    require_root!();
    let env = Env::new();
    let (_mock, ctl) = controller_on(&env).await;
    let node = env.service();
    let id = "pvc-ro";
    let vc = create(&ctl, id, 64 * MIB).await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let staging = env.kubelet("staging/ro");
    let (t1, t2) = (env.kubelet("pods/a/mount"), env.kubelet("pods/b/mount"));

    // Written once, published read-write.
    let pc = controller_publish(&ctl, id, &cap, false).await;
    stage(
        &node,
        with_publish_context(stage_req(id, &staging, cap.clone(), &vc), &pc),
    )
    .await
    .unwrap();
    publish(&node, publish_req(id, &staging, &t1, cap.clone(), false))
        .await
        .unwrap();
    std::fs::write(Path::new(&t1).join("data"), b"kept").unwrap();
    unpublish(&node, id, &t1).await.unwrap();
    unstage(&node, id, &staging).await.unwrap();
    controller_unpublish(&ctl, id).await;

    // Published read-only: the device, the staging mount and every publish are read-only, even
    // a NodePublish that does not ask for it.
    let pc = controller_publish(&ctl, id, &cap, true).await;
    assert_eq!(pc.get("readonly").map(String::as_str), Some("true"));
    let stage_ro = with_publish_context(stage_req(id, &staging, cap.clone(), &vc), &pc);
    stage(&node, stage_ro.clone()).await.unwrap();
    assert_eq!(loops_read_only(&env), [true], "the device is read-only");
    assert!(is_read_only_mount(&staging), "{}", mount_options(&staging));
    let mut publish_ro = publish_req(id, &staging, &t2, cap.clone(), false);
    publish_ro.publish_context = pc.clone();
    publish(&node, publish_ro.clone()).await.unwrap();
    publish(&node, publish_ro).await.unwrap();
    assert!(is_read_only_mount(&t2), "{}", mount_options(&t2));
    assert_eq!(std::fs::read(Path::new(&t2).join("data")).unwrap(), b"kept");
    write_fails_read_only(&Path::new(&t2).join("new"));
    // Staging again (kubelet restart) is still the same read-only stage.
    stage(&node, stage_ro).await.unwrap();
    unpublish(&node, id, &t2).await.unwrap();
    unstage(&node, id, &staging).await.unwrap();
    assert!(env.loops().is_empty(), "{:?}", env.loops());
    controller_unpublish(&ctl, id).await;

    // Read-write again: the loop device the read-only stage used is writable again.
    let pc = controller_publish(&ctl, id, &cap, false).await;
    stage(
        &node,
        with_publish_context(stage_req(id, &staging, cap.clone(), &vc), &pc),
    )
    .await
    .unwrap();
    assert_eq!(loops_read_only(&env), [false]);
    publish(&node, publish_req(id, &staging, &t1, cap.clone(), false))
        .await
        .unwrap();
    std::fs::write(Path::new(&t1).join("more"), b"written").unwrap();
    unpublish(&node, id, &t1).await.unwrap();
    unstage(&node, id, &staging).await.unwrap();
    assert!(env.loops().is_empty());
}

#[tokio::test]
async fn a_blank_volume_published_read_only_is_not_formatted() {
    require_root!();
    let env = Env::new();
    let node = env.service();
    let vc = env.volume("pvc-blank", 32 * MIB, Some("ext4"));
    let pc = HashMap::from([("readonly".to_string(), "true".to_string())]);
    let staging = env.kubelet("staging/blank");
    let r = stage_req(
        "pvc-blank",
        &staging,
        mount_cap("ext4", Mode::SingleNodeWriter),
        &vc,
    );
    let e = stage(&node, with_publish_context(r, &pc))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("read-only"), "{}", e.message());
    assert!(env.loops().is_empty(), "rolled back: {:?}", env.loops());
    let out = std::process::Command::new("blkid")
        .arg(env.image("pvc-blank"))
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "still blank: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// ReadOnlyMany reaches the node as MULTI_NODE_READER_ONLY; it is staged read-only even without
/// the publish context saying so, so no node replays a journal on a device others read.
#[tokio::test]
async fn a_reader_only_mode_is_staged_read_only() {
    require_root!();
    let env = Env::new();
    let node = env.service();
    let id = "pvc-rox";
    let vc = env.volume(id, 64 * MIB, Some("ext4"));
    let staging = env.kubelet("staging/rox");
    // Formatted by a read-write stage first.
    stage(
        &node,
        stage_req(id, &staging, mount_cap("ext4", Mode::SingleNodeWriter), &vc),
    )
    .await
    .unwrap();
    unstage(&node, id, &staging).await.unwrap();

    let rox = mount_cap("ext4", Mode::MultiNodeReaderOnly);
    stage(&node, stage_req(id, &staging, rox.clone(), &vc))
        .await
        .unwrap();
    assert_eq!(loops_read_only(&env), [true]);
    assert!(is_read_only_mount(&staging));
    let target = env.kubelet("pods/r/mount");
    publish(&node, publish_req(id, &staging, &target, rox, false))
        .await
        .unwrap();
    write_fails_read_only(&Path::new(&target).join("x"));
    unpublish(&node, id, &target).await.unwrap();
    unstage(&node, id, &staging).await.unwrap();
    assert!(env.loops().is_empty());
}

#[tokio::test]
async fn a_block_volume_published_read_only_refuses_writes() {
    require_root!();
    let env = Env::new();
    let node = env.service();
    let id = "pvc-ro-block";
    let vc = env.volume(id, 16 * MIB, None);
    let pc = HashMap::from([("readonly".to_string(), "true".to_string())]);
    let staging = env.kubelet("staging/ro-block");
    std::fs::create_dir_all(&staging).unwrap();
    let target = env.kubelet("pods/b/dev");
    stage(
        &node,
        with_publish_context(stage_req(id, &staging, block_cap(), &vc), &pc),
    )
    .await
    .unwrap();
    let mut r = publish_req(id, &staging, &target, block_cap(), false);
    r.publish_context = pc;
    publish(&node, r).await.unwrap();
    assert_eq!(loops_read_only(&env), [true]);
    // A read-only bind of a device node does not stop writes; the device's own flag does.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, &[1u8; 4096])?;
            f.sync_all()
        });
    let e = written.expect_err("a write to the read-only device");
    assert!(
        matches!(
            e.raw_os_error(),
            Some(nix::libc::EROFS | nix::libc::EACCES | nix::libc::EPERM)
        ),
        "{e}"
    );
    unpublish(&node, id, &target).await.unwrap();
    unstage(&node, id, &staging).await.unwrap();
    assert!(env.loops().is_empty());
}

async fn single_writer_publishes(node: &NodeService, env: &Env, id: &str, cap: VolumeCapability) {
    let staging = env.kubelet(&format!("staging/{id}"));
    let (t1, t2) = (
        env.kubelet(&format!("pods/1/{id}")),
        env.kubelet(&format!("pods/2/{id}")),
    );
    publish(node, publish_req(id, &staging, &t1, cap.clone(), false))
        .await
        .unwrap();
    publish(node, publish_req(id, &staging, &t1, cap.clone(), false))
        .await
        .unwrap();
    for readonly in [false, true] {
        let e = publish(node, publish_req(id, &staging, &t2, cap.clone(), readonly))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{id}: {e:?}");
        assert!(
            e.message().contains(&t1),
            "names the other target: {}",
            e.message()
        );
    }
    unpublish(node, id, &t1).await.unwrap();
    publish(node, publish_req(id, &staging, &t2, cap.clone(), false))
        .await
        .unwrap();
    unpublish(node, id, &t2).await.unwrap();
    unstage(node, id, &staging).await.unwrap();
}

#[tokio::test]
async fn a_single_writer_volume_is_published_at_one_target_only() {
    require_root!();
    let env = Env::new();
    let node = env.service();
    let fs = mount_cap("ext4", Mode::SingleNodeSingleWriter);
    let vc = env.volume("pvc-snsw", 32 * MIB, Some("ext4"));
    let staging = env.kubelet("staging/pvc-snsw");
    stage(&node, stage_req("pvc-snsw", &staging, fs.clone(), &vc))
        .await
        .unwrap();
    single_writer_publishes(&node, &env, "pvc-snsw", fs).await;

    let block = block_cap_in(Mode::SingleNodeSingleWriter);
    let vc = env.volume("pvc-snsw-block", 16 * MIB, None);
    let staging = env.kubelet("staging/pvc-snsw-block");
    std::fs::create_dir_all(&staging).unwrap();
    stage(
        &node,
        stage_req("pvc-snsw-block", &staging, block.clone(), &vc),
    )
    .await
    .unwrap();
    single_writer_publishes(&node, &env, "pvc-snsw-block", block).await;
    assert!(env.loops().is_empty());
}

#[tokio::test]
async fn a_single_node_multi_writer_volume_is_published_at_many_targets() {
    require_root!();
    let env = Env::new();
    let node = env.service();
    let id = "pvc-snmw";
    let cap = mount_cap("ext4", Mode::SingleNodeMultiWriter);
    let vc = env.volume(id, 32 * MIB, Some("ext4"));
    let staging = env.kubelet("staging/snmw");
    stage(&node, stage_req(id, &staging, cap.clone(), &vc))
        .await
        .unwrap();
    let targets: Vec<String> = (0..3)
        .map(|i| env.kubelet(&format!("pods/{i}/mount")))
        .collect();
    for t in &targets {
        publish(&node, publish_req(id, &staging, t, cap.clone(), false))
            .await
            .unwrap();
    }
    for t in &targets {
        unpublish(&node, id, t).await.unwrap();
    }
    unstage(&node, id, &staging).await.unwrap();
    assert!(env.loops().is_empty());
}

/// csi-sanity: NodeGetVolumeStats of a published volume at a path where it is not.
#[tokio::test]
async fn stats_of_a_published_volume_elsewhere_are_not_found() {
    require_root!();
    let env = Env::new();
    let node = env.service();
    let id = "pvc-where";
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let vc = env.volume(id, 32 * MIB, Some("ext4"));
    let staging = env.kubelet("staging/where");
    let target = env.kubelet("pods/w/mount");
    stage(&node, stage_req(id, &staging, cap.clone(), &vc))
        .await
        .unwrap();
    publish(&node, publish_req(id, &staging, &target, cap, false))
        .await
        .unwrap();
    stats(&node, id, &target).await.unwrap();
    let other = env.kubelet("pods/other");
    std::fs::create_dir_all(&other).unwrap();
    for path in ["some/path", other.as_str(), &env.kubelet("pods/none")] {
        let e = stats(&node, id, path).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{path}: {e:?}");
    }
    unpublish(&node, id, &target).await.unwrap();
    unstage(&node, id, &staging).await.unwrap();
    assert!(env.loops().is_empty());
}
