//! The orphan reconciler against an embedded mock-rds and a real API server: what it counts
//! (with snapshots, fresh volumes, attached volumes and cluster references present), dry run
//! versus delete, a pass ended by stopping, a cluster without the snapshot CRDs. Against the
//! fake API server, kept for faults: errors, and fail-open when the cluster cannot be read.

mod kube_fake;
mod kube_objects;
mod kube_real;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube_fake::*;
use kube_objects::*;
use kube_real::RealApi;
use mock_rds::state::{Disk, FileEntry, FileKind, State};
use mock_rds::{Auth, Config, Fault, MockRds};
use rds_csi::kube::attachments::{AttachOptions, AttachmentManager, ManualClock};
use rds_csi::kube::events::{EventRecorder, REASON_ORPHAN_FOUND};
use rds_csi::kube::orphans::{cluster_references, OrphanReconciler, OrphanReconcilerConfig};
use rds_csi::orphans::{Orphan, OrphanKind};
use rds_csi::rds::{HostKeyPolicy, RdsClient, RdsPath, RetryPolicy, SshConfig, Transport};
use russh::keys::{Algorithm, PrivateKey};

const BASE: &str = "/storage-pool/metal-csi";
/// 2020: far older than any grace period.
const OLD: u64 = 1_600_000_000;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn disk(id: u64, slot: &str, file: &str, export: bool) -> Disk {
    Disk {
        slot: slot.into(),
        file_path: format!("{BASE}/{file}"),
        file_size: 1 << 30,
        nvme_tcp_export: export,
        nvme_tcp_server_port: export.then_some(4420),
        nvme_tcp_server_nqn: export.then(|| format!("nqn.2000-02.com.mikrotik:{slot}")),
        nvme_tcp_server_allow_host_name: String::new(),
        copied_from: None,
        id,
    }
}

fn file(id: u64, name: &str, last_modified: u64) -> FileEntry {
    FileEntry {
        path: format!("{BASE}/{name}"),
        kind: FileKind::File,
        size: 1 << 30,
        last_modified,
        id,
    }
}

/// The RDS: every case the reconciler must tell apart.
fn rds_state() -> State {
    let fresh = now_secs();
    let disks = vec![
        disk(1, "pvc-live", "pvc-live.img", true),   // PV exists
        disk(2, "pvc-nopv", "pvc-nopv.img", true),   // no PV, old: disk without PV
        disk(3, "pvc-fresh", "pvc-fresh.img", true), // no PV, too young
        disk(4, "pvc-attached", "pvc-attached.img", true), // no PV, but a node holds it
        disk(5, "snap-1", "snap-1.from-pvc-live.img", false), // a snapshot: never a disk without PV
        disk(6, "pvc-nofile", "pvc-nofile.img", true), // disk without file
        disk(7, "pvc-brokenpv", "pvc-brokenpv.img", true), // disk without file, PV exists
    ];
    let files = vec![
        file(11, "pvc-live.img", OLD),
        file(12, "pvc-nopv.img", OLD),
        file(13, "pvc-fresh.img", fresh),
        file(14, "pvc-attached.img", OLD),
        file(15, "snap-1.from-pvc-live.img", OLD),
        file(16, "pvc-gone.img", OLD),             // file without disk
        file(17, "snap-2.from-pvc-live.img", OLD), // no disk, a VSC references it
        file(18, "snap-3.from-pvc-live.img", OLD), // no disk, no VSC: still never counted here
        file(19, "pvc-refd.img", OLD),             // no disk, a PV references it
        file(20, "pvc-young.img", fresh),          // no disk, too young
    ];
    State {
        next_id: 100,
        disks,
        files,
    }
}

struct Rig {
    mock: MockRds,
    rds: Arc<RdsClient>,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("state.json"),
        serde_json::to_vec(&rds_state()).unwrap(),
    )
    .unwrap();
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let mock = MockRds::start(Config {
        auth: Auth::AuthorizedKeys(vec![key.public_key().clone()]),
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    })
    .await
    .unwrap();
    let addr = mock.addr();
    let config = SshConfig::new(
        addr.ip().to_string(),
        addr.port(),
        "admin",
        key,
        HostKeyPolicy::InsecureSkipVerify,
    );
    let rds = Arc::new(RdsClient::new(
        Transport::new(config),
        RetryPolicy::default(),
    ));
    Rig {
        mock,
        rds,
        _dir: dir,
    }
}

/// The cluster's objects: this driver's PVs (one of a disk without file), a VolumeSnapshotContent
/// of a snapshot without disk, and another driver's PV whose handle clashes with an orphan's.
fn cluster_objects() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            PVS,
            pv("pv-live", "pvc-live", DRIVER, "ReadWriteOnce", "Filesystem"),
        ),
        (
            PVS,
            pv(
                "pv-broken",
                "pvc-brokenpv",
                DRIVER,
                "ReadWriteOnce",
                "Filesystem",
            ),
        ),
        (
            PVS,
            pv("pv-refd", "pvc-refd", DRIVER, "ReadWriteOnce", "Filesystem"),
        ),
        (
            PVS,
            pv(
                "pv-other",
                "pvc-nopv",
                "other.csi.io",
                "ReadWriteOnce",
                "Filesystem",
            ),
        ),
        (VSCS, vsc("snapcontent-2", DRIVER, "snap-2")),
    ]
}

