//! Orphans on the RDS: files without disks, disks without files, and disks made outside CSI.
//! ListVolumes shows only disks of the driver's grammar, and `rds-csi orphans` reports exactly
//! the injected orphans, never a live volume or a snapshot's file, and deletes only those.

use std::collections::BTreeSet;
use std::process::Command;

use csi_proto::v1::CreateSnapshotRequest;
use e2e::{binary, create_request, list_volumes, mount_cap, Env, BASE_PATH, MIB};
use rstest::rstest;

/// (kind, path, slot) of each reported orphan, and the raw JSON.
type Report = (
    BTreeSet<(String, Option<String>, Option<String>)>,
    serde_json::Value,
);

fn orphans(env: &Env, extra: &[&str]) -> Report {
    let out = Command::new(binary("rds-csi"))
        .arg("orphans")
        .args(["--output", "json"])
        .args(env.mock.rds_args(&env.keys))
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rds-csi orphans {extra:?}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("orphans output is not JSON ({e}): {stdout}"));
    let set = doc["orphans"]
        .as_array()
        .unwrap_or_else(|| panic!("no `orphans` array: {doc}"))
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_string(),
                o["path"].as_str().map(str::to_string),
                o["slot"].as_str().map(str::to_string),
            )
        })
        .collect();
    (set, doc)
}

fn entry(kind: &str, path: &str, slot: Option<&str>) -> (String, Option<String>, Option<String>) {
    (
        kind.to_string(),
        Some(path.to_string()),
        slot.map(str::to_string),
    )
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_are_reported_exactly_and_deleted_alone(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("orphans", profile).await.unwrap();
    let mut ctl = env.controller();

    // What CSI made: two volumes and a snapshot (whose file sits in the base path).
    let (a, b) = (env.name("a"), env.name("b"));
    for n in [&a, &b] {
        ctl.create_volume(create_request(n, 8 * MIB, mount_cap("ext4")))
            .await
            .unwrap();
    }
    let snap = ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: a.clone(),
            name: env.name("snap"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let snap_file = env
        .mock
        .disks()
        .unwrap()
        .into_iter()
        .find(|d| d.slot == snap.snapshot_id)
        .unwrap()
        .file_path;

    // Orphans of the driver's grammar: a file without a disk and a disk without a file. A file
    // of the grammar in a directory below the base path is not the driver's.
    let lost = format!("{BASE_PATH}/{}.img", env.name("lost"));
    let lost_sub = format!("{BASE_PATH}/fast/{}.img", env.name("lostsub"));
    let ghost = env.name("ghost");
    let ghost_path = format!("{BASE_PATH}/{ghost}.img");
    env.exec_ok(&format!("/mock orphan-file path={lost} size=1M"))
        .await
        .unwrap();
    env.exec_ok(&format!("/mock orphan-file path={lost_sub} size=2M"))
        .await
        .unwrap();
    env.exec_ok(&format!(
        "/mock orphan-disk slot={ghost} file-path={ghost_path} size=4M"
    ))
    .await
    .unwrap();
    assert!(
        !env.mock
            .files()
            .unwrap()
            .iter()
            .any(|f| f.path == ghost_path),
        "orphan-disk must not create a file"
    );
    // Not the driver's: files outside the grammar or the base path, and disks made by hand.
    for cmd in [
        format!("/mock orphan-file path={BASE_PATH}/Notes.TXT size=1K"),
        "/mock orphan-file path=/storage-pool/elsewhere/lost.img size=1M".to_string(),
        // Some RouterOS builds do not create a disk's directory (profile dirs-no-create).
        "/file add type=directory name=storage-pool/other-app".to_string(),
        "/disk add type=file file-path=/storage-pool/other-app/data.img file-size=4M slot=other-app"
            .to_string(),
        format!(
            "/disk add type=file file-path={BASE_PATH}/Manual_Disk.img file-size=4M slot=manual-disk"
        ),
    ] {
        env.exec_ok(&cmd).await.unwrap();
    }

    // ListVolumes: the CSI volumes, and the grammar disk whose file is gone (it cannot be told
    // from a volume of this driver without its file); never the hand-made disks.
    let listed: BTreeSet<String> = list_volumes(&mut ctl)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.volume_id)
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([a.clone(), b.clone(), ghost.clone()])
    );

    let want = BTreeSet::from([
        entry("file-without-disk", &lost, None),
        entry("disk-without-file", &ghost_path, Some(&ghost)),
    ]);
    let (found, doc) = orphans(&env, &["--grace-period", "0s"]);
    assert_eq!(found, want, "{doc:#}");
    let text = doc.to_string();
    for live in [&a, &b, &snap.snapshot_id] {
        assert!(
            !text.contains(&format!("/{live}")),
            "{live} reported: {doc:#}"
        );
    }
    assert!(
        !text.contains(&snap_file),
        "snapshot file reported: {doc:#}"
    );
    let size_of = |p: &str| {
        doc["orphans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["path"] == p)
            .and_then(|o| o["size_bytes"].as_u64())
    };
    assert_eq!(size_of(&lost), Some(MIB as u64));
    assert_eq!(size_of(&lost_sub), None, "below the base path: {doc:#}");

    // The default grace period protects fresh files (a create may be in progress); a disk
    // without a file has nothing to wait for.
    let (found, doc) = orphans(&env, &[]);
    assert_eq!(
        found,
        BTreeSet::from([entry("disk-without-file", &ghost_path, Some(&ghost))]),
        "{doc:#}"
    );

    // Reporting changed nothing; --delete removes exactly the orphans.
    let disks_before = env.mock.disks().unwrap();
    let files_before = env.mock.files().unwrap();
    assert!(files_before.iter().any(|f| f.path == lost));
    orphans(&env, &["--grace-period", "0s", "--delete"]);
    let disks_after = env.mock.disks().unwrap();
    let files_after = env.mock.files().unwrap();
    let expect_disks: Vec<_> = disks_before
        .into_iter()
        .filter(|d| d.slot != ghost)
        .collect();
    let expect_files: Vec<_> = files_before
        .into_iter()
        .filter(|f| f.path != lost)
        .collect();
    assert_eq!(disks_after, expect_disks);
    assert_eq!(files_after, expect_files);
    assert!(orphans(&env, &["--grace-period", "0s"]).0.is_empty());
    // The file below the base path survived; it is removed by hand, as its owner would.
    env.exec_ok(&format!("/file remove [find name=\"{}\"]", &lost_sub[1..]))
        .await
        .unwrap();

    // The CSI objects survived and are still usable.
    assert_eq!(env.cleanup_run().await.unwrap(), (2, 1));
}
