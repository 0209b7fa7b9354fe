//! Two controller replicas, each with its sidecars, as the Deployment runs them; the pod whose
//! sidecars lead provisioning dies (every process killed, never restarted: its node is gone)
//! in the middle of a burst of claims, snapshots and attachments. The other replica's sidecars
//! take the Leases over and everything completes, once, on the RDS.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use e2e::poll_until;

use crate::scenarios::{attachments, handle, name_of, pod, pvc, snapshot_handle_when_ready};
use crate::tier::{Tier, APPS, NAMESPACE};

/// The provisioner's Lease (named after the driver) and the other sidecars'.
const PROVISIONER_LEASE: &str = "rds-csi-srvlab-io";
const SIDECAR_LEASES: [&str; 4] = [
    PROVISIONER_LEASE,
    "external-attacher-leader-rds-csi-srvlab-io",
    "external-resizer-rds-csi-srvlab-io",
    "external-snapshotter-leader-rds-csi-srvlab-io",
];
/// Claims before the kill and after it, and snapshots of the first claims.
const BEFORE: usize = 10;
const AFTER: usize = 10;
const SNAPSHOTS: usize = 5;
/// The sidecars' Leases last 15 s; the survivor's work then needs its own time.
const COMPLETION: Duration = Duration::from_secs(240);

fn claim(i: usize) -> String {
    format!("burst-{i}")
}

fn user(i: usize) -> String {
    format!("burst-user-{i}")
}

/// The node the user of claim `i` is on: the tier's nodes still there, in turn.
fn node_for(i: usize, nodes: &[String]) -> String {
    nodes[i % nodes.len()].clone()
}

async fn lease_holder(t: &Tier, lease: &str) -> Option<String> {
    let lease = t
        .admin()
        .get(&["lease", lease, "-n", NAMESPACE])
        .await
        .ok()
        .flatten()?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// Claims `range`, each with a pod using it on its node.
async fn apply_claims(
    t: &Tier,
    range: std::ops::Range<usize>,
    nodes: &[String],
) -> anyhow::Result<()> {
    let mut yaml = String::new();
    for i in range {
        yaml.push_str(&pvc(
            &claim(i),
            "rds-nvme",
            "1Gi",
            false,
            "ReadWriteOnce",
            "",
        ));
        yaml.push_str("---\n");
        yaml.push_str(&pod(&user(i), &claim(i), &node_for(i, nodes), false));
        yaml.push_str("---\n");
    }
    t.admin().apply(&yaml).await.map(drop)
}

async fn bound_claims(t: &Tier) -> anyhow::Result<BTreeSet<String>> {
    Ok(t.admin()
        .items(&["pvc", "-n", APPS])
        .await?
        .iter()
        .filter(|c| c["status"]["phase"] == "Bound")
        .map(name_of)
        .filter(|n| n.starts_with("burst-"))
        .collect())
}

/// The slots of every disk on mock-rds, and the paths of its files.
fn rds_contents(t: &Tier) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let disks = t.mock.disks()?.into_iter().map(|d| d.slot).collect();
    let files = t.mock.files()?.into_iter().map(|f| f.path).collect();
    Ok((disks, files))
}

