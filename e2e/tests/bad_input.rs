//! Hostile and malformed input: shell and RouterOS metacharacters in names, IDs and parameters,
//! paths outside the base, bad sizes and filesystems. Each is refused with the right code and
//! nothing reaches the RDS (the mock's `/disk` and `/file` history is unchanged), or, for names,
//! is turned into a safe ID before it does.

use std::collections::HashMap;

use csi_proto::v1::*;
use e2e::{block_cap, create_request, mount_cap, Env, BASE_PATH, GIB, MIB, NODE_ID};
use tonic::Code;

/// Shell and RouterOS metacharacters, each in a value of its own.
const HOSTILE: &[&str] = &[
    "; rm -rf /",
    "$(reboot)",
    "`reboot`",
    "\"quoted\"",
    "'single'",
    "[find]",
    "[/system reboot]",
    "a b",
    "a=b",
    "line\nbreak",
    "cr\rreturn",
    "back\\slash",
    "semi;colon",
    "{braces}",
    "../up",
    "..",
    "tab\there",
    "nul\0byte",
    "ünïcode",
];

/// Whether the node's volume-ID grammar (`[A-Za-z0-9._-]`, as kubelet allows) refuses `id`.
/// IDs it accepts are well-formed for the node even when the controller never made them.
fn node_refuses(id: &str) -> bool {
    id.starts_with('.')
        || id.len() > 128
        || id
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"._-".contains(&b)))
}

fn expect_code<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, codes: &[Code]) {
    match r {
        Ok(v) => panic!("{what}: expected {codes:?}, got Ok({v:?})"),
        Err(e) => assert!(
            codes.contains(&e.code()),
            "{what}: expected {codes:?}, got {e:?}"
        ),
    }
}

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn bad_parameters_and_sizes_never_reach_the_rds() {
    let env = Env::start("badparam").await.unwrap();
    let mut ctl = env.controller();
    let before = env.rds_commands().await.unwrap();
    let name = env.name("p");
    let create = |p: HashMap<String, String>| {
        let mut r = create_request(&name, 64 * MIB, mount_cap("ext4"));
        r.parameters = p;
        r
    };

    let mut bad_paths: Vec<String> = vec![
        format!("{BASE_PATH}/../escape"),
        format!("{BASE_PATH}/a/../../escape"),
        format!("{BASE_PATH}-sibling"),
        "/storage-pool/other".into(),
        "/storage-pool".into(),
        "/".into(),
        "relative/path".into(),
        "storage-pool/metal-csi".into(),
    ];
    bad_paths.extend(HOSTILE.iter().map(|h| format!("{BASE_PATH}/{h}")));
    for path in &bad_paths {
        let r = ctl
            .create_volume(create(params(&[("volumePath", path)])))
            .await;
        expect_code(&format!("volumePath {path:?}"), r, &[Code::InvalidArgument]);
    }
    for (key, value) in [
        ("nvmeAddress", "10.0.0.1; rm -rf /"),
        ("nvmeAddress", "$(reboot)"),
        ("nvmeAddress", "rds.example.com"),
        ("nvmePort", "4420 slot=x"),
        ("nvmePort", "0"),
        ("nvmePort", "65536"),
        ("fsType", "btrfs"),
        ("fsType", "ext4; mkfs.ext4 /dev/sda"),
        ("csi.storage.k8s.io/fstype", "zfs"),
        ("mkfsOptions", "-O x; rm -rf /"),
        ("mkfsOptions", "$(reboot)"),
        ("ctrlLossTmo", "-2"),
        ("keepAliveTmo", "`id`"),
        ("slot", "x"),
        ("file-path", "/storage-pool/x.img"),
        ("nvmeFencing", "yes"),
        // Fencing is off on this controller.
        ("nvmeFencing", "true"),
    ] {
        let r = ctl.create_volume(create(params(&[(key, value)]))).await;
        expect_code(&format!("{key}={value:?}"), r, &[Code::InvalidArgument]);
    }
    let off = ctl
        .create_volume(create(params(&[("nvmeFencing", "true")])))
        .await
        .unwrap_err();
    assert!(
        off.message().contains("parameters.nvmeFencing")
            && off.message().contains("--nvme-fencing"),
        "{off:?}"
    );

    // Sizes.
    const TIB: i64 = 1 << 40;
    for (required, limit, codes) in [
        (-1, 0, &[Code::InvalidArgument][..]),
        (0, -1, &[Code::InvalidArgument]),
        (2 * GIB, GIB, &[Code::InvalidArgument]),
        (16 * TIB + 1, 0, &[Code::OutOfRange]),
        (17 * TIB, 0, &[Code::OutOfRange]),
        (i64::MAX, 0, &[Code::OutOfRange]),
        // Allocation is in whole MiB: 1 MiB + 1 byte cannot fit under a limit of 1 MiB + 1.
        (MIB + 1, MIB + 1, &[Code::OutOfRange]),
    ] {
        let mut r = create(HashMap::new());
        r.capacity_range = Some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        });
        let res = ctl.create_volume(r).await;
        expect_code(&format!("required {required} limit {limit}"), res, codes);
    }

    // Capabilities.
    for fs in ["btrfs", "ntfs", "ext4 -F", "$(reboot)"] {
        let r = ctl
            .create_volume(create_request(&name, 64 * MIB, mount_cap(fs)))
            .await;
        expect_code(&format!("fs_type {fs:?}"), r, &[Code::InvalidArgument]);
    }
    let mut no_caps = create_request(&name, 64 * MIB, block_cap());
    no_caps.volume_capabilities.clear();
    expect_code(
        "no capabilities",
        ctl.create_volume(no_caps).await,
        &[Code::InvalidArgument],
    );
    expect_code(
        "empty name",
        ctl.create_volume(create_request("", 64 * MIB, block_cap()))
            .await,
        &[Code::InvalidArgument],
    );

    assert_eq!(env.rds_commands().await.unwrap(), before);
    assert!(env.mock.disks().unwrap().is_empty());
    assert!(env.mock.files().unwrap().is_empty());
}

