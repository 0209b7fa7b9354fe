//! Scenarios on the nodes with a real kubelet (`node-k1`, `node-k2`): pods on containerd that
//! mount the driver's volumes. kubelet finds the node plugin through its plugin registry, asks
//! NodeGetInfo, stages and publishes at its own paths, expands, unpublishes and unstages; the
//! checks read what the pods saw (their exit status, or a command run in them) and what is left
//! on the host and on mock-rds.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use e2e::k8s::kubelet::BUSYBOX_IMAGE;
use e2e::poll_until;
use serde_json::{json, Value};

use crate::scenarios::{bound, handle, name_of, pvc, request_size, wait_detached};
use crate::tier::{Tier, APPS, DRIVER, KUBELET_NODES, KUBELET_NODE_MAX_VOLUMES, STEP};

const K1: &str = KUBELET_NODES[0];
const K2: &str = KUBELET_NODES[1];

/// How a pod uses its claim.
#[derive(Clone, Copy)]
enum Use {
    /// Mounted at /data.
    Mount,
    /// The raw device at /dev/xvda.
    Block,
}

/// A busybox pod on `node` running `script` (`sh -c`) with `claim`; it is not restarted, and
/// a failure's last output lands in its status.
fn app_pod(
    name: &str,
    node: &str,
    claim: &str,
    usage: Use,
    script: &str,
    fs_group: Option<u32>,
) -> String {
    let mut container = json!({
        "name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    match usage {
        Use::Mount => container["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]),
        Use::Block => {
            container["volumeDevices"] = json!([{"name": "data", "devicePath": "/dev/xvda"}])
        }
    }
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": APPS},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            // sh as PID 1 ignores SIGTERM: no point waiting for it.
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        }
    });
    if let Some(group) = fs_group {
        pod["spec"]["securityContext"] = json!({"fsGroup": group});
    }
    pod.to_string()
}

async fn pod_status(t: &Tier, name: &str) -> anyhow::Result<Value> {
    Ok(t.admin()
        .get(&["pod", name, "-n", APPS])
        .await?
        .with_context(|| format!("pod {name} is gone"))?["status"]
        .clone())
}

/// Waits for the pod to end; Ok if it succeeded, else its phase and last output.
async fn succeeded(t: &Tier, name: &str) -> anyhow::Result<()> {
    let status = poll_until(&format!("pod {name} done"), STEP, || async {
        let status = pod_status(t, name).await.ok()?;
        matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(status)
    })
    .await?;
    if status["phase"] != "Succeeded" {
        bail!(
            "pod {name} {}: {}",
            status["phase"],
            status["containerStatuses"][0]["state"]["terminated"]
        );
    }
    Ok(())
}

/// Waits for the pod's container to run; returns its container ID.
async fn running(t: &Tier, name: &str) -> anyhow::Result<String> {
    poll_until(&format!("pod {name} running"), STEP, || async {
        let status = pod_status(t, name).await.ok()?;
        let container = &status["containerStatuses"][0];
        container["state"]["running"]
            .is_object()
            .then(|| container["containerID"].as_str().map(str::to_string))?
    })
    .await
}

/// Runs `args` in the pod's running container.
async fn exec(t: &Tier, node: &str, pod: &str, args: &[&str]) -> anyhow::Result<String> {
    let id = running(t, pod).await?;
    t.kubelet_node(node)?.exec(&id, args).await
}

/// Deletes a pod the way a user does and waits until kubelet has let it go (its volumes
/// unpublished, unstaged and detached from its node).
async fn delete_pod(t: &Tier, name: &str, node: &str, pv: &str) -> anyhow::Result<()> {
    t.admin()
        .run(&["delete", "pod", name, "-n", APPS, "--timeout=120s"])
        .await?;
    wait_detached(t, pv, node).await
}

/// A 1Gi ReadWriteOnce claim of the deployed `rds-nvme` class.
fn rwo_claim(name: &str) -> String {
    pvc(name, "rds-nvme", "1Gi", false, "ReadWriteOnce", "")
}

