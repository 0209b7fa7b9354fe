//! `rds-csi migrate-check` against the earlier Go driver's objects on the real API server and
//! its disks on mock-rds.

use anyhow::{ensure, Context};
use serde_json::Value;

use crate::scenarios::name_of;
use crate::tier::{Tier, STEP};

fn go_fixture(name: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/go-driver")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `rds-csi migrate-check` with the controller's ServiceAccount (the RBAC the driver runs
/// under): its exit success and its findings by name, as (verdict, detail).
async fn migrate_check(
    t: &Tier,
    extra: &[&str],
) -> anyhow::Result<(bool, std::collections::BTreeMap<String, (String, String)>)> {
    let mut cmd = tokio::process::Command::new(e2e::binary("rds-csi"));
    cmd.args(["migrate-check", "--output=json"])
        .args(t.mock.rds_args(&t.keys))
        .arg("--kubeconfig")
        .arg(&t.controller_kubeconfig)
        .args(extra)
        .env_remove("RDS_CSI_RDS_VOLUME_BASE_PATH")
        .env_remove("RDS_CSI_MANAGED_NQN_PREFIX")
        .kill_on_drop(true);
    let out = tokio::time::timeout(STEP, cmd.output())
        .await
        .context("migrate-check did not finish")??;
    let doc: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "migrate-check printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let findings = doc["findings"]
        .as_array()
        .context("no findings array")?
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (text("name"), (text("verdict"), text("detail")))
        })
        .collect();
    Ok((out.status.success(), findings))
}

/// `rds-csi migrate-check` against a cluster and an RDS as the earlier Go driver left them
/// (`fixtures/go-driver/`): its PVs, VolumeSnapshotContents (status written through the status
/// subresource, as the snapshotter writes it) and StorageClasses, served by the real API
/// server; on mock-rds the disks its own RouterOS commands made, in two directories. The
/// verdicts: everything works as it is with both directories named; with only the default
/// one, the second directory's PV and class need action, and a missing disk or the Go node's
/// NQN prefix are reported. Runs last: it replaces the deployed StorageClass `rds-nvme` with
/// the Go driver's (an operator's migration does the same), and freezes the snapshot
/// controllers, which would otherwise act on the Go snapshots whose VolumeSnapshots are gone.
pub async fn migrate_check_against_go_driver_objects(t: &mut Tier) -> anyhow::Result<()> {
    const MOUNT_PV: &str = "pvc-5b3c8f5e-0c1d-4f8e-9a6b-1d2e3f4a5b6c";
    const BLOCK_PV: &str = "pvc-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b";
    const V011: &str = "snapcontent-91c4e7a2-5d3b-4f60-8e1a-7b2c9d0e3f45";
    const V013: &str = "snapcontent-0d6a3c2e-7f41-4b8a-9e35-6c1b2a4d8f90";
    const BOTH_BASES: &str = "/storage-pool/metal-csi,/storage-pool/kubevirt";
    let admin = t.admin().clone();
    for line in go_fixture("rds-commands.txt")?
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        t.mock.exec_ok(&t.keys, line).await?;
    }
    // The snapshot controller and every replica's snapshotter.
    let snapshot_controllers: Vec<String> = t
        .procs()
        .running
        .iter()
        .map(|p| p.name.clone())
        .filter(|n| n == "snapshot-controller" || n.ends_with("-csi-snapshotter"))
        .collect();
    for p in &snapshot_controllers {
        t.procs().freeze(p, true)?;
    }
    admin
        .run(&["delete", "storageclass", "rds-nvme", "--wait=true"])
        .await?;
    for f in [
        "pv-mount.yaml",
        "pv-block.yaml",
        "storageclass-manifests.yaml",
        "storageclass-documented.yaml",
    ] {
        admin
            .run_with(&["create", "-f", "-"], Some(&go_fixture(f)?))
            .await?;
    }
    for f in ["vsc-v013.yaml", "vsc-v011.yaml"] {
        let yaml = go_fixture(f)?;
        admin.run_with(&["create", "-f", "-"], Some(&yaml)).await?;
        let object: Value =
            serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&yaml)?)?;
        let status = serde_json::json!({"status": object["status"]});
        admin
            .run(&[
                "patch",
                "volumesnapshotcontent",
                &name_of(&object),
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ])
            .await?;
    }

    let (success, findings) = migrate_check(t, &["--rds-volume-base-path", BOTH_BASES]).await?;
    let go_objects = [
        MOUNT_PV,
        BLOCK_PV,
        V011,
        V013,
        "rds-nvme",
        "rds-nvme-kubevirt",
    ];
    for name in go_objects {
        let (verdict, detail) = findings
            .get(name)
            .with_context(|| format!("no finding for {name}: {findings:?}"))?;
        ensure!(verdict == "ok", "{name}: {verdict}: {detail}");
    }
    ensure!(success, "migrate-check failed: {findings:?}");
    let detail = |name: &str| findings[name].1.clone();
    // The v0.11 snapshot's ID names its source; the v0.13 one's does not.
    ensure!(detail(V011).contains(BLOCK_PV), "{}", detail(V011));
    ensure!(detail(V013).contains("not recorded"), "{}", detail(V013));
    // The documented Go keys are accepted, and said to be ignored.
    for key in ["nqnPrefix", "rdsBasePath", "rdsPort", "sshPort"] {
        ensure!(detail("rds-nvme").contains(key), "{}", detail("rds-nvme"));
    }
    ensure!(
        detail("rds-nvme-kubevirt").contains("/storage-pool/kubevirt"),
        "{}",
        detail("rds-nvme-kubevirt")
    );

    // Only the default directory: the block PV and its class need it added.
    let (success, findings) = migrate_check(t, &[]).await?;
    ensure!(
        !success,
        "migrate-check passed without the second directory"
    );
    let verdict = |name: &str| findings.get(name).map(|f| f.0.as_str());
    ensure!(verdict(MOUNT_PV) == Some("ok"), "{findings:?}");
    ensure!(
        findings[BLOCK_PV]
            .1
            .contains("add /storage-pool/kubevirt to --rds-volume-base-path"),
        "{findings:?}"
    );
    ensure!(
        verdict("rds-nvme-kubevirt") == Some("action")
            && findings["rds-nvme-kubevirt"].1.contains("volumePath"),
        "{findings:?}"
    );
    ensure!(verdict(V011) == Some("ok"), "{findings:?}");

    // The Go node's NQN prefix carried over, then a disk gone from the RDS.
    t.mock
        .exec_ok(&t.keys, &format!("/disk remove [find slot={MOUNT_PV}]"))
        .await?;
    let go_prefix = [
        "--rds-volume-base-path",
        BOTH_BASES,
        "--managed-nqn-prefix",
        "nqn.2000-02.com.mikrotik:pvc-",
    ];
    let (success, findings) = migrate_check(t, &go_prefix).await?;
    ensure!(
        !success && findings[MOUNT_PV].1.contains("the node would refuse"),
        "{findings:?}"
    );
    let (_, findings) = migrate_check(t, &["--rds-volume-base-path", BOTH_BASES]).await?;
    ensure!(
        findings[MOUNT_PV].0 == "action" && findings[MOUNT_PV].1.contains("no disk"),
        "{findings:?}"
    );
    ensure!(findings[BLOCK_PV].0 == "ok", "{findings:?}");
    Ok(())
}
