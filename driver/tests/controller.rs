//! The Controller service against an embedded mock-rds over real SSH: every RPC, the error codes
//! a CO acts on, idempotency, races, and the csi-sanity expectations for these RPCs.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use csi_proto::v1::*;
use mock_rds::{Auth, Config, Fault, MockRds};
use tonic::{Code, Request};

use common::controller::*;

#[tokio::test]
async fn create_volume_validates_and_is_idempotent() {
    let f = fixture().await;
    let svc = &f.svc;
    // Missing name, missing capabilities, RWX filesystem, unknown fs, bad parameters.
    assert_eq!(
        code(svc.create_volume(Request::new(create_req("", GIB))).await),
        Code::InvalidArgument
    );
    let mut no_caps = create_req("v", GIB);
    no_caps.volume_capabilities.clear();
    assert_eq!(
        code(svc.create_volume(Request::new(no_caps)).await),
        Code::InvalidArgument
    );
    let mut rwx_fs = create_req("v", GIB);
    rwx_fs.volume_capabilities = vec![mount_cap(Mode::MultiNodeMultiWriter)];
    let err = svc.create_volume(Request::new(rwx_fs)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("Block"), "{}", err.message());
    let mut bad_param = create_req("v", GIB);
    bad_param.parameters =
        HashMap::from([("volumePath".into(), "/storage-pool/metal-csi x=y".into())]);
    let err = svc
        .create_volume(Request::new(bad_param))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("volumePath"));
    let mut too_big = create_req("v", 0);
    too_big.capacity_range = Some(CapacityRange {
        required_bytes: 17 << 40,
        limit_bytes: 0,
    });
    assert_eq!(
        code(svc.create_volume(Request::new(too_big)).await),
        Code::OutOfRange
    );
    let mut long_path = create_req("v", GIB);
    long_path.parameters =
        HashMap::from([("volumePath".into(), format!("{BASE}/{}", "d".repeat(230)))]);
    let err = svc
        .create_volume(Request::new(long_path))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("volumePath"), "{}", err.message());
    assert_eq!(f.mock.history().len(), 0, "nothing is sent for bad input");

    // 1.5 GiB is allocated and reported as at least 1.5 GiB.
    let name = "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8";
    let v = f.create(name, 3 * GIB / 2).await;
    assert_eq!(v.volume_id, name, "pvc names are their own IDs");
    assert!(v.capacity_bytes >= 3 * GIB / 2);
    assert_eq!(f.mock.disk(name).unwrap().file_size, (3 * GIB / 2) as u64);
    let ctx = &v.volume_context;
    assert_eq!(ctx["nqn"], format!("nqn.2000-02.com.mikrotik:{name}"));
    assert_eq!(ctx["nvmeAddress"], "10.42.68.1");
    assert_eq!(ctx["nvmePort"], "4420");
    assert_eq!(ctx["filePath"], format!("{BASE}/{name}.img"));
    assert_eq!(ctx["fsType"], "ext4");
    assert!(!v.accessible_topology.is_empty());

    // Same name, same size: same volume, no second add. Different size: AlreadyExists.
    let again = f.create(name, 3 * GIB / 2).await;
    assert_eq!(again.volume_id, v.volume_id);
    assert_eq!(f.adds(), 1);
    assert_eq!(
        code(
            svc.create_volume(Request::new(create_req(name, 4 * GIB)))
                .await
        ),
        Code::AlreadyExists
    );

    // Names that are not valid slots map deterministically to valid IDs.
    // csi-sanity's longest name: 128 characters.
    let long = format!("{}{}", "Sanity-".repeat(18), "xy");
    assert_eq!(long.len(), 128);
    let a = f.create(&long, GIB).await;
    let b = f.create(&long, GIB).await;
    assert_eq!(a.volume_id, b.volume_id);
    assert!(a.volume_id.starts_with("vol-"));
    assert!(f.mock.disk(&a.volume_id).is_some());
}