/// Deletes claims and waits for their PVs, and their disks on mock-rds, to go.
async fn delete_claims(t: &Tier, claims: &[&str], pvs: &[Value]) -> anyhow::Result<()> {
    let mut args = vec!["delete", "pvc", "-n", APPS, "--wait=false"];
    args.extend_from_slice(claims);
    t.admin().run(&args).await?;
    for pv in pvs {
        let name = name_of(pv);
        poll_until(&format!("PV {name} deleted"), STEP, || async {
            t.admin()
                .get(&["pv", &name])
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await?;
        let slot = handle(pv);
        ensure!(
            !t.mock.disks()?.iter().any(|d| d.slot == slot),
            "disk {slot} is still on mock-rds after its PV was deleted"
        );
    }
    Ok(())
}

/// kubelet registers the node plugin: the CSINode entry carries NodeGetInfo's node ID, attach
/// limit and topology key, and the Node its topology label and node-ID annotation. The
/// scheduler then keeps the node within the limit: one pod too many stays Pending.
pub async fn kubelet_registers_the_driver(t: &mut Tier) -> anyhow::Result<()> {
    t.kubelet_nodes().await?;
    let admin = t.admin().clone();
    for node in KUBELET_NODES {
        let csinode = admin.json(&["get", "csinode", node]).await?;
        let entry = csinode["spec"]["drivers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["name"] == DRIVER)
            .with_context(|| format!("CSINode {node} has no {DRIVER}: {csinode}"))?;
        ensure!(entry["nodeID"] == node, "CSINode {node}: {entry}");
        ensure!(
            entry["allocatable"]["count"] == KUBELET_NODE_MAX_VOLUMES,
            "CSINode {node}: {entry}"
        );
        let object = admin.json(&["get", "node", node]).await?;
        let ids = object["metadata"]["annotations"]["csi.volume.kubernetes.io/nodeid"]
            .as_str()
            .unwrap_or_default();
        let ids: Value = serde_json::from_str(ids).unwrap_or_default();
        ensure!(
            ids[DRIVER] == node,
            "Node {node}'s node-ID annotation: {ids}"
        );
        let topology_keys = entry["topologyKeys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for key in topology_keys.iter().filter_map(Value::as_str) {
            ensure!(
                object["metadata"]["labels"][key].is_string(),
                "Node {node} lacks the topology label {key}"
            );
        }
    }

    // The limit: as many pods as volumes allowed run, the next waits.
    let count = KUBELET_NODE_MAX_VOLUMES as usize + 1;
    let claims: Vec<String> = (0..count).map(|i| format!("limit-{i}")).collect();
    for claim in &claims {
        admin.apply(&rwo_claim(claim)).await?;
    }
    let mut pvs = Vec::new();
    for (i, claim) in claims.iter().enumerate().take(count - 1) {
        let pod = format!("limit-{i}");
        admin
            .apply(&app_pod(&pod, K1, claim, Use::Mount, "sleep 3600", None))
            .await?;
        running(t, &pod).await?;
        pvs.push(bound(t, claim).await?);
    }
    let last = format!("limit-{}", count - 1);
    admin
        .apply(&app_pod(
            &last,
            K1,
            &claims[count - 1],
            Use::Mount,
            "sleep 3600",
            None,
        ))
        .await?;
    let why = poll_until(&format!("pod {last} unschedulable"), STEP, || async {
        let status = pod_status(t, &last).await.ok()?;
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .and_then(|c| c["message"].as_str().map(str::to_string))
    })
    .await?;
    ensure!(
        why.contains("max volume count"),
        "pod {last} is unschedulable for another reason: {why}"
    );
    ensure!(
        pod_status(t, &last).await?["phase"] == "Pending",
        "pod {last} left Pending"
    );
    admin
        .run(&["delete", "pod", &last, "-n", APPS, "--wait=false"])
        .await?;
    for (i, pv) in pvs.iter().enumerate() {
        delete_pod(t, &format!("limit-{i}"), K1, &name_of(pv)).await?;
    }
    let claims: Vec<&str> = claims.iter().map(String::as_str).collect();
    delete_claims(t, &claims, &pvs).await
}

/// What a pod writes is read by the next pod on the node, and by a pod on the other node
/// once the first is gone; on a file system and on a raw block device.
pub async fn kubelet_data_follows_the_claim(t: &mut Tier) -> anyhow::Result<()> {
    t.kubelet_nodes().await?;
    let admin = t.admin().clone();
    let token = format!("token-{}", rand::random::<u32>());
    let cases = [
        (
            "follow-fs",
            "rds-nvme",
            Use::Mount,
            format!("echo {token} > /data/f && sync"),
            format!("test \"$(cat /data/f)\" = {token}"),
        ),
        (
            "follow-block",
            "rds-nvme-block",
            Use::Block,
            format!("printf {token} | dd of=/dev/xvda conv=fsync"),
            format!(
                "test \"$(dd if=/dev/xvda bs={} count=1 2>/dev/null)\" = {token}",
                token.len()
            ),
        ),
    ];
    for (claim, class, usage, write, read) in cases {
        let block = matches!(usage, Use::Block);
        admin
            .apply(&pvc(claim, class, "1Gi", block, "ReadWriteOnce", ""))
            .await?;
        let steps = [
            (format!("{claim}-write"), K1, &write),
            (format!("{claim}-read"), K1, &read),
            (format!("{claim}-read-elsewhere"), K2, &read),
        ];
        let mut pv = Value::Null;
        for (pod, node, script) in steps {
            admin
                .apply(&app_pod(&pod, node, claim, usage, script, None))
                .await?;
            succeeded(t, &pod)
                .await
                .with_context(|| format!("{claim} on {node}"))?;
            pv = bound(t, claim).await?;
            delete_pod(t, &pod, node, &name_of(&pv)).await?;
        }
        delete_claims(t, &[claim], &[pv]).await?;
    }
    Ok(())
}

/// A ReadOnlyMany claim (a clone of a written one) is read but not written; a pod's
/// `fsGroup` owns a new volume (the CSIDriver's `fsGroupPolicy: File`).
pub async fn kubelet_read_only_and_fs_group(t: &mut Tier) -> anyhow::Result<()> {
    t.kubelet_nodes().await?;
    let admin = t.admin().clone();
    admin.apply(&rwo_claim("rox-source")).await?;
    admin
        .apply(&app_pod(
            "rox-write",
            K1,
            "rox-source",
            Use::Mount,
            "echo kept > /data/f && sync",
            None,
        ))
        .await?;
    succeeded(t, "rox-write").await?;
    let source = bound(t, "rox-source").await?;
    delete_pod(t, "rox-write", K1, &name_of(&source)).await?;
    admin
        .apply(&pvc(
            "rox",
            "rds-nvme",
            "1Gi",
            false,
            "ReadOnlyMany",
            "  dataSource: {kind: PersistentVolumeClaim, name: rox-source}\n",
        ))
        .await?;
    admin
        .apply(&app_pod(
            "rox-read",
            K2,
            "rox",
            Use::Mount,
            "test \"$(cat /data/f)\" = kept && if touch /data/g; then echo wrote; exit 1; fi",
            None,
        ))
        .await?;
    succeeded(t, "rox-read")
        .await
        .context("a ReadOnlyMany claim in a pod")?;
    let rox = bound(t, "rox").await?;
    delete_pod(t, "rox-read", K2, &name_of(&rox)).await?;

    let group = 4321;
    admin.apply(&rwo_claim("owned")).await?;
    admin
        .apply(&app_pod(
            "owned",
            K1,
            "owned",
            Use::Mount,
            &format!(
                "test \"$(stat -c %g /data)\" = {group} && touch /data/f && \
                 test \"$(stat -c %g /data/f)\" = {group}"
            ),
            Some(group),
        ))
        .await?;
    succeeded(t, "owned").await.context("fsGroup")?;
    let owned = bound(t, "owned").await?;
    delete_pod(t, "owned", K1, &name_of(&owned)).await?;
    delete_claims(t, &["rox", "rox-source", "owned"], &[rox, source, owned]).await
}

/// `df` in the pod, in KiB.
async fn size_in_pod(t: &Tier, node: &str, pod: &str) -> anyhow::Result<u64> {
    let out = exec(t, node, pod, &["df", "-k", "/data"]).await?;
    out.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("df in {pod}: {out}"))
}

/// A mounted claim grows while its pod runs: the file system the pod sees grows with it.
///
/// On XFS, in a class made from the deployed `rds-nvme`: growing a mounted ext4 takes
/// CAP_SYS_RESOURCE, which this host withholds even from root (the node plugin says so, and the
/// VM tier grows a mounted ext4).
pub async fn kubelet_online_expansion(t: &mut Tier) -> anyhow::Result<()> {
    t.kubelet_nodes().await?;
    let admin = t.admin().clone();
    let deployed = admin.json(&["get", "storageclass", "rds-nvme"]).await?;
    let mut class = json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "rds-nvme-xfs"},
    });
    for key in [
        "provisioner",
        "parameters",
        "reclaimPolicy",
        "volumeBindingMode",
        "allowVolumeExpansion",
    ] {
        class[key] = deployed[key].clone();
    }
    class["parameters"]["csi.storage.k8s.io/fstype"] = json!("xfs");
    admin.apply(&class.to_string()).await?;
    admin
        .apply(&pvc(
            "grow",
            "rds-nvme-xfs",
            "1Gi",
            false,
            "ReadWriteOnce",
            "",
        ))
        .await?;
    admin
        .apply(&app_pod("grow", K1, "grow", Use::Mount, "sleep 3600", None))
        .await?;
    let before = size_in_pod(t, K1, "grow").await?;
    ensure!(before < 1 << 20, "a 1Gi volume shows {before} KiB");
    request_size(t, "grow", "2Gi").await?;
    let after = poll_until("the pod's file system grown", STEP, || async {
        let size = size_in_pod(t, K1, "grow").await.ok()?;
        (size > 3 << 19).then_some(size)
    })
    .await?;
    poll_until("PVC grow's capacity 2Gi", STEP, || async {
        let pvc = admin.get(&["pvc", "grow", "-n", APPS]).await.ok()??;
        (pvc["status"]["capacity"]["storage"] == "2Gi").then_some(())
    })
    .await?;
    eprintln!("cluster: the pod's /data grew from {before} KiB to {after} KiB");
    let pv = bound(t, "grow").await?;
    delete_pod(t, "grow", K1, &name_of(&pv)).await?;
    delete_claims(t, &["grow"], &[pv]).await?;
    admin
        .run(&["delete", "storageclass", "rds-nvme-xfs"])
        .await?;
    Ok(())
}

