//! `rds-csi orphans --delete`, the real binary, with the reconciler's safeguards: it never
//! deletes a snapshot file, a disk the cluster references (also a reference made during the
//! scan) or one a node has attached, and deletes only what two scans saw unchanged.

mod kube_objects;
mod kube_real;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube_objects::*;
use kube_real::RealApi;
use mock_rds::state::{Disk, FileEntry, FileKind, State};
use mock_rds::{Auth, Config, Fault, MockRds};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

const BASE: &str = "/storage-pool/metal-csi";
/// Three days before now: far older than any grace period.
fn three_days_ago() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3 * 86_400
}
const SNAPSHOT_FILE: &str = "snap-6ec89291-e651-5af7-8470-1168d64acbcd-at-6ec89291e6.img";

fn disk(id: u64, slot: &str) -> Disk {
    Disk {
        slot: slot.into(),
        file_path: format!("{BASE}/{slot}.img"),
        file_size: 1 << 30,
        nvme_tcp_export: true,
        nvme_tcp_server_port: Some(4420),
        nvme_tcp_server_nqn: Some(format!("nqn.2000-02.com.mikrotik:{slot}")),
        nvme_tcp_server_allow_host_name: String::new(),
        copied_from: None,
        id,
    }
}

fn file(id: u64, name: &str) -> FileEntry {
    FileEntry {
        path: format!("{BASE}/{name}"),
        kind: FileKind::File,
        size: 1 << 30,
        last_modified: three_days_ago(),
        id,
    }
}

struct Setup {
    mock: MockRds,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = State {
        next_id: 100,
        disks: vec![
            disk(1, "pvc-nopv"),     // no PV: a disk without PV
            disk(2, "pvc-attached"), // no PV, but a node has it attached
            disk(3, "pvc-latepv"),   // its PV is made while the scan runs
        ],
        files: vec![
            file(11, "pvc-nopv.img"),
            file(12, "pvc-attached.img"),
            file(13, "pvc-latepv.img"),
            file(14, "pvc-gone.img"), // a file without disk
            file(15, SNAPSHOT_FILE),  // a snapshot file without disk: never deleted
        ],
    };
    std::fs::write(
        dir.path().join("state.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    std::fs::write(
        dir.path().join("id"),
        key.to_openssh(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let mock = MockRds::start(Config {
        auth: Auth::AuthorizedKeys(vec![key.public_key().clone()]),
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    })
    .await
    .unwrap();
    std::fs::write(dir.path().join("host.pub"), mock.host_public_key_openssh()).unwrap();
    Setup { mock, dir }
}

impl Setup {
    fn command(&self, extra: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rds-csi"));
        cmd.args(["orphans", "--output", "json", "--rds-address", "127.0.0.1"])
            .arg("--rds-port")
            .arg(self.mock.addr().port().to_string())
            .arg("--rds-key-file")
            .arg(self.dir.path().join("id"))
            .arg("--rds-host-key")
            .arg(self.dir.path().join("host.pub"))
            .args(extra)
            .env_remove("RDS_CSI_KUBECONFIG")
            .kill_on_drop(true);
        cmd
    }

    fn has_file(&self, name: &str) -> bool {
        self.mock.file(&format!("{BASE}/{name}")).is_some()
    }
}

async fn finish(cmd: &mut tokio::process::Command) -> serde_json::Value {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("rds-csi orphans finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Without a cluster the tool cannot know references, but a snapshot file is never an orphan
/// it deletes (a three-day-old one used to be deleted at once).
#[tokio::test]
async fn delete_without_a_cluster_keeps_snapshot_files() {
    let s = setup().await;
    let doc = finish(&mut s.command(&["--delete", "--grace-period", "5m"])).await;
    assert!(
        s.has_file(SNAPSHOT_FILE),
        "the snapshot file was deleted: {doc}"
    );
    assert!(
        !s.has_file("pvc-gone.img"),
        "the volume file orphan stays: {doc}"
    );
    let kept = doc["kept"].to_string();
    assert!(kept.contains(SNAPSHOT_FILE), "{doc}");
}

/// With a cluster: a disk a node has attached, and one whose PV appears while the scan runs,
/// are kept; only the disk that is unreferenced throughout is deleted.
#[tokio::test]
async fn delete_with_a_cluster_keeps_attached_and_newly_referenced_disks() {
    let s = setup().await;
    let api = RealApi::start().await;
    // The PV of pvc-attached is gone, but its VolumeAttachment still says it is attached.
    api.put(VAS, va("va-1", "pvc-attached", "node-a", DRIVER, true))
        .await;
    // A slow disk listing holds the scan open while the PV of pvc-latepv is made.
    s.mock.inject(Fault::Latency {
        pattern: "^/disk print".into(),
        min: Duration::from_millis(700),
        max: Duration::from_millis(700),
    });
    let kubeconfig = api.kubeconfig().display().to_string();
    let lists = api.requests("persistentvolumes", "LIST").await;
    let mut cmd = s.command(&[
        "--delete",
        "--grace-period",
        "5m",
        "--kubeconfig",
        &kubeconfig,
    ]);
    let run = tokio::spawn(async move { finish(&mut cmd).await });
    // Once the tool has read the PVs, a new one appears (polled, with a deadline).
    e2e::poll_until("the tool listing PVs", Duration::from_secs(20), || async {
        (api.requests("persistentvolumes", "LIST").await > lists).then_some(())
    })
    .await
    .unwrap();
    api.put(
        PVS,
        pv(
            "pvc-latepv",
            "pvc-latepv",
            DRIVER,
            "ReadWriteOnce",
            "Filesystem",
        ),
    )
    .await;
    // Once the files are listed, pvc-gone.img is written again (a create in progress): it is
    // no longer the file the first scan saw, so it is not deleted.
    assert!(
        eventually(Duration::from_secs(20), || {
            s.mock
                .history()
                .iter()
                .any(|h| h.command.starts_with("/file print"))
        })
        .await,
        "the tool never listed files"
    );
    s.mock.remove_file(&format!("{BASE}/pvc-gone.img"));
    s.mock
        .add_orphan_file(&format!("{BASE}/pvc-gone.img"), 2 << 30);
    let doc = run.await.unwrap();
    assert!(
        s.has_file("pvc-gone.img"),
        "a file that changed was deleted: {doc}"
    );
    assert!(
        s.mock.disk("pvc-attached").is_some(),
        "attached disk deleted: {doc}"
    );
    assert!(
        s.mock.disk("pvc-latepv").is_some(),
        "newly referenced disk deleted: {doc}"
    );
    assert!(s.has_file("pvc-latepv.img") && s.has_file("pvc-attached.img"));
    assert!(
        s.mock.disk("pvc-nopv").is_none(),
        "the unreferenced disk stays: {doc}"
    );
    assert!(s.has_file(SNAPSHOT_FILE));
}
