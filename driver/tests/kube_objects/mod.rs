//! Kubernetes objects as the driver's tests make them, and their API paths: shared by the real
//! API server (`kube_real`) and the fake one kept for faults (`kube_fake`).

#![allow(dead_code)]

use serde_json::{json, Value};

pub const NODES: &str = "/api/v1/nodes";
pub const CSINODES: &str = "/apis/storage.k8s.io/v1/csinodes";
pub const PVS: &str = "/api/v1/persistentvolumes";
pub const VAS: &str = "/apis/storage.k8s.io/v1/volumeattachments";
pub const VSCS: &str = "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents";
pub const STORAGE_CLASSES: &str = "/apis/storage.k8s.io/v1/storageclasses";
pub const DRIVER: &str = "rds.csi.srvlab.io";

pub fn leases(ns: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases")
}

pub fn events(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/events")
}

pub fn node(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

/// The CSINode kubelet keeps for `name`: one entry per driver, with the attach limit the
/// driver's NodeGetInfo reported (None: no limit).
pub fn csinode(name: &str, drivers: &[(&str, Option<i32>)]) -> Value {
    let drivers: Vec<Value> = drivers
        .iter()
        .map(|(driver, count)| {
            let mut d = json!({"name": driver, "nodeID": name, "topologyKeys": []});
            if let Some(count) = count {
                d["allocatable"] = json!({"count": count});
            }
            d
        })
        .collect();
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": name},
        "spec": {"drivers": drivers},
    })
}

/// A PV of `driver` for volume `handle`, bound to `default/claim-<name>`.
pub fn pv(name: &str, handle: &str, driver: &str, access: &str, mode: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {
            "accessModes": [access],
            "volumeMode": mode,
            "capacity": {"storage": "1Gi"},
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": format!("claim-{name}"), "uid": "c1"},
            "csi": {"driver": driver, "volumeHandle": handle},
        },
    })
}

/// A VolumeAttachment; its creation time is the API server's to set.
pub fn va(name: &str, pv: &str, node: &str, attacher: &str, attached: bool) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": attacher, "nodeName": node, "source": {"persistentVolumeName": pv}},
        "status": {"attached": attached},
    })
}

pub fn vsc(name: &str, driver: &str, snapshot_handle: &str) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": name},
        "spec": {"driver": driver, "deletionPolicy": "Delete",
                 "source": {"volumeHandle": "pvc-x"},
                 "volumeSnapshotRef": {"name": "s", "namespace": "default"}},
        "status": {"snapshotHandle": snapshot_handle, "readyToUse": true},
    })
}

/// Polls `check` until it holds or `timeout` passes (no sleep is used as synchronisation:
/// the condition itself is what is waited for).
pub async fn eventually<F: FnMut() -> bool>(timeout: std::time::Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
