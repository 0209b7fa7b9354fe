//! The scenarios, each checked through the API server (kubectl) and on mock-rds. They run in
//! order on one cluster; a later one may use what an earlier one made (named where it does).

use anyhow::{bail, ensure, Context};
use e2e::poll_until;
use serde_json::Value;

use crate::tier::{Tier, APPS, DRIVER, NAMESPACE, NODES, STEP};

const STORAGE_CLASSES: [(&str, bool); 2] = [("rds-nvme", false), ("rds-nvme-block", true)];
const GI: u64 = 1 << 30;

pub(crate) fn pvc(
    name: &str,
    class: &str,
    size: &str,
    block: bool,
    access: &str,
    source: &str,
) -> String {
    let mode = if block { "Block" } else { "Filesystem" };
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {APPS}}}\n\
         spec:\n  storageClassName: {class}\n  volumeMode: {mode}\n  accessModes: [{access}]\n  \
         resources: {{requests: {{storage: {size}}}}}\n{source}"
    )
}

/// A pod on `node` using the claim (never run: no kubelet; scheduling and attachment are what
/// is exercised).
pub(crate) fn pod(name: &str, claim: &str, node: &str, block: bool) -> String {
    let use_volume = if block {
        "volumeDevices: [{name: data, devicePath: /dev/xvda}]"
    } else {
        "volumeMounts: [{name: data, mountPath: /data}]"
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {APPS}}}\nspec:\n  \
         nodeSelector: {{kubernetes.io/hostname: {node}}}\n  \
         containers: [{{name: app, image: registry.invalid/app:1, {use_volume}}}]\n  \
         volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]\n"
    )
}

/// The claim's PV once it is Bound.
pub(crate) async fn bound(t: &Tier, claim: &str) -> anyhow::Result<Value> {
    let admin = t.admin();
    let pv_name = poll_until(&format!("PVC {claim} Bound"), STEP, || async {
        let pvc = admin
            .get(&["pvc", claim, "-n", APPS])
            .await
            .ok()
            .flatten()?;
        (pvc["status"]["phase"] == "Bound")
            .then(|| pvc["spec"]["volumeName"].as_str().map(str::to_string))
            .flatten()
    })
    .await?;
    let pv = admin.json(&["get", "pv", &pv_name]).await?;
    ensure!(
        pv["spec"]["csi"]["driver"] == DRIVER,
        "PV {pv_name} is not the driver's: {}",
        pv["spec"]["csi"]
    );
    Ok(pv)
}