#[tokio::test]
async fn hostile_volume_and_snapshot_ids_never_reach_the_rds() {
    let env = Env::start("badid").await.unwrap();
    let mut ctl = env.controller();
    let mut node = env.node();
    let before = env.rds_commands().await.unwrap();
    let mut ids: Vec<String> = HOSTILE
        .iter()
        .map(|h| format!("{}-{h}", env.run_id))
        .collect();
    // Outside the controller's grammar only: too long for a slot, upper case.
    ids.push("a".repeat(65));
    ids.push(format!("{}-Upper-Case", env.run_id));
    let staging = env.path("staging").display().to_string();
    let target = env.path("target").display().to_string();

    for id in &ids {
        let w = |rpc: &str| format!("{rpc}({id:?})");
        // Deleting what cannot exist succeeds (CSI: idempotent) without asking the RDS.
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", w("DeleteVolume")));
        ctl.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", w("DeleteSnapshot")));
        let nf = &[Code::NotFound, Code::InvalidArgument][..];
        expect_code(
            &w("ControllerPublishVolume"),
            ctl.controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: NODE_ID.into(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            })
            .await,
            nf,
        );
        expect_code(
            &w("ControllerGetVolume"),
            ctl.controller_get_volume(ControllerGetVolumeRequest {
                volume_id: id.clone(),
            })
            .await,
            nf,
        );
        expect_code(
            &w("ValidateVolumeCapabilities"),
            ctl.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: id.clone(),
                volume_capabilities: vec![mount_cap("ext4")],
                ..Default::default()
            })
            .await,
            nf,
        );
        expect_code(
            &w("ControllerExpandVolume"),
            ctl.controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 2 * GIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await,
            nf,
        );
        expect_code(
            &w("CreateSnapshot source"),
            ctl.create_snapshot(CreateSnapshotRequest {
                source_volume_id: id.clone(),
                name: env.name("snap"),
                ..Default::default()
            })
            .await,
            nf,
        );
        expect_code(
            &w("GetSnapshot"),
            ctl.get_snapshot(GetSnapshotRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            })
            .await,
            nf,
        );
        expect_code(
            &w("CreateVolume from snapshot"),
            ctl.create_volume(CreateVolumeRequest {
                volume_content_source: Some(VolumeContentSource {
                    r#type: Some(volume_content_source::Type::Snapshot(
                        volume_content_source::SnapshotSource {
                            snapshot_id: id.clone(),
                        },
                    )),
                }),
                ..create_request(&env.name("restore"), 64 * MIB, mount_cap("ext4"))
            })
            .await,
            nf,
        );
        if !node_refuses(id) {
            continue;
        }
        expect_code(
            &w("NodeStageVolume"),
            node.node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
                volume_capability: Some(mount_cap("ext4")),
                volume_context: HashMap::from([(
                    "filePath".to_string(),
                    format!("{BASE_PATH}/{id}.img"),
                )]),
                ..Default::default()
            })
            .await,
            &[Code::InvalidArgument],
        );
        expect_code(
            &w("NodePublishVolume"),
            node.node_publish_volume(NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            })
            .await,
            &[Code::InvalidArgument],
        );
        expect_code(
            &w("NodeUnstageVolume"),
            node.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
            })
            .await,
            &[Code::InvalidArgument],
        );
    }
    expect_code(
        "ListVolumes with a hostile token",
        ctl.list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: "x; rm -rf /".into(),
        })
        .await,
        &[Code::Aborted],
    );
    assert_eq!(env.rds_commands().await.unwrap(), before);
    assert!(env.mock.disks().unwrap().is_empty());
    assert_eq!(env.host.leftovers(), Vec::<String>::new());
}