/// kubelet restarted, then the node plugin restarted, under a running pod: the pod keeps its
/// data and its writes, and deleting it still unmounts, unstages and detaches.
pub async fn kubelet_and_node_plugin_restarts(t: &mut Tier) -> anyhow::Result<()> {
    t.kubelet_nodes().await?;
    let admin = t.admin().clone();
    let mounted_before = mounts_under_kubelet(t, K1)?;
    admin.apply(&rwo_claim("steady")).await?;
    admin
        .apply(&app_pod(
            "steady",
            K1,
            "steady",
            Use::Mount,
            "echo before > /data/f && sync && sleep 3600",
            None,
        ))
        .await?;
    let read = |expected: &'static str| {
        let t = &*t;
        async move {
            let out = exec(t, K1, "steady", &["cat", "/data/f"]).await?;
            ensure!(
                out.trim() == expected,
                "/data/f holds {out:?}, not {expected}"
            );
            Ok(())
        }
    };
    read("before").await?;

    eprintln!("cluster: restarting kubelet on {K1}");
    {
        let node = t.kubelet_node(K1)?;
        let mut procs = t.procs();
        node.stop_kubelet(&mut procs);
        node.start_kubelet(&mut procs)?;
    }
    wait_kubelet_heartbeat(t, K1).await?;
    read("before").await?;
    exec(
        t,
        K1,
        "steady",
        &["sh", "-c", "echo after-kubelet > /data/f && sync"],
    )
    .await?;
    read("after-kubelet").await?;

    eprintln!("cluster: killing the node plugin on {K1}");
    let plugin = Tier::node_plugin_proc(K1);
    let restarts = |t: &Tier| {
        t.procs()
            .running
            .iter()
            .find(|p| p.name == plugin)
            .map(|p| p.restarts)
    };
    let before = restarts(t).context("no node plugin process")?;
    t.procs().kill(&plugin)?;
    poll_until("the node plugin restarted", STEP, || async {
        (restarts(t)? > before).then_some(())
    })
    .await?;
    read("after-kubelet").await?;

    let pv = bound(t, "steady").await?;
    let mounted = mounts_under_kubelet(t, K1)?;
    ensure!(
        mounted
            .difference(&mounted_before)
            .any(|m| m.ends_with("/globalmount")),
        "nothing staged on {K1} while the pod runs"
    );
    delete_pod(t, "steady", K1, &name_of(&pv)).await?;
    let mounted_after = mounts_under_kubelet(t, K1)?;
    let left: Vec<_> = mounted_after.difference(&mounted_before).collect();
    ensure!(left.is_empty(), "still mounted on {K1}: {left:?}");
    delete_claims(t, &["steady"], &[pv]).await
}

