//! `rds-csi migrate-check`: before this driver replaces the Go driver, reads the cluster's PVs,
//! VolumeSnapshotContents and StorageClasses of the driver name, and the RDS, and says which
//! will work as they are and what needs action. It changes nothing.

use std::collections::{BTreeSet, HashMap};

use ::kube::api::{Api, ListParams};
use anyhow::Context;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use serde::Serialize;

use super::{emit, NeedsAction, OutputFormat, RdsTarget};
use crate::controller::params::{ParamDefaults, VolumeParams};
use crate::ids::{self, ManagedFile};
use crate::kube::api_deadline::{within, LIST_TIMEOUT};
use crate::kube::orphans::{snapshot_contents, snapshot_handles};
use crate::node::context::parse_stage_context;
use crate::rds::{deadline_in, Disk, Port, RdsPath};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Works as it is after the switch.
    Ok,
    /// Needs something done first (named in the detail).
    Action,
}

/// One object and what the switch means for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// What the cluster holds for the driver name.
#[derive(Debug, Default)]
pub struct ClusterView {
    /// PV name, volume handle, volume attributes.
    pub volumes: Vec<(String, String, HashMap<String, String>)>,
    /// VolumeSnapshotContent name, snapshot handle (None while not yet made).
    pub snapshots: Vec<(String, Option<String>)>,
    /// StorageClass name, parameters.
    pub classes: Vec<(String, HashMap<String, String>)>,
}

pub struct MigrateCheckOptions {
    pub rds: RdsTarget,
    /// The cluster to check.
    pub kubeconfig: std::path::PathBuf,
    /// The CSI driver name of the objects to check.
    pub driver_name: String,
    /// The node's `--managed-nqn-prefix`.
    pub managed_nqn_prefix: String,
    pub output: OutputFormat,
}

/// How the driver is about to be configured.
pub struct Settings {
    pub bases: Vec<RdsPath>,
    pub managed_nqn_prefix: String,
}

fn ok(kind: &'static str, name: &str, detail: impl Into<String>) -> Finding {
    Finding {
        kind,
        name: name.to_string(),
        verdict: Verdict::Ok,
        detail: detail.into(),
    }
}

fn action(kind: &'static str, name: &str, detail: impl Into<String>) -> Finding {
    Finding {
        kind,
        name: name.to_string(),
        verdict: Verdict::Action,
        detail: detail.into(),
    }
}

fn dir_of(path: &str) -> Option<&str> {
    path.rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
}

/// Why a disk on the RDS would not be the driver's under these settings, with the fix.
fn disk_problem(settings: &Settings, disk: &Disk, wanted: &str) -> Option<String> {
    if ids::classify_disk(&settings.bases, disk).is_some() {
        return None;
    }
    let path = disk.file_path.as_deref().unwrap_or("-");
    match dir_of(path).map(RdsPath::new) {
        Some(Ok(dir)) if !ids::is_managed_dir(&settings.bases, &dir) => Some(format!(
            "its file {path} is not in a base path: add {dir} to --rds-volume-base-path"
        )),
        _ => Some(format!(
            "the RDS disk {} ({path}) is not a {wanted} of this driver's form; it would not be managed",
            disk.slot
        )),
    }
}

/// Judges every object against the RDS's disks: nothing here talks to anything.
pub fn check(view: &ClusterView, disks: &[Disk], settings: &Settings) -> Vec<Finding> {
    let by_slot: HashMap<&str, &Disk> = disks.iter().map(|d| (d.slot.as_str(), d)).collect();
    let mut out = Vec::new();
    for (name, handle, attrs) in &view.volumes {
        let kind = "PersistentVolume";
        let Some(id) = ids::parse_volume_id(handle) else {
            out.push(action(kind, name, format!(
                "volume handle {handle} is not a volume ID of this driver (pvc-..., vol-<uuid>); it would not be found"
            )));
            continue;
        };
        if let Err(e) =
            parse_stage_context(handle, attrs, &HashMap::new(), &settings.managed_nqn_prefix)
        {
            out.push(action(
                kind,
                name,
                format!("the node would refuse its volume context: {e}"),
            ));
            continue;
        }
        let Some(disk) = by_slot.get(id.as_str()) else {
            out.push(action(kind, name, format!(
                "no disk {id} on the RDS: the volume cannot be staged (is it deleted, or on another RDS?)"
            )));
            continue;
        };
        match disk_problem(settings, disk, "volume") {
            Some(problem) => out.push(action(kind, name, problem)),
            None => out.push(ok(
                kind,
                name,
                format!(
                    "works as it is ({})",
                    disk.file_path.as_deref().unwrap_or("-")
                ),
            )),
        }
    }
    for (name, handle) in &view.snapshots {
        let kind = "VolumeSnapshotContent";
        let Some(handle) = handle else {
            out.push(ok(kind, name, "no snapshot made yet; nothing to take over"));
            continue;
        };
        let Some(id) = ids::parse_snapshot_id(handle) else {
            out.push(action(kind, name, format!(
                "snapshot handle {handle} is not a snapshot ID of this driver (snap-...); it would not be found"
            )));
            continue;
        };
        let Some(disk) = by_slot.get(id.as_str()) else {
            out.push(action(
                kind,
                name,
                format!("no disk {id} on the RDS: it cannot be restored"),
            ));
            continue;
        };
        if let Some(problem) = disk_problem(settings, disk, "snapshot") {
            out.push(action(kind, name, problem));
            continue;
        }
        let source = match ids::classify_disk(&settings.bases, disk) {
            Some(ManagedFile::Snapshot {
                source: Some(src), ..
            }) => format!("source {src}"),
            _ => "source not recorded in its ID (v0.13 form): ListSnapshots reports none".into(),
        };
        out.push(ok(kind, name, format!("works as it is; {source}")));
    }
    // The NVMe address is the node's concern; any default lets the path checks run.
    let defaults = ParamDefaults {
        base_paths: settings.bases.clone(),
        nvme_address: Some("0.0.0.0".into()),
        nvme_port: Port::new(4420).expect("a valid port"),
    };
    for (name, params) in &view.classes {
        let kind = "StorageClass";
        match VolumeParams::parse(params, &defaults) {
            Ok(p) => {
                let ignored: BTreeSet<&str> = params
                    .keys()
                    .map(String::as_str)
                    .filter(|k| crate::controller::params::GO_IGNORED_KEYS.contains(k))
                    .collect();
                let note = if ignored.is_empty() {
                    String::new()
                } else {
                    let keys: Vec<&str> = ignored.into_iter().collect();
                    format!("; ignored (logged): {}", keys.join(", "))
                };
                out.push(ok(kind, name, format!("new volumes go to {}{note}", p.dir)));
            }
            Err(e) => out.push(action(
                kind,
                name,
                format!(
                "new PVCs would fail: {}; StorageClass parameters cannot be edited, so fix the \
                 driver's flags (or make a new StorageClass)",
                e.message()
            ),
            )),
        }
    }
    out
}

