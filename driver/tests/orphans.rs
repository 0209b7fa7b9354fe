//! The orphan scan against an embedded mock-rds: it reports exactly what lost its counterpart
//! and never a snapshot file, a live volume, another tool's disk or a young file.

mod common;

use std::time::Duration;

use rds_csi::orphans::{delete, scan, OrphanKind};
use rds_csi::rds::command::{AllocSize, DiskAdd, NvmeExport, Port};
use rds_csi::rds::{deadline_in, RdsPath, RetryPolicy, Slot};

const BASE: &str = "/storage-pool/metal-csi";

#[tokio::test]
async fn reports_exactly_the_orphans() {
    let key = common::new_key();
    let mock = common::start_mock(key.public_key(), None).await;
    let rds = common::client_for(&mock, key, common::pinned(&mock), RetryPolicy::default());
    let soon = || deadline_in(Duration::from_secs(20));
    let base = RdsPath::new(BASE).unwrap();

    // A live volume and its snapshot.
    let vol = Slot::new("pvc-live").unwrap();
    rds.create_disk(
        &DiskAdd {
            slot: vol.clone(),
            file_path: base.join("pvc-live.img").unwrap(),
            size: Some(AllocSize::round_up(1 << 30).unwrap()),
            copy_from: None,
            export: Some(NvmeExport {
                port: Port::new(4420).unwrap(),
                nqn: vol.nqn(),
            }),
        },
        soon(),
    )
    .await
    .unwrap();
    rds.create_disk(
        &DiskAdd {
            slot: Slot::new("snap-1").unwrap(),
            file_path: base.join("snap-1.from-pvc-live.img").unwrap(),
            size: None,
            copy_from: Some(vol.clone()),
            export: None,
        },
        soon(),
    )
    .await
    .unwrap();
    // Orphans, and things that are not ours.
    mock.add_orphan_file(&format!("{BASE}/pvc-gone.img"), 1 << 20);
    mock.add_orphan_file(&format!("{BASE}/sub/pvc-gone2.img"), 1 << 20);
    mock.add_orphan_file(&format!("{BASE}/notes.txt"), 10);
    mock.add_orphan_file("/storage-pool/metal-csi-old/pvc-sibling.img", 1 << 20);
    mock.add_orphan_disk("pvc-nofile", &format!("{BASE}/pvc-nofile.img"), 1 << 30);
    mock.add_orphan_disk("manual", &format!("{BASE}/manual-disk.img"), 1 << 30);

    // Young files are left alone.
    assert!(scan(
        &rds,
        std::slice::from_ref(&base),
        Duration::from_secs(3600),
        soon()
    )
    .await
    .unwrap()
    .iter()
    .all(|o| o.kind != OrphanKind::FileWithoutDisk));

    let mut found = scan(&rds, std::slice::from_ref(&base), Duration::ZERO, soon())
        .await
        .unwrap();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    let summary: Vec<(OrphanKind, &str)> = found
        .iter()
        .map(|o| (o.kind, o.path.as_deref().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                OrphanKind::FileWithoutDisk,
                "/storage-pool/metal-csi/pvc-gone.img"
            ),
            (
                OrphanKind::DiskWithoutFile,
                "/storage-pool/metal-csi/pvc-nofile.img"
            ),
        ]
    );
    for o in &found {
        delete(&rds, o, soon()).await.unwrap();
    }
    assert!(
        scan(&rds, std::slice::from_ref(&base), Duration::ZERO, soon())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        mock.disk("pvc-live").is_some()
            && mock.disk("snap-1").is_some()
            && mock.disk("manual").is_some()
    );
    assert!(mock
        .file("/storage-pool/metal-csi/snap-1.from-pvc-live.img")
        .is_some());
    assert!(mock
        .file("/storage-pool/metal-csi-old/pvc-sibling.img")
        .is_some());
    assert!(mock.file("/storage-pool/metal-csi/notes.txt").is_some());
    // Below the base path, not in it: not the driver's.
    assert!(mock
        .file("/storage-pool/metal-csi/sub/pvc-gone2.img")
        .is_some());
}