/// mkfs runs on the node, which sees the host's files: options that name host paths
/// (`mke2fs -d DIR` copies a directory into the new filesystem) are refused at CreateVolume.
#[tokio::test]
async fn create_refuses_mkfs_options_that_name_host_paths() {
    let f = fixture().await;
    for (fs, options) in [
        ("ext4", "-d var"),
        ("ext4", "-m 0 -d /"),
        ("ext3", "-l /etc/shadow"),
        ("ext4", "-z /tmp/undo"),
        ("ext4", "-E root_owner=0:0 var"),
        ("xfs", "-p /etc/passwd"),
        ("xfs", "-d name=/dev/sda"),
        ("xfs", "-l logdev=/dev/sda"),
    ] {
        let mut req = create_req("pvc-mkfs", GIB);
        req.parameters = HashMap::from([
            ("csi.storage.k8s.io/fstype".into(), fs.into()),
            ("mkfsOptions".into(), options.into()),
        ]);
        let err = f.svc.create_volume(Request::new(req)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{fs} `{options}`");
        assert!(err.message().contains("mkfsOptions"), "{}", err.message());
    }
    assert_eq!(f.mock.history().len(), 0, "nothing is sent for bad input");
    // Options that only shape the new filesystem are passed through.
    for (fs, options) in [
        (
            "ext4",
            "-m 0 -E lazy_itable_init=0,root_owner=0:0 -O ^has_journal -L data",
        ),
        ("xfs", "-m reflink=1,crc=1 -d agcount=4 -i size=512 -L data"),
    ] {
        let mut req = create_req(&format!("pvc-mkfs-{fs}"), GIB);
        req.parameters = HashMap::from([
            ("csi.storage.k8s.io/fstype".into(), fs.into()),
            ("mkfsOptions".into(), options.into()),
        ]);
        let v = f.svc.create_volume(Request::new(req)).await.unwrap();
        let v = v.into_inner().volume.unwrap();
        assert_eq!(v.volume_context["mkfsOptions"], options);
    }
}

#[tokio::test]
async fn create_without_capacity_gets_the_default_size() {
    let f = fixture().await;
    let mut req = create_req("pvc-default-size", 0);
    req.capacity_range = None;
    let v = f.create_from(req).await;
    assert_eq!(v.capacity_bytes, GIB);
    assert_eq!(f.mock.disk("pvc-default-size").unwrap().file_size, 1 << 30);
}

#[tokio::test]
async fn snapshot_with_a_maximum_length_name() {
    let f = fixture().await;
    f.create("pvc-snap-src", GIB).await;
    let name = "s".repeat(128);
    let req = || CreateSnapshotRequest {
        name: name.clone(),
        source_volume_id: "pvc-snap-src".into(),
        ..Default::default()
    };
    let a = f
        .svc
        .create_snapshot(Request::new(req()))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let b = f
        .svc
        .create_snapshot(Request::new(req()))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(a.snapshot_id, b.snapshot_id);
    assert!(a.snapshot_id.len() <= 64 && a.snapshot_id.starts_with("snap-"));
    assert!(f.mock.disk(&a.snapshot_id).is_some());
}

#[tokio::test]
async fn concurrent_creates_of_one_name_make_one_disk() {
    let f = Arc::new(fixture().await);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                f.svc
                    .create_volume(Request::new(create_req("pvc-race", GIB)))
                    .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            t.await
                .unwrap()
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    assert!(ids.iter().all(|id| id == "pvc-race"));
    assert_eq!(f.adds(), 1, "exactly one /disk add");
}

#[tokio::test]
async fn delete_removes_disk_and_file_and_is_idempotent() {
    let f = fixture().await;
    let v = f.create("pvc-del", GIB).await;
    let path = format!("{BASE}/pvc-del.img");
    assert!(f.file_exists(&path));
    let del = |id: &str| DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        code(f.svc.delete_volume(Request::new(del(""))).await),
        Code::InvalidArgument
    );
    f.svc
        .delete_volume(Request::new(del(&v.volume_id)))
        .await
        .unwrap();
    assert!(f.mock.disk("pvc-del").is_none());
    assert!(!f.file_exists(&path), "the backing file is removed too");
    f.svc
        .delete_volume(Request::new(del(&v.volume_id)))
        .await
        .unwrap();
    f.svc
        .delete_volume(Request::new(del("pvc-never-existed")))
        .await
        .unwrap();
    f.svc
        .delete_volume(Request::new(del("Not A Valid ID")))
        .await
        .unwrap();

    // A failed file removal fails the call (busy: try again); the retry finds and removes the
    // leftover file.
    f.create("pvc-del2", GIB).await;
    fail_next_file_remove(&f.mock);
    assert_eq!(
        code(f.svc.delete_volume(Request::new(del("pvc-del2"))).await),
        Code::Unavailable
    );
    assert!(f.mock.disk("pvc-del2").is_none());
    assert!(f.file_exists(&format!("{BASE}/pvc-del2.img")));
    f.svc
        .delete_volume(Request::new(del("pvc-del2")))
        .await
        .unwrap();
    assert!(!f.file_exists(&format!("{BASE}/pvc-del2.img")));

    // A disk the driver did not make is never deleted, even with a volume-like name.
    f.mock
        .add_orphan_disk("pvc-foreign", "/other-pool/pvc-foreign.img", 1 << 30);
    assert_eq!(
        code(f.svc.delete_volume(Request::new(del("pvc-foreign"))).await),
        Code::FailedPrecondition
    );
    assert!(f.mock.disk("pvc-foreign").is_some());
}