/// Reads the cluster's objects of `driver`. A cluster without the snapshot CRD has no snapshots.
pub async fn read_cluster(client: &::kube::Client, driver: &str) -> anyhow::Result<ClusterView> {
    let mut view = ClusterView::default();
    let pvs = within(
        LIST_TIMEOUT,
        Api::<PersistentVolume>::all(client.clone()).list(&ListParams::default()),
    )
    .await
    .context("listing PersistentVolumes")?;
    for pv in pvs.items {
        let Some(csi) = pv.spec.and_then(|s| s.csi).filter(|c| c.driver == driver) else {
            continue;
        };
        let attrs = csi
            .volume_attributes
            .unwrap_or_default()
            .into_iter()
            .collect();
        view.volumes.push((
            pv.metadata.name.unwrap_or_default(),
            csi.volume_handle,
            attrs,
        ));
    }
    let vscs = snapshot_contents(client, driver)
        .await
        .context("listing VolumeSnapshotContents")?;
    for vsc in &vscs {
        let handle = snapshot_handles(vsc).first().map(|h| h.to_string());
        view.snapshots
            .push((vsc.metadata.name.clone().unwrap_or_default(), handle));
    }
    let classes = within(
        LIST_TIMEOUT,
        Api::<StorageClass>::all(client.clone()).list(&ListParams::default()),
    )
    .await
    .context("listing StorageClasses")?;
    for sc in classes
        .items
        .into_iter()
        .filter(|c| c.provisioner == driver)
    {
        view.classes.push((
            sc.metadata.name.unwrap_or_default(),
            sc.parameters.unwrap_or_default().into_iter().collect(),
        ));
    }
    Ok(view)
}

/// Fails (exit status 1) when anything needs action.
pub async fn run(options: MigrateCheckOptions) -> anyhow::Result<()> {
    let client = crate::kube::connect(Some(&options.kubeconfig))
        .await?
        .context("--kubeconfig gave no client")?;
    let settings = Settings {
        bases: options.rds.base_paths()?,
        managed_nqn_prefix: options.managed_nqn_prefix.clone(),
    };
    let view = read_cluster(&client, &options.driver_name).await?;
    let rds = options.rds.client()?;
    let disks = rds
        .list_disks(deadline_in(options.rds.timeout))
        .await
        .context("listing the RDS's disks")?;
    let findings = check(&view, &disks, &settings);
    let all_ok = findings.iter().all(|f| f.verdict == Verdict::Ok);
    emit(
        options.output,
        &serde_json::json!({ "findings": findings, "ready": all_ok }),
        |out| {
            for f in &findings {
                let verdict = match f.verdict {
                    Verdict::Ok => "ok",
                    Verdict::Action => "ACTION",
                };
                writeln!(
                    out,
                    "{verdict:<7} {:<22} {:<45} {}",
                    f.kind, f.name, f.detail
                )?;
            }
            writeln!(
                out,
                "{}",
                if all_ok {
                    "ready: every object works as it is"
                } else {
                    "not ready: act on the ACTION lines before switching"
                }
            )?;
            Ok(())
        },
    )?;
    let actions = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Action)
        .count();
    if actions > 0 {
        return Err(NeedsAction(format!(
            "{} need action before the switch",
            super::count(actions, "object")
        ))
        .into());
    }
    Ok(())
}
