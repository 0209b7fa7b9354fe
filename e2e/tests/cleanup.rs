//! Clean-up by run ID: everything a run made (volumes, snapshots, clones) is found through
//! ListVolumes/ListSnapshots and deleted through CSI, and the RDS is left exactly as it was
//! before the run: disks that were already there, the driver's or not, are untouched.

use std::collections::BTreeSet;

use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType};
use csi_proto::v1::{CreateSnapshotRequest, VolumeContentSource};
use e2e::{
    create_request, list_snapshots, list_volumes, mount_cap, Env, MockDisk, MockFile, BASE_PATH,
    MIB,
};
use rstest::rstest;

fn everything(env: &Env) -> (Vec<MockDisk>, Vec<MockFile>) {
    (env.mock.disks().unwrap(), env.mock.files().unwrap())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_deletes_the_run_and_nothing_else(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("cleanup", profile).await.unwrap();
    let mut ctl = env.controller();

    // Before the run: another tool's disk, and a volume of the driver's grammar from an
    // earlier run (it is listed by ListVolumes, but its ID lacks this run's prefix). Their
    // directories first: some RouterOS builds do not create them (profile dirs-no-create).
    for dir in ["storage-pool/other-app", &BASE_PATH[1..]] {
        env.exec_ok(&format!("/file add type=directory name={dir}"))
            .await
            .unwrap();
    }
    env.exec_ok(
        "/disk add type=file file-path=/storage-pool/other-app/keep.img file-size=4M slot=keep-other",
    )
    .await
    .unwrap();
    env.exec_ok(&format!(
        "/disk add type=file file-path={BASE_PATH}/pvc-preexisting.img file-size=8M \
         slot=pvc-preexisting nvme-tcp-export=yes"
    ))
    .await
    .unwrap();
    let keep_snap = ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: "pvc-preexisting".into(),
            name: "keep-snap".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let before = everything(&env);
    assert_eq!(before.0.len(), 3);

    // The run: volumes, snapshots of two of them, and a clone from one snapshot.
    let names: Vec<String> = (0..5).map(|i| env.name(&format!("v{i}"))).collect();
    for n in &names {
        ctl.create_volume(create_request(n, 8 * MIB, mount_cap("ext4")))
            .await
            .unwrap();
    }
    let mut snaps = Vec::new();
    for (i, src) in names.iter().take(2).enumerate() {
        let s = ctl
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: src.clone(),
                name: env.name(&format!("s{i}")),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        snaps.push(s.snapshot_id);
    }
    let mut clone = create_request(&env.name("clone"), 8 * MIB, mount_cap("ext4"));
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: snaps[0].clone(),
        })),
    });
    ctl.create_volume(clone).await.unwrap();
    assert_eq!(env.mock.disks().unwrap().len(), 3 + 5 + 2 + 1);

    assert_eq!(env.cleanup_run().await.unwrap(), (6, 2));

    // Exactly what was there before, byte for byte in the state.
    assert_eq!(everything(&env), before);
    let listed: BTreeSet<String> = list_volumes(&mut ctl)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.volume_id)
        .collect();
    assert_eq!(listed, BTreeSet::from(["pvc-preexisting".to_string()]));
    let snaps_left: Vec<String> = list_snapshots(&mut ctl)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect();
    assert_eq!(snaps_left, vec![keep_snap.snapshot_id]);
    // Running it again finds nothing: clean-up is idempotent.
    assert_eq!(env.cleanup_run().await.unwrap(), (0, 0));
}