/// The leftover search after a delete removes `<id>.img` only when no disk uses it: a disk of
/// another slot (an imported volume, another tool's) may have that file.
#[tokio::test]
async fn leftover_cleanup_never_removes_a_file_a_disk_uses() {
    let f = fixture().await;
    let volume_file = format!("{BASE}/pvc-shared.img");
    let nested_file = format!("{BASE}/fast/pvc-shared.img");
    let snapshot_id = "snap-6ec89291-e651-5af7-8470-1168d64acbcd-at-6ec89291e6";
    let snapshot_file = format!("{BASE}/{snapshot_id}.img");
    for (slot, path) in [
        ("imported-1", &volume_file),
        ("imported-2", &nested_file),
        ("imported-3", &snapshot_file),
    ] {
        f.mock.add_orphan_file(path, GIB as u64);
        f.mock.add_orphan_disk(slot, path, GIB as u64);
    }
    f.svc
        .delete_volume(Request::new(DeleteVolumeRequest {
            volume_id: "pvc-shared".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    f.svc
        .delete_snapshot(Request::new(DeleteSnapshotRequest {
            snapshot_id: snapshot_id.into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    for (slot, path) in [
        ("imported-1", &volume_file),
        ("imported-2", &nested_file),
        ("imported-3", &snapshot_file),
    ] {
        assert!(
            f.file_exists(path),
            "{path}, the file of disk {slot}, was removed"
        );
        assert!(f.mock.disk(slot).is_some());
    }
    assert!(
        !f.mock
            .history()
            .iter()
            .any(|h| h.command.starts_with("/file remove")),
        "no file was removed"
    );
}

/// The next `/file remove` fails as busy, so a delete removes the disk and leaves the file.
fn fail_next_file_remove(mock: &MockRds) {
    mock.inject(Fault::Fail {
        pattern: "^/file remove".into(),
        times: Some(1),
        message: "failure: disk is busy".into(),
        exit_status: 1,
    });
}

/// A snapshot's file names its source, so a delete that removed the disk but not the file,
/// followed by a new snapshot of that name from another volume, leaves two files of one ID.
/// Deleting the snapshot removes both (found by the soak: the first one stayed for good).
#[tokio::test]
async fn snapshot_delete_removes_leftover_files_of_an_earlier_source() {
    let f = fixture().await;
    f.create("pvc-first", GIB).await;
    f.create("pvc-second", GIB).await;
    let snap = |src: &str| {
        f.svc.create_snapshot(Request::new(CreateSnapshotRequest {
            name: "again".into(),
            source_volume_id: src.into(),
            ..Default::default()
        }))
    };
    let del = |id: &str| DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    let first = snap("pvc-first")
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    fail_next_file_remove(&f.mock);
    assert_eq!(
        code(
            f.svc
                .delete_snapshot(Request::new(del(&first.snapshot_id)))
                .await
        ),
        Code::Unavailable
    );
    let second = snap("pvc-second")
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(first.snapshot_id, second.snapshot_id);
    f.svc
        .delete_snapshot(Request::new(del(&second.snapshot_id)))
        .await
        .unwrap();
    let left: Vec<String> = f
        .mock
        .files()
        .into_iter()
        .map(|f| f.path)
        .filter(|p| p.contains(&first.snapshot_id))
        .collect();
    assert!(
        left.is_empty(),
        "files of the deleted snapshot left: {left:?}"
    );
    assert!(f.mock.disk(&first.snapshot_id).is_none());
}

#[tokio::test]
async fn leftover_file_is_never_reused() {
    let f = fixture().await;
    f.mock
        .add_orphan_file(&format!("{BASE}/pvc-stale.img"), 1 << 30);
    let err = f
        .svc
        .create_volume(Request::new(create_req("pvc-stale", GIB)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("pvc-stale.img"), "{}", err.message());
    assert_eq!(f.adds(), 0);
}

#[tokio::test]
async fn list_volumes_shows_exactly_the_drivers_volumes_with_pagination() {
    let f = fixture().await;
    let mut ids = Vec::new();
    for name in ["pvc-a", "e2e-run-1-x", "sanity-Vol-1", "pvc-b", "pvc-c"] {
        ids.push(f.create(name, GIB).await.volume_id);
    }
    // Not ours: another directory, a sibling with a shared prefix, a snapshot-like slot.
    f.mock
        .add_orphan_disk("pvc-sys", "/storage-pool/system/pvc-sys.img", 1 << 30);
    f.mock.add_orphan_disk(
        "pvc-evil",
        "/storage-pool/metal-csi-old/pvc-evil.img",
        1 << 30,
    );
    ids.sort();
    let list = |max: i32, token: &str| ListVolumesRequest {
        max_entries: max,
        starting_token: token.into(),
    };
    let all = f
        .svc
        .list_volumes(Request::new(list(0, "")))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<String> = all
        .entries
        .iter()
        .map(|e| e.volume.clone().unwrap().volume_id)
        .collect();
    assert_eq!(got, ids);
    assert!(all.next_token.is_empty());

    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = f
            .svc
            .list_volumes(Request::new(list(2, &token)))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        paged.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(paged, ids);
    assert_eq!(
        code(
            f.svc
                .list_volumes(Request::new(list(1, "bad token!")))
                .await
        ),
        Code::Aborted
    );
    assert_eq!(
        code(f.svc.list_volumes(Request::new(list(-1, ""))).await),
        Code::InvalidArgument
    );
    // Two listings per page, whatever the number of volumes: the disks, and the files under the
    // base path (for the backing files' condition).
    let before = f.mock.history().len();
    f.svc.list_volumes(Request::new(list(0, ""))).await.unwrap();
    let sent: Vec<String> = f.mock.history()[before..]
        .iter()
        .map(|h| {
            h.command
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(sent, ["/disk print", "/file print"]);
}

#[tokio::test]
async fn get_volume_validate_capacity_and_expand() {
    let f = fixture().await;
    let v = f.create("pvc-g", GIB).await;
    let get = |id: &str| ControllerGetVolumeRequest {
        volume_id: id.into(),
    };
    let got = f
        .svc
        .controller_get_volume(Request::new(get("pvc-g")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, GIB);
    assert_eq!(
        code(
            f.svc
                .controller_get_volume(Request::new(get("pvc-nope")))
                .await
        ),
        Code::NotFound
    );

    let validate = |id: &str, caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let ok = f
        .svc
        .validate_volume_capabilities(Request::new(validate(
            "pvc-g",
            vec![mount_cap(Mode::SingleNodeWriter)],
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    let no = f
        .svc
        .validate_volume_capabilities(Request::new(validate(
            "pvc-g",
            vec![mount_cap(Mode::MultiNodeMultiWriter)],
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty());
    assert_eq!(
        code(
            f.svc
                .validate_volume_capabilities(Request::new(validate(
                    "",
                    vec![mount_cap(Mode::SingleNodeWriter)]
                )))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            f.svc
                .validate_volume_capabilities(Request::new(validate("pvc-g", vec![])))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            f.svc
                .validate_volume_capabilities(Request::new(validate(
                    "pvc-nope",
                    vec![mount_cap(Mode::SingleNodeWriter)]
                )))
                .await
        ),
        Code::NotFound
    );

    let cap = f
        .svc
        .get_capacity(Request::new(GetCapacityRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
    let before = cap.available_capacity;
    f.create("pvc-h", 10 * GIB).await;
    let after = f
        .svc
        .get_capacity(Request::new(GetCapacityRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        before - after.available_capacity,
        10 * GIB,
        "capacity follows allocation"
    );

    let expand = |bytes: i64, cap: VolumeCapability| ControllerExpandVolumeRequest {
        volume_id: v.volume_id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capability: Some(cap),
        ..Default::default()
    };
    let r = f
        .svc
        .controller_expand_volume(Request::new(expand(
            2 * GIB,
            mount_cap(Mode::SingleNodeWriter),
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 2 * GIB);
    assert!(r.node_expansion_required);
    assert_eq!(f.mock.disk("pvc-g").unwrap().file_size, 2 << 30);
    // A retry at the same size still asks the node to grow the filesystem.
    let r = f
        .svc
        .controller_expand_volume(Request::new(expand(
            2 * GIB,
            mount_cap(Mode::SingleNodeWriter),
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(r.node_expansion_required);
    // Smaller is a no-op; block volumes never need node expansion.
    let r = f
        .svc
        .controller_expand_volume(Request::new(expand(GIB, block_cap(Mode::SingleNodeWriter))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 2 * GIB);
    assert!(!r.node_expansion_required);
    let mut missing = expand(GIB, mount_cap(Mode::SingleNodeWriter));
    missing.volume_id = "pvc-nope".into();
    assert_eq!(
        code(f.svc.controller_expand_volume(Request::new(missing)).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn publish_rules_rwo_and_rwx_block() {
    let f = fixture().await;
    f.create("pvc-rwo", GIB).await;
    let mut rwx = create_req("pvc-rwx", GIB);
    rwx.volume_capabilities = vec![block_cap(Mode::MultiNodeMultiWriter)];
    f.svc.create_volume(Request::new(rwx)).await.unwrap();
    let publish = |id: &str, node: &str, cap: VolumeCapability| ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(cap),
        ..Default::default()
    };
    let rwo = mount_cap(Mode::SingleNodeWriter);
    let ctx = f
        .svc
        .controller_publish_volume(Request::new(publish("pvc-rwo", "node-a", rwo.clone())))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(ctx["nvme_nqn"], "nqn.2000-02.com.mikrotik:pvc-rwo");
    assert_eq!(ctx["nvme_port"], "4420");
    assert_eq!(ctx["nvme_address"], "10.42.68.1");
    // Idempotent for the same node; refused for a second node, naming the holder.
    f.svc
        .controller_publish_volume(Request::new(publish("pvc-rwo", "node-a", rwo.clone())))
        .await
        .unwrap();
    let err = f
        .svc
        .controller_publish_volume(Request::new(publish("pvc-rwo", "node-b", rwo.clone())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("node-a"));
    // Incompatible re-publish to the same node.
    let mut ro = publish("pvc-rwo", "node-a", rwo.clone());
    ro.readonly = true;
    assert_eq!(
        code(f.svc.controller_publish_volume(Request::new(ro)).await),
        Code::AlreadyExists
    );
    // A published volume is not deleted.
    let del = DeleteVolumeRequest {
        volume_id: "pvc-rwo".into(),
        ..Default::default()
    };
    assert_eq!(
        code(f.svc.delete_volume(Request::new(del.clone())).await),
        Code::FailedPrecondition
    );
    let unpublish = |id: &str, node: &str| ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        ..Default::default()
    };
    f.svc
        .controller_unpublish_volume(Request::new(unpublish("pvc-rwo", "node-a")))
        .await
        .unwrap();
    f.svc
        .controller_unpublish_volume(Request::new(unpublish("pvc-rwo", "node-a")))
        .await
        .unwrap();
    f.svc
        .controller_publish_volume(Request::new(publish("pvc-rwo", "node-b", rwo.clone())))
        .await
        .unwrap();

    // RWX block: two nodes during a migration, never three.
    let bc = block_cap(Mode::MultiNodeMultiWriter);
    f.svc
        .controller_publish_volume(Request::new(publish("pvc-rwx", "node-a", bc.clone())))
        .await
        .unwrap();
    f.svc
        .controller_publish_volume(Request::new(publish("pvc-rwx", "node-b", bc.clone())))
        .await
        .unwrap();
    assert_eq!(
        code(
            f.svc
                .controller_publish_volume(Request::new(publish("pvc-rwx", "node-c", bc.clone())))
                .await
        ),
        Code::FailedPrecondition
    );
    let listed = f
        .svc
        .controller_get_volume(Request::new(ControllerGetVolumeRequest {
            volume_id: "pvc-rwx".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut nodes = listed.status.unwrap().published_node_ids;
    nodes.sort();
    assert_eq!(nodes, ["node-a", "node-b"]);
    // An empty node ID detaches everywhere.
    f.svc
        .controller_unpublish_volume(Request::new(unpublish("pvc-rwx", "")))
        .await
        .unwrap();
    f.svc
        .controller_publish_volume(Request::new(publish("pvc-rwx", "node-c", bc)))
        .await
        .unwrap();

    // Argument checks.
    assert_eq!(
        code(
            f.svc
                .controller_publish_volume(Request::new(publish("", "n", rwo.clone())))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            f.svc
                .controller_publish_volume(Request::new(publish("pvc-rwo", "", rwo.clone())))
                .await
        ),
        Code::InvalidArgument
    );
    let mut no_cap = publish("pvc-rwo", "n", rwo.clone());
    no_cap.volume_capability = None;
    assert_eq!(
        code(f.svc.controller_publish_volume(Request::new(no_cap)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            f.svc
                .controller_publish_volume(Request::new(publish("pvc-nope", "n", rwo)))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            f.svc
                .controller_unpublish_volume(Request::new(unpublish("", "n")))
                .await
        ),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn snapshots_survive_a_controller_and_rds_restart() {
    let f = fixture().await;
    f.create("pvc-src", 2 * GIB).await;
    let snap_req = |name: &str, src: &str| CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: src.into(),
        ..Default::default()
    };
    assert_eq!(
        code(
            f.svc
                .create_snapshot(Request::new(snap_req("", "pvc-src")))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(f.svc.create_snapshot(Request::new(snap_req("s", ""))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            f.svc
                .create_snapshot(Request::new(snap_req("s", "pvc-nope")))
                .await
        ),
        Code::NotFound
    );
    let snap = f
        .svc
        .create_snapshot(Request::new(snap_req("my-snap", "pvc-src")))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(
        snap.snapshot_id,
        "snap-6ec89291-e651-5af7-8470-1168d64acbcd-at-6ec89291e6"
    );
    assert_eq!(snap.source_volume_id, "pvc-src");
    assert_eq!(snap.size_bytes, 2 * GIB);
    assert!(snap.ready_to_use);
    let created = snap.creation_time.expect("creation time from the file");
    // Idempotent; same name from another source is a conflict.
    let again = f
        .svc
        .create_snapshot(Request::new(snap_req("my-snap", "pvc-src")))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again, snap);
    f.create("pvc-other", GIB).await;
    assert_eq!(
        code(
            f.svc
                .create_snapshot(Request::new(snap_req("my-snap", "pvc-other")))
                .await
        ),
        Code::AlreadyExists
    );
    // A snapshot is not a volume.
    assert!(f
        .mock
        .disk(&snap.snapshot_id)
        .is_some_and(|d| !d.nvme_tcp_export));
    let vols = f
        .svc
        .list_volumes(Request::new(ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(vols
        .entries
        .iter()
        .all(|e| e.volume.as_ref().unwrap().volume_id != snap.snapshot_id));
    assert_eq!(
        code(
            f.svc
                .delete_volume(Request::new(DeleteVolumeRequest {
                    volume_id: snap.snapshot_id.clone(),
                    ..Default::default()
                }))
                .await
        ),
        Code::Ok
    );
    assert!(
        f.mock.disk(&snap.snapshot_id).is_some(),
        "DeleteVolume never deletes a snapshot"
    );

    // Restart the RDS and the controller: source and time come back from the RDS alone.
    let Fixture {
        mock, key, state, ..
    } = f;
    let addr = mock.addr();
    mock.stop().await;
    let mock = MockRds::start(Config {
        listen: addr,
        state_dir: Some(state.path().to_path_buf()),
        auth: Auth::AuthorizedKeys(vec![key.public_key().clone()]),
        ..Config::default()
    })
    .await
    .unwrap();
    let svc = service(&mock, &key);
    let list = svc
        .list_snapshots(Request::new(ListSnapshotsRequest {
            source_volume_id: "pvc-src".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entries.len(), 1);
    let listed = list.entries[0].snapshot.clone().unwrap();
    assert_eq!(listed.source_volume_id, "pvc-src");
    assert_eq!(listed.creation_time, Some(created));
    let by_id = svc
        .list_snapshots(Request::new(ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    let none = svc
        .list_snapshots(Request::new(ListSnapshotsRequest {
            snapshot_id: "snap-unknown".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(none.entries.is_empty());
    assert_eq!(
        code(
            svc.list_snapshots(Request::new(ListSnapshotsRequest {
                starting_token: "zzz".into(),
                ..Default::default()
            }))
            .await
        ),
        Code::Aborted
    );
    let got = svc
        .get_snapshot(Request::new(GetSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.snapshot.unwrap().source_volume_id, "pvc-src");

    // Restore and clone: size at least the source's; smaller is refused.
    let from = |name: &str, bytes: i64, source: SourceType| {
        let mut r = create_req(name, bytes);
        r.volume_content_source = Some(VolumeContentSource {
            r#type: Some(source),
        });
        r
    };
    let snap_src = SourceType::Snapshot(SnapshotSource {
        snapshot_id: snap.snapshot_id.clone(),
    });
    let restored = svc
        .create_volume(Request::new(from(
            "pvc-restored",
            3 * GIB,
            snap_src.clone(),
        )))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored.capacity_bytes, 3 * GIB);
    assert!(restored.content_source.is_some());
    assert_eq!(
        code(
            svc.create_volume(Request::new(from("pvc-small", GIB, snap_src)))
                .await
        ),
        Code::OutOfRange
    );
    let vol_src = SourceType::Volume(VolumeSource {
        volume_id: "pvc-src".into(),
    });
    svc.create_volume(Request::new(from("pvc-clone", 2 * GIB, vol_src)))
        .await
        .unwrap();
    assert!(mock.disk("pvc-clone").unwrap().nvme_tcp_export);
    let missing = SourceType::Snapshot(SnapshotSource {
        snapshot_id: "snap-missing".into(),
    });
    assert_eq!(
        code(
            svc.create_volume(Request::new(from("pvc-m", GIB, missing)))
                .await
        ),
        Code::NotFound
    );

    // Delete: disk and file go; repeat and unknown IDs succeed.
    let del = |id: &str| DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    svc.delete_snapshot(Request::new(del(&snap.snapshot_id)))
        .await
        .unwrap();
    assert!(mock.disk(&snap.snapshot_id).is_none());
    assert!(!mock
        .files()
        .iter()
        .any(|f| f.path.contains(&snap.snapshot_id)));
    svc.delete_snapshot(Request::new(del(&snap.snapshot_id)))
        .await
        .unwrap();
    svc.delete_snapshot(Request::new(del("snap-never")))
        .await
        .unwrap();
    assert_eq!(
        code(svc.delete_snapshot(Request::new(del(""))).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn rds_errors_map_to_grpc_codes() {
    let f = fixture().await;
    f.mock.inject(Fault::Fail {
        pattern: "^/disk add".into(),
        times: Some(1),
        message: "failure: not enough space".into(),
        exit_status: 1,
    });
    assert_eq!(
        code(
            f.svc
                .create_volume(Request::new(create_req("pvc-full", GIB)))
                .await
        ),
        Code::ResourceExhausted
    );
    // The add hangs, alone or inside the create script (and again in the sequence after it).
    f.mock.inject(Fault::Hang {
        pattern: "^/disk add".into(),
        times: None,
    });
    let mut req = Request::new(create_req("pvc-hang", GIB));
    req.metadata_mut()
        .insert("grpc-timeout", "1500m".parse().unwrap());
    let started = std::time::Instant::now();
    assert_eq!(code(f.svc.create_volume(req).await), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the caller's deadline bounds the call"
    );
    f.mock.clear_faults();
    f.create("pvc-after", GIB).await;
}

#[tokio::test]
async fn controller_capabilities_are_advertised() {
    let f = fixture().await;
    let caps = f
        .svc
        .controller_get_capabilities(Request::new(ControllerGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner();
    use controller_service_capability::rpc::Type;
    let types: Vec<Type> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(controller_service_capability::Type::Rpc(r)) => Type::try_from(r.r#type).ok(),
            None => None,
        })
        .collect();
    for t in [
        Type::CreateDeleteVolume,
        Type::PublishUnpublishVolume,
        Type::ListVolumes,
        Type::GetCapacity,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
        Type::ExpandVolume,
        Type::GetVolume,
        Type::VolumeCondition,
        Type::ListVolumesPublishedNodes,
    ] {
        assert!(types.contains(&t), "{t:?}");
    }
}

/// A request with a `grpc-timeout`, as a CO sends it.
fn timed<T>(message: T, timeout: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("grpc-timeout", timeout.parse().unwrap());
    r
}

/// Polls the mock's history (with a deadline) until a hung command matching `needle` arrived.
async fn wait_for_hung(mock: &MockRds, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !mock
        .history()
        .iter()
        .any(|h| h.command.contains(needle) && h.exit_status.is_none())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{needle}` never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// While a clone or snapshot copies from a volume, the source is locked: its DeleteVolume and
/// ControllerExpandVolume wait (and time out here) instead of running during the copy.
#[tokio::test]
async fn the_source_of_a_copy_is_locked_for_the_copy() {
    let f = fixture().await;
    let source = f.create("pvc-src", GIB).await;
    let svc = Arc::new(service(&f.mock, &f.key));
    let delete_source = || DeleteVolumeRequest {
        volume_id: source.volume_id.clone(),
        ..Default::default()
    };
    let expand_source = || ControllerExpandVolumeRequest {
        volume_id: source.volume_id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 2 * GIB,
            limit_bytes: 0,
        }),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    };
    let clone = {
        let mut r = create_req("pvc-clone", GIB);
        r.volume_content_source = Some(VolumeContentSource {
            r#type: Some(SourceType::Volume(VolumeSource {
                volume_id: source.volume_id.clone(),
            })),
        });
        r
    };
    let snapshot = CreateSnapshotRequest {
        name: "snap-of-src".into(),
        source_volume_id: source.volume_id.clone(),
        ..Default::default()
    };

    for copy in ["clone", "snapshot"] {
        // The copy hangs once, so it is certainly in progress while the source is touched.
        f.mock.inject(Fault::Hang {
            pattern: "copy-from".into(),
            times: Some(1),
        });
        f.mock.clear_history();
        let running = {
            let svc = Arc::clone(&svc);
            let (clone, snapshot) = (clone.clone(), snapshot.clone());
            tokio::spawn(async move {
                match copy {
                    "clone" => svc.create_volume(timed(clone, "2S")).await.map(|_| ()),
                    _ => svc.create_snapshot(timed(snapshot, "2S")).await.map(|_| ()),
                }
            })
        };
        wait_for_hung(&f.mock, "copy-from").await;
        let err = svc
            .delete_volume(timed(delete_source(), "300m"))
            .await
            .expect_err("the source was deleted during a copy");
        assert_eq!(err.code(), Code::Aborted, "{copy}: {err:?}");
        let err = svc
            .controller_expand_volume(timed(expand_source(), "300m"))
            .await
            .expect_err("the source was expanded during a copy");
        assert_eq!(err.code(), Code::Aborted, "{copy}: {err:?}");
        let _ = running.await.unwrap();
        assert!(f.mock.disk(&source.volume_id).is_some(), "{copy}");
        assert_eq!(
            f.mock.disk(&source.volume_id).unwrap().file_size,
            GIB as u64,
            "{copy}: the source kept its size"
        );
    }
}

/// Adds each `(slot, file)` as a file disk the driver did not make, then checks the driver
/// neither lists, deletes nor resizes it.
async fn assert_not_the_drivers(f: &Fixture, disks: &[(&str, String)]) {
    for (slot, path) in disks {
        f.mock.add_orphan_file(path, GIB as u64);
        f.mock.add_orphan_disk(slot, path, GIB as u64);
    }
    let listed = f
        .svc
        .list_volumes(Request::new(ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty(), "{:?}", listed.entries);
    for (slot, path) in disks {
        let _ = f
            .svc
            .delete_volume(Request::new(DeleteVolumeRequest {
                volume_id: (*slot).into(),
                ..Default::default()
            }))
            .await;
        assert!(f.mock.disk(slot).is_some(), "disk {slot} was deleted");
        assert!(f.file_exists(path), "{path} was deleted");
        let err = f
            .svc
            .controller_expand_volume(Request::new(ControllerExpandVolumeRequest {
                volume_id: (*slot).into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 2 * GIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{slot}: {err:?}");
    }
}

/// Only what the driver's ID grammar produces is the driver's: a file disk in the base path
/// named for its slot (a diskless node's `nixos-var` export, say) is neither listed nor deleted.
#[tokio::test]
async fn disks_outside_the_id_grammar_are_not_the_drivers() {
    let f = fixture().await;
    assert_not_the_drivers(
        &f,
        &[
            ("nixos-var", format!("{BASE}/nixos-var.img")),
            ("backup-1", format!("{BASE}/nodes/backup-1.img")),
        ],
    )
    .await;
}

/// Only files directly in a base path are the driver's: a disk of the driver's grammar whose file
/// lies in a directory below the base path (another cluster's base, a copy put aside by hand)
/// is neither listed, deleted nor resized.
#[tokio::test]
async fn disks_below_a_base_path_are_not_the_drivers() {
    let f = fixture().await;
    assert_not_the_drivers(
        &f,
        &[("pvc-deep", format!("{BASE}/cluster-b/pvc-deep.img"))],
    )
    .await;
}