async fn real_cluster() -> RealApi {
    let api = RealApi::start().await;
    for (collection, object) in cluster_objects() {
        api.put(collection, object).await;
    }
    api
}

fn fake_cluster(api: &FakeApi) {
    for (collection, object) in cluster_objects() {
        api.put(collection, object);
    }
}

fn reconciler(r: &Rig, client: kube::Client, dry_run: bool) -> OrphanReconciler {
    let mut config = OrphanReconcilerConfig::new(DRIVER, vec![RdsPath::new(BASE).unwrap()]);
    config.grace_period = Duration::from_secs(300);
    config.dry_run = dry_run;
    let attachments = Arc::new(AttachmentManager::new());
    attachments
        .attach(
            "pvc-attached",
            "node-a",
            AttachOptions {
                readonly: false,
                multi_node_block: false,
                multi_node_reader: false,
            },
            None,
        )
        .unwrap();
    OrphanReconciler::new(client.clone(), r.rds.clone(), config)
        .with_events(EventRecorder::new(client, DRIVER, "test"))
        .with_attachments(attachments)
}

fn summary(found: &[Orphan]) -> Vec<(OrphanKind, String)> {
    let mut s: Vec<_> = found
        .iter()
        .map(|o| (o.kind, o.path.clone().unwrap_or_default()))
        .collect();
    s.sort_by(|a, b| a.1.cmp(&b.1));
    s
}

fn expected() -> Vec<(OrphanKind, String)> {
    vec![
        (
            OrphanKind::DiskWithoutFile,
            format!("{BASE}/pvc-brokenpv.img"),
        ),
        (OrphanKind::FileWithoutDisk, format!("{BASE}/pvc-gone.img")),
        (
            OrphanKind::DiskWithoutFile,
            format!("{BASE}/pvc-nofile.img"),
        ),
        (OrphanKind::DiskWithoutPv, format!("{BASE}/pvc-nopv.img")),
    ]
}

#[tokio::test]
async fn cluster_references_are_this_drivers_pvs_and_snapshot_contents() {
    let api = real_cluster().await;
    api.put(VSCS, vsc("other", "other.csi.io", "snap-9")).await;
    let refs = cluster_references(&api.client(), DRIVER).await.unwrap();
    let mut volumes: Vec<_> = refs.volumes.iter().cloned().collect();
    volumes.sort();
    assert_eq!(volumes, ["pvc-brokenpv", "pvc-live", "pvc-refd"]);
    assert_eq!(refs.snapshots.iter().collect::<Vec<_>>(), ["snap-2"]);
}

#[tokio::test]
async fn without_the_snapshot_crd_there_are_no_snapshot_references() {
    let api = RealApi::without_snapshot_crds().await;
    for (collection, object) in cluster_objects() {
        if collection == PVS {
            api.put(collection, object).await;
        }
    }
    let refs = cluster_references(&api.client(), DRIVER).await.unwrap();
    assert!(refs.snapshots.is_empty() && refs.volumes.len() == 3);
}

#[tokio::test]
async fn an_error_reading_snapshot_contents_is_an_error() {
    let api = FakeApi::start().await;
    fake_cluster(&api);
    api.fail(VSCS, None, 500, None);
    assert!(cluster_references(&api.client(), DRIVER).await.is_err());
}

#[tokio::test]
async fn dry_run_reports_exactly_the_orphans_and_deletes_nothing() {
    let (r, api) = (rig().await, real_cluster().await);
    let before = (r.mock.disks().len(), r.mock.files().len());
    let orphans = reconciler(&r, api.client(), true);
    let report = orphans.reconcile_once().await.unwrap();
    assert!(report.dry_run);
    assert_eq!(summary(&report.found), expected());
    assert!(report.deleted.is_empty());
    assert_eq!((r.mock.disks().len(), r.mock.files().len()), before);
    assert!(
        !r.mock
            .history()
            .iter()
            .any(|h| h.command.contains("remove")),
        "dry run never removes anything on the RDS"
    );

    let stats = orphans.stats();
    assert_eq!(stats.runs, 1);
    assert_eq!(stats.deleted, 0);
    assert_eq!(stats.found_by_kind["disk-without-pv"], 1);
    assert_eq!(stats.found_by_kind["file-without-disk"], 1);
    assert_eq!(stats.found_by_kind["disk-without-file"], 2);

    let found_events = || async {
        api.list(&events("default"))
            .await
            .into_iter()
            .filter(|e| e["reason"] == REASON_ORPHAN_FOUND)
            .collect::<Vec<_>>()
    };
    let posted = found_events().await;
    assert_eq!(posted.len(), 4);
    assert!(posted
        .iter()
        .all(|e| e["involvedObject"]["kind"] == "CSIDriver" && e["type"] == "Warning"));
    // A second pass reports the same orphans without posting them again.
    orphans.reconcile_once().await.unwrap();
    assert_eq!(found_events().await.len(), 4);
}