pub async fn failover(t: &mut Tier) -> anyhow::Result<()> {
    let admin = t.admin().clone();
    // Nodes of its own: earlier scenarios delete some of the tier's.
    let nodes: Vec<String> = vec!["node-f1".into(), "node-f2".into()];
    for node in &nodes {
        t.add_node(node).await?;
    }
    let (disks_before, files_before) = rds_contents(t)?;

    let second = t.run_second_replica().await?;
    let replicas = [t.controller_pod.clone(), second];
    for lease in SIDECAR_LEASES {
        let holder = poll_until(&format!("a holder of Lease {lease}"), COMPLETION, || {
            lease_holder(t, lease)
        })
        .await?;
        ensure!(
            replicas.contains(&holder),
            "Lease {lease} is held by {holder}, not a replica ({replicas:?})"
        );
    }

    apply_claims(t, 0..BEFORE, &nodes).await?;
    let mut snapshots = String::new();
    for i in 0..SNAPSHOTS {
        snapshots.push_str(&format!(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\n\
             metadata: {{name: burst-snap-{i}, namespace: {APPS}}}\n\
             spec: {{volumeSnapshotClassName: rds-csi-snapclass, \
             source: {{persistentVolumeClaimName: {}}}}}\n---\n",
            claim(i)
        ));
    }
    admin.apply(&snapshots).await?;

    // Mid-burst: some claims bound, not all.
    poll_until(
        "the first claims of the burst bound",
        COMPLETION,
        || async { (bound_claims(t).await.ok()?.len() >= 3).then_some(()) },
    )
    .await?;
    let leader = lease_holder(t, PROVISIONER_LEASE)
        .await
        .context("the provisioner's Lease has no holder")?;
    let dying: Vec<String> = t
        .procs()
        .running
        .iter()
        .filter(|p| p.name.starts_with(&format!("{leader}-")))
        .map(|p| p.name.clone())
        .collect();
    ensure!(!dying.is_empty(), "no process of {leader} runs");
    eprintln!(
        "cluster: killing {leader} ({} processes) with {} of {BEFORE} claims bound",
        dying.len(),
        bound_claims(t).await?.len()
    );
    let killed_at = Instant::now();
    t.procs()
        .kill_for_good(&dying.iter().map(String::as_str).collect::<Vec<_>>());

    // Claims made after the kill: only a provisioner that took the Lease over binds them.
    apply_claims(t, BEFORE..BEFORE + AFTER, &nodes).await?;
    let after_kill: BTreeSet<String> = (BEFORE..BEFORE + AFTER).map(claim).collect();
    poll_until("a claim made after the kill bound", COMPLETION, || async {
        let bound = bound_claims(t).await.ok()?;
        (bound.intersection(&after_kill).count() > 0).then_some(())
    })
    .await?;
    let failover = killed_at.elapsed();
    eprintln!(
        "cluster: failover: {:.1} s from the kill to the first claim made after it bound",
        failover.as_secs_f64()
    );

    // Everything completes on the survivor.
    poll_until("every claim of the burst bound", COMPLETION, || async {
        (bound_claims(t).await.ok()?.len() == BEFORE + AFTER).then_some(())
    })
    .await?;
    let mut handles = BTreeSet::new();
    for i in 0..BEFORE + AFTER {
        let pvc = admin.json(&["get", "pvc", &claim(i), "-n", APPS]).await?;
        let pv_name = pvc["spec"]["volumeName"].as_str().unwrap_or_default();
        let node = node_for(i, &nodes);
        poll_until(
            &format!("{pv_name} attached to {node}"),
            COMPLETION,
            || async {
                let vas = attachments(t, pv_name).await.ok()?;
                vas.contains(&(node.clone(), true)).then_some(vas)
            },
        )
        .await
        .and_then(|vas| {
            // RWO: one node only.
            ensure!(vas.len() == 1, "{pv_name} has attachments {vas:?}");
            Ok(())
        })?;
        let pv = admin.json(&["get", "pv", pv_name]).await?;
        handles.insert(handle(&pv));
    }
    let mut snapshot_handles = BTreeSet::new();
    for i in 0..SNAPSHOTS {
        let name = format!("burst-snap-{i}");
        snapshot_handles.insert(snapshot_handle_when_ready(t, &name, COMPLETION).await?);
    }

    // Once each on the RDS: one disk per claim, its snapshots, nothing else new.
    let (disks, files) = rds_contents(t)?;
    let new_disks: BTreeSet<String> = disks.difference(&disks_before).cloned().collect();
    ensure!(
        handles.is_subset(&new_disks),
        "claims without a disk: {:?}",
        handles.difference(&new_disks).collect::<Vec<_>>()
    );
    let made: BTreeSet<String> = handles.union(&snapshot_handles).cloned().collect();
    let stray: Vec<&String> = new_disks.difference(&made).collect();
    ensure!(stray.is_empty(), "disks made twice or left over: {stray:?}");
    let stray_files: Vec<&String> = files
        .difference(&files_before)
        .filter(|f| !made.iter().any(|slot| f.contains(slot.as_str())))
        .collect();
    ensure!(stray_files.is_empty(), "files nobody owns: {stray_files:?}");

    // Tidy up through Kubernetes; the survivor deletes every disk and file.
    admin
        .run(&[
            "delete",
            "pod",
            "-n",
            APPS,
            "--all",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .await?;
    admin
        .run(&[
            "delete",
            "volumesnapshot",
            "-n",
            APPS,
            "--all",
            "--wait=false",
        ])
        .await?;
    admin
        .run(&["delete", "pvc", "-n", APPS, "--all", "--wait=false"])
        .await?;
    poll_until(
        "the burst's disks and files gone from mock-rds",
        COMPLETION,
        || async {
            let (disks, files) = rds_contents(t).ok()?;
            let left = disks.intersection(&made).count()
                + files
                    .iter()
                    .filter(|f| made.iter().any(|slot| f.contains(slot.as_str())))
                    .count();
            (left == 0).then_some(())
        },
    )
    .await?;
    // The provisioner deletes a PV object only after its disk: the next scenario reads PVs.
    poll_until("the burst's PVs gone", COMPLETION, || async {
        let pvs = admin.items(&["pv"]).await.ok()?;
        (!pvs
            .iter()
            .any(|pv| made.contains(&crate::scenarios::handle(pv))))
        .then_some(())
    })
    .await?;
    // The second replica ran with the same RBAC: nothing it asked for was refused.
    crate::scenarios::no_forbidden_in_logs(t).await
}
