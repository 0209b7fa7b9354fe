//! `rds-csi migrate-check`, the real binary, against a cluster that ran the Go driver: its PVs,
//! VolumeSnapshotContents and StorageClasses exactly as `fixtures/go-driver/` holds them,
//! served by a fake API server, and an RDS (mock-rds) holding what the Go driver's own
//! commands (`fixtures/go-driver/rds-commands.txt`) made, in two directories.

mod common;
mod kube_fake;

use std::path::PathBuf;
use std::time::Duration;

use kube_fake::*;
use mock_rds::MockRds;
use serde_json::Value;

const MOUNT_PV: &str = "pvc-5b3c8f5e-0c1d-4f8e-9a6b-1d2e3f4a5b6c";
const BLOCK_PV: &str = "pvc-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b";
const BOTH_BASES: &str = "/storage-pool/metal-csi,/storage-pool/kubevirt";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/go-driver")
        .join(name)
}

/// A fixture object as the API server serves it (JSON).
fn object(name: &str) -> Value {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
    serde_json::to_value(yaml).unwrap()
}

struct World {
    mock: MockRds,
    api: FakeApi,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let mock = common::start_mock_for_binary(dir.path()).await;
    // The RDS as the Go driver's commands left it.
    for line in std::fs::read_to_string(fixture("rds-commands.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let reply = mock.execute(line);
        assert!(reply.output.trim().is_empty(), "{line}: {}", reply.output);
    }
    let api = FakeApi::start().await;
    for f in ["pv-mount.yaml", "pv-block.yaml"] {
        api.put(PVS, object(f));
    }
    for f in ["vsc-v013.yaml", "vsc-v011.yaml"] {
        api.put(VSCS, object(f));
    }
    for f in [
        "storageclass-manifests.yaml",
        "storageclass-documented.yaml",
    ] {
        api.put(STORAGE_CLASSES, object(f));
    }
    // Another driver's objects are not looked at.
    api.put(
        PVS,
        pv(
            "pvc-other",
            "vol-x",
            "other.csi.io",
            "ReadWriteOnce",
            "Filesystem",
        ),
    );
    World { mock, api, dir }
}

impl World {
    /// Runs migrate-check with `extra` flags: its exit success and its JSON findings.
    async fn check(&self, extra: &[&str]) -> (bool, Vec<Value>) {
        let kubeconfig = self.api.kubeconfig(self.dir.path());
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rds-csi"));
        cmd.args([
            "migrate-check",
            "--output",
            "json",
            "--rds-address",
            "127.0.0.1",
        ])
        .arg("--rds-port")
        .arg(self.mock.addr().port().to_string())
        .arg("--rds-key-file")
        .arg(self.dir.path().join("id"))
        .arg("--rds-host-key")
        .arg(self.dir.path().join("host.pub"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .env_remove("RDS_CSI_RDS_VOLUME_BASE_PATH")
        .env_remove("RDS_CSI_MANAGED_NQN_PREFIX")
        .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("migrate-check finished in time")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let doc: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
        (
            out.status.success(),
            doc["findings"].as_array().unwrap().clone(),
        )
    }
}

fn finding<'a>(findings: &'a [Value], name: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no finding for {name}: {findings:?}"))
}

fn verdict(findings: &[Value], name: &str) -> String {
    finding(findings, name)["verdict"]
        .as_str()
        .unwrap()
        .to_string()
}

fn detail(findings: &[Value], name: &str) -> String {
    finding(findings, name)["detail"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn with_every_directory_named_everything_works_as_it_is() {
    let w = world().await;
    let (success, findings) = w.check(&["--rds-volume-base-path", BOTH_BASES]).await;
    assert!(success, "{findings:?}");
    // Two PVs, two snapshots, two StorageClasses; the other driver's PV is not there.
    assert_eq!(findings.len(), 6, "{findings:?}");
    assert!(
        findings.iter().all(|f| f["verdict"] == "ok"),
        "{findings:?}"
    );
    // The v0.11 snapshot's ID names its source; the v0.13 one's does not.
    let v011 = "snapcontent-91c4e7a2-5d3b-4f60-8e1a-7b2c9d0e3f45";
    assert!(detail(&findings, v011).contains(BLOCK_PV), "{findings:?}");
    let v013 = "snapcontent-0d6a3c2e-7f41-4b8a-9e35-6c1b2a4d8f90";
    assert!(
        detail(&findings, v013).contains("not recorded"),
        "{findings:?}"
    );
    // The documented Go keys are accepted, and said to be ignored.
    let documented = detail(&findings, "rds-nvme");
    for key in ["nqnPrefix", "rdsBasePath", "rdsPort", "sshPort"] {
        assert!(documented.contains(key), "{documented}");
    }
    assert!(
        detail(&findings, "rds-nvme-kubevirt").contains("/storage-pool/kubevirt"),
        "{findings:?}"
    );
}

#[tokio::test]
async fn a_missing_directory_a_missing_disk_and_the_go_nqn_prefix_need_action() {
    let w = world().await;
    // Only the default base path: the block PV and its class live in another directory.
    let (success, findings) = w.check(&[]).await;
    assert!(!success, "{findings:?}");
    assert_eq!(verdict(&findings, MOUNT_PV), "ok");
    assert_eq!(verdict(&findings, BLOCK_PV), "action");
    assert!(
        detail(&findings, BLOCK_PV)
            .contains("add /storage-pool/kubevirt to --rds-volume-base-path"),
        "{findings:?}"
    );
    assert_eq!(verdict(&findings, "rds-nvme-kubevirt"), "action");
    assert!(
        detail(&findings, "rds-nvme-kubevirt").contains("volumePath"),
        "{findings:?}"
    );
    // The v0.11 snapshot's file is in the default directory: fine either way.
    assert_eq!(
        verdict(
            &findings,
            "snapcontent-91c4e7a2-5d3b-4f60-8e1a-7b2c9d0e3f45"
        ),
        "ok"
    );

    // A disk gone from the RDS, and the Go node's NQN prefix carried over.
    w.mock
        .execute(&format!("/disk remove [find slot={MOUNT_PV}]"));
    let (success, findings) = w
        .check(&[
            "--rds-volume-base-path",
            BOTH_BASES,
            "--managed-nqn-prefix",
            "nqn.2000-02.com.mikrotik:pvc-",
        ])
        .await;
    assert!(!success);
    assert!(
        detail(&findings, MOUNT_PV).contains("the node would refuse"),
        "{findings:?}"
    );
    let (_, findings) = w.check(&["--rds-volume-base-path", BOTH_BASES]).await;
    assert_eq!(verdict(&findings, MOUNT_PV), "action");
    assert!(
        detail(&findings, MOUNT_PV).contains("no disk"),
        "{findings:?}"
    );
    assert_eq!(verdict(&findings, BLOCK_PV), "ok");
}