#[tokio::test]
async fn delete_mode_removes_only_unprotected_orphans() {
    let (r, api) = (rig().await, real_cluster().await);
    let clock = Arc::new(ManualClock::new(std::time::SystemTime::now()));
    let orphans = reconciler(&r, api.client(), false).with_clock(clock.clone());
    let first = orphans.reconcile_once().await.unwrap();
    assert_eq!(summary(&first.found), expected());
    assert!(
        first.deleted.is_empty(),
        "nothing is deleted before it has been seen for the grace period: {:?}",
        first.deleted
    );
    clock.advance(Duration::from_secs(300));
    // One delete fails: it is counted, and the next pass deletes it.
    r.mock.inject(Fault::Fail {
        pattern: "^/file remove .*pvc-gone".into(),
        times: Some(1),
        message: "failure: disk is busy".into(),
        exit_status: 1,
    });
    let report = orphans.reconcile_once().await.unwrap();
    assert_eq!(
        summary(&report.deleted),
        vec![
            (
                OrphanKind::DiskWithoutFile,
                format!("{BASE}/pvc-nofile.img")
            ),
            (OrphanKind::DiskWithoutPv, format!("{BASE}/pvc-nopv.img")),
        ],
        "a disk without file whose PV exists is reported, not deleted"
    );
    assert_eq!(
        (orphans.stats().deleted, orphans.stats().delete_failures),
        (2, 1)
    );
    let retried = orphans.reconcile_once().await.unwrap();
    assert_eq!(
        summary(&retried.deleted),
        vec![(OrphanKind::FileWithoutDisk, format!("{BASE}/pvc-gone.img"))]
    );
    assert_eq!(
        (orphans.stats().deleted, orphans.stats().delete_failures),
        (3, 1)
    );
    for gone in ["pvc-nopv", "pvc-nofile"] {
        assert!(r.mock.disk(gone).is_none(), "{gone}");
    }
    for path in ["pvc-nopv.img", "pvc-gone.img"] {
        assert!(r.mock.file(&format!("{BASE}/{path}")).is_none(), "{path}");
    }
    for kept in [
        "pvc-live",
        "pvc-fresh",
        "pvc-attached",
        "snap-1",
        "pvc-brokenpv",
    ] {
        assert!(r.mock.disk(kept).is_some(), "{kept}");
    }
    for kept in [
        "pvc-live.img",
        "pvc-fresh.img",
        "pvc-attached.img",
        "snap-1.from-pvc-live.img",
        "snap-2.from-pvc-live.img",
        "snap-3.from-pvc-live.img",
        "pvc-refd.img",
        "pvc-young.img",
    ] {
        assert!(r.mock.file(&format!("{BASE}/{kept}")).is_some(), "{kept}");
    }
    // What is left is protected: nothing more to delete.
    let again = orphans.reconcile_once().await.unwrap();
    assert!(again.deleted.is_empty());
}

#[tokio::test]
async fn fails_open_when_the_cluster_cannot_be_read() {
    let (r, api) = (rig().await, FakeApi::start().await);
    fake_cluster(&api);
    api.fail(PVS, None, 500, None);
    let orphans = reconciler(&r, api.client(), false);
    assert!(orphans.reconcile_once().await.is_err());
    assert_eq!(orphans.stats().failures, 1);
    assert!(r.mock.disk("pvc-nopv").is_some());
    assert!(r.mock.file(&format!("{BASE}/pvc-gone.img")).is_some());
    assert!(!r
        .mock
        .history()
        .iter()
        .any(|h| h.command.contains("remove")));
}

/// Leadership lost mid-pass: stopping the reconciler (its token is cancelled then) ends a pass
/// in progress at once, so it never runs on beside the next leader's.
#[tokio::test]
async fn stopping_ends_a_pass_in_progress() {
    let (r, api) = (rig().await, real_cluster().await);
    let orphans = Arc::new(reconciler(&r, api.client(), false));
    // The scan's file listing takes long: the pass is surely still running when stopped.
    r.mock.inject(Fault::Latency {
        pattern: "^/file print".into(),
        min: Duration::from_secs(8),
        max: Duration::from_secs(8),
    });
    let parent = tokio_util::sync::CancellationToken::new();
    let lists = api.requests("persistentvolumes", "LIST").await;
    orphans.start(&parent).unwrap();
    assert!(orphans.is_running());
    e2e::poll_until(
        "the pass reading the PVs",
        Duration::from_secs(10),
        || async { (api.requests("persistentvolumes", "LIST").await > lists).then_some(()) },
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(3), orphans.stop())
        .await
        .expect("stop waited for the pass to finish");
    assert!(!orphans.is_running());
}