/// The snapshot handle of VolumeSnapshot `name` (in APPS) once it is ready to use.
pub(crate) async fn snapshot_handle_when_ready(
    t: &Tier,
    name: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<String> {
    let admin = t.admin();
    let content = poll_until(&format!("VolumeSnapshot {name} ready"), timeout, || async {
        let snap = admin
            .get(&["volumesnapshot", name, "-n", APPS])
            .await
            .ok()
            .flatten()?;
        (snap["status"]["readyToUse"] == true)
            .then(|| {
                snap["status"]["boundVolumeSnapshotContentName"]
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
    })
    .await?;
    let content = admin
        .json(&["get", "volumesnapshotcontent", &content])
        .await?;
    Ok(content["status"]["snapshotHandle"]
        .as_str()
        .context("no snapshot handle")?
        .to_string())
}

pub(crate) fn handle(pv: &Value) -> String {
    pv["spec"]["csi"]["volumeHandle"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn name_of(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The VolumeAttachments of `pv`, as (node, attached).
pub(crate) async fn attachments(t: &Tier, pv: &str) -> anyhow::Result<Vec<(String, bool)>> {
    Ok(t.admin()
        .items(&["volumeattachments"])
        .await?
        .iter()
        .filter(|va| va["spec"]["source"]["persistentVolumeName"] == pv)
        .map(|va| {
            (
                va["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                va["status"]["attached"] == true,
            )
        })
        .collect())
}

async fn wait_attached(t: &Tier, pv: &str, node: &str) -> anyhow::Result<()> {
    poll_until(&format!("{pv} attached to {node}"), STEP, || async {
        attachments(t, pv)
            .await
            .ok()?
            .contains(&(node.to_string(), true))
            .then_some(())
    })
    .await
}

pub(crate) async fn wait_detached(t: &Tier, pv: &str, node: &str) -> anyhow::Result<()> {
    poll_until(&format!("{pv} detached from {node}"), STEP, || async {
        (!attachments(t, pv)
            .await
            .ok()?
            .iter()
            .any(|(n, _)| n == node))
        .then_some(())
    })
    .await
}

/// A pod on `node` using `claim`: once the scheduler places it the claim binds, and the
/// volume attaches there. Returns the claim's PV.
async fn schedule_user(
    t: &Tier,
    pod_name: &str,
    claim: &str,
    node: &str,
    block: bool,
) -> anyhow::Result<Value> {
    t.admin().apply(&pod(pod_name, claim, node, block)).await?;
    let pv = bound(t, claim).await?;
    wait_attached(t, &name_of(&pv), node).await?;
    Ok(pv)
}

/// Deletes a pod (or `--all`) at once: with no kubelet, nothing would confirm a graceful
/// deletion.
async fn delete_pod(t: &Tier, name: &str) -> anyhow::Result<()> {
    t.admin()
        .run(&[
            "delete",
            "pod",
            name,
            "-n",
            APPS,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .await?;
    Ok(())
}

/// Asks for `claim` (in APPS) to grow to `size`, as a user edits the claim.
pub(crate) async fn request_size(t: &Tier, claim: &str, size: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
    t.admin()
        .run(&[
            "patch",
            "pvc",
            claim,
            "-n",
            APPS,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
        .await?;
    Ok(())
}

fn mock_disk(t: &Tier, slot: &str) -> anyhow::Result<Option<e2e::MockDisk>> {
    Ok(t.mock.disks()?.into_iter().find(|d| d.slot == slot))
}

/// A claim of each deployed StorageClass (both WaitForFirstConsumer) binds once a pod using it
/// is scheduled; the capacity the provisioner publishes is there for each class; the
/// attach-detach controller's VolumeAttachment turns attached through the attacher and
/// ControllerPublish, and goes once the pod is deleted. Leaves the claims `data-rds-nvme` and
/// `data-rds-nvme-block` for the next scenarios.
pub async fn provision_attach_detach(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    for (class, _) in STORAGE_CLASSES {
        poll_until(
            &format!("a CSIStorageCapacity for {class}"),
            STEP,
            || async {
                let all = admin
                    .items(&["csistoragecapacities", "-n", NAMESPACE])
                    .await
                    .ok()?;
                all.iter()
                    .find(|c| c["storageClassName"] == class && c["capacity"].is_string())
                    .map(|_| ())
            },
        )
        .await?;
    }
    for (class, block) in STORAGE_CLASSES {
        let claim = format!("data-{class}");
        admin
            .apply(&pvc(&claim, class, "1Gi", block, "ReadWriteOnce", ""))
            .await?;
        // WaitForFirstConsumer: once the PV controller has looked at the claim (its event
        // says so), it stays unprovisioned until a pod is scheduled.
        poll_until(&format!("the binder waiting on {claim}"), STEP, || async {
            let selector = format!("involvedObject.name={claim},reason=WaitForFirstConsumer");
            let events = admin
                .items(&["events", "-n", APPS, "--field-selector", &selector])
                .await
                .ok()?;
            (!events.is_empty()).then_some(())
        })
        .await?;
        let phase =
            admin.json(&["get", "pvc", &claim, "-n", APPS]).await?["status"]["phase"].clone();
        ensure!(
            phase == "Pending",
            "{claim} is {phase} before any pod uses it"
        );
        let user = format!("user-{class}");
        let pv = schedule_user(t, &user, &claim, NODES[0], block).await?;
        let slot = handle(&pv);
        let disk = mock_disk(t, &slot)?.with_context(|| format!("no disk {slot} on mock-rds"))?;
        ensure!(
            disk.file_size >= GI,
            "disk {slot} has {} bytes, asked 1Gi",
            disk.file_size
        );
        let pv_name = name_of(&pv);
        delete_pod(t, &user).await?;
        wait_detached(t, &pv_name, NODES[0]).await?;
    }
    Ok(())
}

/// The claim `data-rds-nvme` grows through the resizer: the PV and the claim's allocated size
/// report 2Gi, and so does the disk on the RDS. (The file system's part needs a kubelet.)
pub async fn expand(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    let claim = "data-rds-nvme";
    let pv = bound(t, claim).await?;
    request_size(t, claim, "2Gi").await?;
    let pv_name = name_of(&pv);
    poll_until("the PV at 2Gi", STEP, || async {
        let pv = admin.json(&["get", "pv", &pv_name]).await.ok()?;
        (pv["spec"]["capacity"]["storage"] == "2Gi").then_some(())
    })
    .await?;
    let pvc = admin.json(&["get", "pvc", claim, "-n", APPS]).await?;
    ensure!(
        pvc["status"]["allocatedResources"]["storage"] == "2Gi",
        "the claim's allocated size: {}",
        pvc["status"]
    );
    let disk = mock_disk(t, &handle(&pv))?.context("the disk is gone")?;
    ensure!(
        disk.file_size >= 2 * GI,
        "the disk on the RDS has {} bytes",
        disk.file_size
    );
    // The driver tells of it on the PV and the claim.
    driver_events(t, &pv_name, claim, "ControllerExpansionDone").await?;
    Ok(())
}

/// Waits for the driver's event `reason` on the PV and on its claim; returns the PV's.
async fn driver_events(
    t: &Tier,
    pv_name: &str,
    claim: &str,
    reason: &str,
) -> anyhow::Result<Value> {
    let mut on_pv = Value::Null;
    for (kind, name, namespace) in [
        ("PersistentVolume", pv_name, "default"),
        ("PersistentVolumeClaim", claim, APPS),
    ] {
        let event = poll_until(
            &format!("the driver's {reason} event on {kind} {name}"),
            STEP,
            || async {
                let selector = format!(
                    "involvedObject.kind={kind},involvedObject.name={name},reason={reason}"
                );
                let events = t
                    .admin()
                    .items(&["events", "-n", namespace, "--field-selector", &selector])
                    .await
                    .ok()?;
                events.into_iter().next()
            },
        )
        .await?;
        if kind == "PersistentVolume" {
            on_pv = event;
        }
    }
    Ok(on_pv)
}

/// A VolumeSnapshot of `data-rds-nvme` becomes ready; a claim restored from it and a clone of
/// the claim bind, each a disk on the RDS copied from its source.
pub async fn snapshot_restore_clone(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    admin
        .apply(&format!(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\n\
             metadata: {{name: snap, namespace: {APPS}}}\n\
             spec: {{volumeSnapshotClassName: rds-csi-snapclass, source: {{persistentVolumeClaimName: data-rds-nvme}}}}\n"
        ))
        .await?;
    let snapshot_handle = snapshot_handle_when_ready(t, "snap", STEP).await?;
    ensure!(
        t.mock.disks()?.iter().any(|d| d.slot == snapshot_handle)
            || t.mock
                .files()?
                .iter()
                .any(|f| f.path.contains(&snapshot_handle)),
        "snapshot {snapshot_handle} is not on mock-rds"
    );
    for (claim, source) in [
        (
            "restored",
            "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}\n",
        ),
        (
            "clone",
            "  dataSource: {kind: PersistentVolumeClaim, name: data-rds-nvme}\n",
        ),
    ] {
        admin
            .apply(&pvc(
                claim,
                "rds-nvme",
                "2Gi",
                false,
                "ReadWriteOnce",
                source,
            ))
            .await?;
        let user = format!("user-{claim}");
        let pv = schedule_user(t, &user, claim, NODES[1], false).await?;
        let disk = mock_disk(t, &handle(&pv))?.context("no disk for the new claim")?;
        ensure!(
            disk.copied_from.is_some(),
            "{claim}'s disk was not copied from its source: {disk:?}"
        );
        delete_pod(t, &user).await?;
    }
    Ok(())
}

/// ReadWriteMany block, as a live migration uses it: two pods on two nodes hold the volume at
/// once, both attached; when the first goes, the second keeps it.
pub async fn rwx_block_on_two_nodes(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    admin
        .apply(&pvc(
            "shared",
            "rds-nvme-block",
            "1Gi",
            true,
            "ReadWriteMany",
            "",
        ))
        .await?;
    let pv = name_of(&schedule_user(t, "vm-source", "shared", NODES[0], true).await?);
    schedule_user(t, "vm-target", "shared", NODES[1], true).await?;
    ensure!(
        attachments(t, &pv)
            .await?
            .iter()
            .all(|(_, attached)| *attached),
        "both nodes attached"
    );
    delete_pod(t, "vm-source").await?;
    wait_detached(t, &pv, NODES[0]).await?;
    ensure!(
        attachments(t, &pv).await? == vec![(NODES[1].to_string(), true)],
        "the target keeps its attachment"
    );
    delete_pod(t, "vm-target").await?;
    wait_detached(t, &pv, NODES[1]).await?;
    Ok(())
}

/// rds-csi crashes (SIGKILL) while an RWX block volume is attached on two nodes, a live
/// migration under way; restarted, it rebuilds that from the API server's PVs and
/// VolumeAttachments, so a third node is refused (the attacher records the driver's error on
/// its VolumeAttachment) rather than let in beside the two.
pub async fn controller_crash_keeps_attachments(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    admin
        .apply(&pvc(
            "migrating",
            "rds-nvme-block",
            "1Gi",
            true,
            "ReadWriteMany",
            "",
        ))
        .await?;
    let pv = name_of(&schedule_user(t, "vm-1", "migrating", NODES[0], true).await?);
    schedule_user(t, "vm-2", "migrating", NODES[1], true).await?;
    let driver = format!("{}-rds-csi", t.controller_pod);
    t.procs().kill(&driver)?;
    admin
        .apply(&pod("vm-3", "migrating", NODES[2], true))
        .await?;
    let error = poll_until("the third node's attach refused", STEP, || async {
        let vas = admin.items(&["volumeattachments"]).await.ok()?;
        vas.iter()
            .find(|va| {
                va["spec"]["source"]["persistentVolumeName"] == pv.as_str()
                    && va["spec"]["nodeName"] == NODES[2]
            })
            .and_then(|va| va["status"]["attachError"]["message"].as_str())
            .filter(|m| m.contains("migration limit"))
            .map(str::to_string)
    })
    .await?;
    ensure!(
        !attachments(t, &pv)
            .await?
            .contains(&(NODES[2].to_string(), true)),
        "node-c attached: {error}"
    );
    ensure!(
        t.procs()
            .running
            .iter()
            .any(|p| p.name == driver && p.restarts > 0),
        "rds-csi was not restarted"
    );
    for (user, node) in [("vm-3", NODES[2]), ("vm-1", NODES[0]), ("vm-2", NODES[1])] {
        delete_pod(t, user).await?;
        wait_detached(t, &pv, node).await?;
    }
    Ok(())
}

/// A node is deleted while the attacher hangs, so no ControllerUnpublish reaches the driver;
/// the driver's attachment reconciler clears the deleted node's attachment once the grace
/// period is over (its event on the PV and the claim, naming the node). The node's
/// VolumeAttachment, which the attach-detach controller does not detach from a deleted node
/// in that time, is removed by hand (finalizer dropped) as operators clear a stuck one; once
/// the attach-detach controller has noticed (its sync of attached volumes, once a minute), the
/// RWO volume attaches to another node, which the driver would refuse were the deleted node
/// still holding it.
pub async fn deleted_node_attachment_cleared(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    let claim = "stranded";
    admin
        .apply(&pvc(claim, "rds-nvme", "1Gi", false, "ReadWriteOnce", ""))
        .await?;
    let gone = NODES[2];
    let pv = name_of(&schedule_user(t, "on-doomed-node", claim, gone, false).await?);
    let attacher = format!("{}-csi-attacher", t.controller_pod);
    t.procs().freeze(&attacher, true)?;
    let while_frozen = async {
        delete_pod(t, "on-doomed-node").await?;
        admin.run(&["delete", "node", gone, "--wait=false"]).await?;
        let cleared = driver_events(t, &pv, claim, "StaleAttachmentCleared").await?;
        let message = cleared["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains(gone),
            "the event does not name {gone}: {message}"
        );
        for va in admin.items(&["volumeattachments"]).await? {
            if va["spec"]["source"]["persistentVolumeName"] == pv.as_str()
                && va["spec"]["nodeName"] == gone
            {
                let name = name_of(&va);
                admin
                    .run(&["delete", "volumeattachment", &name, "--wait=false"])
                    .await?;
                admin
                    .run(&[
                        "patch",
                        "volumeattachment",
                        &name,
                        "--type=merge",
                        "-p",
                        r#"{"metadata":{"finalizers":null}}"#,
                    ])
                    .await?;
            }
        }
        wait_detached(t, &pv, gone).await
    }
    .await;
    t.procs().freeze(&attacher, false)?;
    while_frozen?;

    schedule_user(t, "on-new-node", claim, NODES[0], false).await?;
    delete_pod(t, "on-new-node").await?;
    wait_detached(t, &pv, NODES[0]).await?;
    Ok(())
}

/// kube-apiserver restarts (etcd keeps the state): afterwards a new claim still provisions,
/// attaches and detaches (the sidecars, restarted as the kubelet would when they lose their
/// leases, and the driver recovered), the driver's Node watch is back (it sees node-b
/// deleted), and deleting the claim removes its disk. Runs after the scenarios that use nodes:
/// the API server refuses requests while its authorizer starts, and node-b is gone after it.
pub async fn api_server_restart(t: &mut Tier) -> anyhow::Result<()> {
    t.cp.api.restart(&t.procs).await?;
    let admin = t.admin().clone();
    admin
        .apply(&pvc(
            "after-restart",
            "rds-nvme",
            "1Gi",
            false,
            "ReadWriteOnce",
            "",
        ))
        .await?;
    let pv = schedule_user(t, "after-restart", "after-restart", NODES[0], false).await?;
    let (pv_name, slot) = (name_of(&pv), handle(&pv));
    delete_pod(t, "after-restart").await?;
    wait_detached(t, &pv_name, NODES[0]).await?;

    let log = t
        .procs()
        .running
        .iter()
        .find(|p| p.name == format!("{}-rds-csi", t.controller_pod))
        .context("the rds-csi process")?
        .log
        .clone();
    let seen_deleted = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| {
                // --log-format=json, flattened: the message and fields at the top. Seen from
                // the watch's delete event, or, when the deletion fell in the watch's backoff
                // (the restarted API server refuses requests at first), from its relist.
                let message = l["message"].as_str().unwrap_or_default();
                (message.starts_with("node deleted") && l["node"] == NODES[1])
                    || (message.starts_with("nodes gone while the watch was down")
                        && l["nodes"]
                            .as_str()
                            .is_some_and(|n| n.contains(&format!("\"{}\"", NODES[1]))))
            })
    };
    ensure!(!seen_deleted(), "a node deletion logged before any");
    admin
        .run(&["delete", "node", NODES[1], "--wait=false"])
        .await?;
    poll_until(
        "the driver's Node watch seeing node-b deleted",
        STEP,
        || async { seen_deleted().then_some(()) },
    )
    .await?;

    admin
        .run(&["delete", "pvc", "after-restart", "-n", APPS, "--wait=false"])
        .await?;
    poll_until("the claim's disk removed from mock-rds", STEP, || async {
        mock_disk(t, &slot).ok()?.is_none().then_some(())
    })
    .await?;
    Ok(())
}

/// `rds-csi orphans`, reading the cluster with the controller's ServiceAccount (the RBAC the
/// orphan reconciler runs under), reports exactly the orphans put on the RDS (a file without
/// disk, a disk of the driver's form without PV) and none of the live claims' or the snapshot's
/// disks and files; with `--delete` it removes those two alone.
pub async fn orphans_against_real_objects(t: &mut Tier) -> anyhow::Result<()> {
    let lost = format!(
        "{}/pvc-0e2e0000-0000-4000-8000-000000000001.img",
        e2e::BASE_PATH
    );
    let ghost = "pvc-0e2e0000-0000-4000-8000-000000000002";
    t.mock
        .exec_ok(&t.keys, &format!("/mock orphan-file path={lost} size=1M"))
        .await?;
    t.mock
        .exec_ok(
            &t.keys,
            &format!(
                "/disk add type=file file-path={}/{ghost}.img file-size=4M slot={ghost}",
                e2e::BASE_PATH
            ),
        )
        .await?;
    let before = t.mock.disks()?.len();
    let run = |delete: bool| {
        let mut cmd = std::process::Command::new(e2e::binary("rds-csi"));
        cmd.args(["orphans", "--output=json", "--grace-period=0s"])
            .args(t.mock.rds_args(&t.keys))
            .arg("--kubeconfig")
            .arg(&t.controller_kubeconfig);
        if delete {
            cmd.arg("--delete");
        }
        cmd
    };
    let mut found = Vec::new();
    for delete in [false, true] {
        let out = tokio::process::Command::from(run(delete)).output().await?;
        ensure!(
            out.status.success(),
            "rds-csi orphans: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout)?;
        let mut kinds: Vec<(String, String)> = doc["orphans"]
            .as_array()
            .context("no orphans array")?
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or_default().to_string(),
                    o["slot"]
                        .as_str()
                        .or(o["path"].as_str())
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        kinds.sort();
        found.push(kinds);
    }
    let expected = vec![
        ("disk-without-pv".to_string(), ghost.to_string()),
        ("file-without-disk".to_string(), lost.clone()),
    ];
    ensure!(found[0] == expected, "orphans found: {:?}", found[0]);
    ensure!(
        found[1] == expected,
        "orphans found before deleting: {:?}",
        found[1]
    );
    let disks = t.mock.disks()?;
    ensure!(
        disks.len() == before - 1 && !disks.iter().any(|d| d.slot == ghost),
        "after --delete: {disks:?}"
    );
    ensure!(
        !t.mock.files()?.iter().any(|f| f.path == lost),
        "the lost file is still there"
    );
    Ok(())
}

/// An encrypted class must name a node-stage Secret, or no node would get the passphrase. The
/// real external-provisioner strips `csi.storage.k8s.io/` keys from CreateVolume's parameters,
/// so the controller reads the class through the claim (`--extra-create-metadata`, under the
/// manifests' RBAC): without the Secret no disk is made and the claim's event says why; with it
/// the PV names the Secret and its volume context marks the volume encrypted. (Staging one
/// needs dm-crypt, which this host's kernel lacks: the VM tier stages encrypted volumes.)
pub async fn encrypted_class_needs_its_node_stage_secret(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    let class = |name: &str, secret: &str| {
        format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {name}}}\n\
             provisioner: {DRIVER}\nvolumeBindingMode: WaitForFirstConsumer\nparameters:\n  \
             encrypted: \"true\"\n{secret}"
        )
    };
    admin.apply(&class("rds-nvme-encrypted-bare", "")).await?;
    admin
        .apply(&class(
            "rds-nvme-encrypted",
            "  csi.storage.k8s.io/node-stage-secret-name: luks\n  \
             csi.storage.k8s.io/node-stage-secret-namespace: \"${pvc.namespace}\"\n",
        ))
        .await?;

    let refused = "crypt-bare";
    admin
        .apply(&pvc(
            refused,
            "rds-nvme-encrypted-bare",
            "1Gi",
            false,
            "ReadWriteOnce",
            "",
        ))
        .await?;
    admin
        .apply(&pod("user-crypt-bare", refused, NODES[0], false))
        .await?;
    let event = poll_until(
        &format!("the provisioner's ProvisioningFailed event on {refused}"),
        STEP,
        || async {
            let selector = format!("involvedObject.name={refused},reason=ProvisioningFailed");
            let events = admin
                .items(&["events", "-n", APPS, "--field-selector", &selector])
                .await
                .ok()?;
            events.into_iter().find(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("parameters.encrypted"))
            })
        },
    )
    .await?;
    ensure!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("node-stage-secret-name")),
        "the refusal does not name the missing key: {}",
        event["message"]
    );
    let uid = admin.json(&["get", "pvc", refused, "-n", APPS]).await?["metadata"]["uid"]
        .as_str()
        .context("the claim has no uid")?
        .to_string();
    ensure!(
        mock_disk(t, &format!("pvc-{uid}"))?.is_none(),
        "a refused encrypted volume left a disk on the RDS"
    );
    delete_pod(t, "user-crypt-bare").await?;

    let pv = {
        admin
            .apply(&pvc(
                "crypt",
                "rds-nvme-encrypted",
                "1Gi",
                false,
                "ReadWriteOnce",
                "",
            ))
            .await?;
        schedule_user(t, "user-crypt", "crypt", NODES[0], false).await?
    };
    ensure!(
        pv["spec"]["csi"]["volumeAttributes"]["encrypted"] == "true",
        "the volume context does not mark the volume encrypted: {}",
        pv["spec"]["csi"]["volumeAttributes"]
    );
    ensure!(
        pv["spec"]["csi"]["nodeStageSecretRef"]
            == serde_json::json!({"name": "luks", "namespace": APPS}),
        "the PV names no node-stage Secret: {}",
        pv["spec"]["csi"]
    );
    delete_pod(t, "user-crypt").await?;
    wait_detached(t, &name_of(&pv), NODES[0]).await?;
    Ok(())
}

/// Deleting the snapshot and every claim (reclaim policy Delete) removes every disk and file
/// the driver made from mock-rds.
pub async fn delete_removes_everything(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    delete_pod(t, "--all").await?;
    admin
        .run(&["delete", "pvc", "--all", "-n", APPS, "--wait=false"])
        .await?;
    admin
        .run(&[
            "delete",
            "volumesnapshot",
            "--all",
            "-n",
            APPS,
            "--wait=false",
        ])
        .await?;
    poll_until("every PV of the driver gone", STEP, || async {
        admin.items(&["pv"]).await.ok()?.is_empty().then_some(())
    })
    .await?;
    poll_until("every VolumeSnapshotContent gone", STEP, || async {
        admin
            .items(&["volumesnapshotcontents"])
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await?;
    let disks = t.mock.disks()?;
    let files: Vec<_> = t
        .mock
        .files()?
        .into_iter()
        .filter(|f| f.path.starts_with(e2e::BASE_PATH))
        .collect();
    if !disks.is_empty() || !files.is_empty() {
        bail!("left on mock-rds: disks {disks:?}, files {files:?}");
    }
    Ok(())
}

/// Under the manifests' RBAC no component was refused anything by the API server.
pub async fn no_forbidden_in_logs(t: &mut Tier) -> anyhow::Result<()> {
    let mut refused = Vec::new();
    for p in &t.procs().running {
        if !p.name.starts_with(&t.controller_pod) {
            continue;
        }
        let text = std::fs::read_to_string(&p.log)?;
        for line in text
            .lines()
            .filter(|l| l.to_lowercase().contains("forbidden"))
        {
            refused.push(format!("{}: {line}", p.name));
        }
    }
    if !refused.is_empty() {
        bail!("refused by the API server:\n{}", refused.join("\n"));
    }
    Ok(())
}