#[tokio::test]
async fn hostile_stage_contexts_are_refused() {
    let env = Env::start("badctx").await.unwrap();
    let mut node = env.node();
    let id = env.name("v");
    let staging = env.path("staging").display().to_string();
    let good_file = format!("{BASE_PATH}/{id}.img");
    let mut cases: Vec<(&str, String)> = vec![
        ("filePath", format!("{BASE_PATH}/../../../etc/passwd")),
        ("filePath", "relative.img".into()),
        ("nqn", format!("nqn.2000-02.com.mikrotik:{id}; rm -rf /")),
        ("nqn", "nqn.2014-08.org.nvmexpress.discovery".into()),
        ("nvmeAddress", "$(reboot)".into()),
        ("nvmeAddress", "rds.example.com".into()),
        ("nvmePort", "99999".into()),
        ("fsType", "btrfs".into()),
        // Only allow-listed mkfs flags: `-d DIR` would copy a host directory into the volume.
        ("mkfsOptions", "-E \u{7}bell".into()),
        ("mkfsOptions", "-d var".into()),
        ("ctrlLossTmo", "-5".into()),
    ];
    // `...img` is a fine file name, so `..` is left out here.
    cases.extend(
        HOSTILE
            .iter()
            .filter(|h| **h != "..")
            .map(|h| ("filePath", format!("{BASE_PATH}/{h}.img"))),
    );
    for (key, value) in &cases {
        let mut ctx = HashMap::from([("filePath".to_string(), good_file.clone())]);
        ctx.insert(key.to_string(), value.clone());
        let r = node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.clone(),
                volume_capability: Some(mount_cap("ext4")),
                volume_context: ctx,
                ..Default::default()
            })
            .await;
        expect_code(
            &format!("stage with {key}={value:?}"),
            r,
            &[Code::InvalidArgument],
        );
    }
    // Paths the CO controls are checked too.
    for path in ["relative/staging", "", "/tmp/../etc"] {
        let r = node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: path.into(),
                volume_capability: Some(mount_cap("ext4")),
                volume_context: HashMap::from([("filePath".to_string(), good_file.clone())]),
                ..Default::default()
            })
            .await;
        expect_code(
            &format!("staging path {path:?}"),
            r,
            &[Code::InvalidArgument],
        );
    }
    assert_eq!(env.host.leftovers(), Vec::<String>::new());
    assert!(!env.path("staging").exists());
}

#[tokio::test]
async fn hostile_names_become_safe_ids() {
    let env = Env::start("badname").await.unwrap();
    let mut ctl = env.controller();
    let mut made = Vec::new();
    for h in HOSTILE {
        let name = format!("{}{h}", env.run_id);
        let vol = ctl
            .create_volume(create_request(&name, 8 * MIB, mount_cap("ext4")))
            .await
            .unwrap_or_else(|e| panic!("create {name:?}: {e:?}"))
            .into_inner()
            .volume
            .unwrap();
        let id = vol.volume_id;
        // A name outside the ID grammar is hashed: `vol-<uuid>`, the same on every retry.
        assert!(id.starts_with("vol-") && id.len() == 40, "{name:?} -> {id}");
        let again = ctl
            .create_volume(create_request(&name, 8 * MIB, mount_cap("ext4")))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(again.volume_id, id);
        made.push(id);
    }
    let unique: std::collections::BTreeSet<_> = made.iter().collect();
    assert_eq!(unique.len(), made.len(), "two names hashed to one ID");
    // Only the hashed IDs reached the RDS, never the names.
    for h in env.rds_commands().await.unwrap() {
        assert!(
            h.command.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && !h.command.contains(&env.run_id),
            "a name leaked into {:?}",
            h.command
        );
    }
    let slots: std::collections::BTreeSet<String> = env
        .mock
        .disks()
        .unwrap()
        .into_iter()
        .map(|d| d.slot)
        .collect();
    assert_eq!(slots, made.iter().cloned().collect());
    for id in &made {
        assert_eq!(env.disk_adds(id).await.unwrap(), 1, "{id}");
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(env.mock.disks().unwrap().is_empty());
    assert!(env.mock.files().unwrap().is_empty());
}

#[tokio::test]
async fn negative_max_entries_is_refused_before_asking_the_rds() {
    let env = Env::start("badmax").await.unwrap();
    let mut ctl = env.controller();
    let before = env.rds_commands().await.unwrap();
    expect_code(
        "ListVolumes max_entries -1",
        ctl.list_volumes(ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await,
        &[Code::InvalidArgument],
    );
    expect_code(
        "ListSnapshots max_entries -1",
        ctl.list_snapshots(ListSnapshotsRequest {
            max_entries: -1,
            ..Default::default()
        })
        .await,
        &[Code::InvalidArgument],
    );
    assert_eq!(env.rds_commands().await.unwrap(), before);
}