/// Waits for a fresh Ready heartbeat from the node's kubelet.
async fn wait_kubelet_heartbeat(t: &Tier, node: &str) -> anyhow::Result<()> {
    let admin = t.admin();
    let seen = admin
        .json(&["get", "lease", node, "-n", "kube-node-lease"])
        .await?["spec"]["renewTime"]
        .clone();
    poll_until(
        &format!("kubelet on {node} renewing its lease"),
        STEP,
        || async {
            let lease = admin
                .get(&["lease", node, "-n", "kube-node-lease"])
                .await
                .ok()??;
            (lease["spec"]["renewTime"] != seen).then_some(())
        },
    )
    .await
}

/// Mounts under kubelet's pod and plugin directories on `node`.
fn mounts_under_kubelet(t: &Tier, node: &str) -> anyhow::Result<BTreeSet<String>> {
    let root = &t.kubelet_node(node)?.root_dir;
    let dirs = [root.join("pods"), root.join("plugins")];
    Ok(mount_points()
        .into_iter()
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .collect())
}

fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// After every kubelet scenario: no mount of a volume, no loop device over the RDS's files, no
/// node record or staging directory, no VolumeAttachment to a kubelet node, and no disk on
/// mock-rds that was not there before the kubelet nodes started.
pub async fn kubelet_leaves_nothing_behind(t: &mut Tier) -> anyhow::Result<()> {
    t.kubelet_nodes().await?;
    let mut left = Vec::new();
    for node in KUBELET_NODES {
        left.extend(mounts_under_kubelet(t, node)?);
        let root = &t.kubelet_node(node)?.root_dir;
        let records = root.join("plugins").join(DRIVER).join("volumes");
        for e in std::fs::read_dir(&records).into_iter().flatten().flatten() {
            left.push(format!("node record {}", e.path().display()));
        }
        let staging = root.join("plugins/kubernetes.io/csi").join(DRIVER);
        for e in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
            left.push(format!("staging directory {}", e.path().display()));
        }
    }
    let data_dir = std::fs::canonicalize(&t.mock.data_dir)?;
    for dev in e2e::loop_devices_over(&data_dir) {
        left.push(format!("loop device {}", dev.display()));
    }
    for va in t.admin().items(&["volumeattachments"]).await? {
        if KUBELET_NODES.iter().any(|n| va["spec"]["nodeName"] == *n) {
            left.push(format!("VolumeAttachment {}", name_of(&va)));
        }
    }
    for disk in t.mock.disks()? {
        if !t.disks_before_kubelets.contains(&disk.slot) {
            left.push(format!("disk {} on mock-rds", disk.slot));
        }
    }
    if !left.is_empty() {
        bail!("left behind:\n{}", left.join("\n"));
    }
    Ok(())
}
