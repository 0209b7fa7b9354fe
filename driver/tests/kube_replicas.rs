//! Two controller replicas against one RDS (mock-rds) and one real API server, as the manifests
//! run them: each pod's sidecars elect their leaders on their own, so publishes, unpublishes
//! and fence repairs of one volume may reach either replica, and the leader may move between
//! two calls. Each replica must decide from the cluster's VolumeAttachments as they are, never
//! from what it did itself. Here the test plays the attacher: it creates each VolumeAttachment,
//! calls one replica, then marks it attached, as the external-attacher does.

mod common;
mod kube_objects;
mod kube_real;

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::*;
use kube_objects::*;
use kube_real::RealApi;
use rds_csi::controller::{ControllerConfig, ControllerService};
use rds_csi::kube::attachments::AttachmentSync;
use tonic::{Code, Request};

use common::controller::{
    block_cap, config, create_req, fence_key, fencing_config, fixture_with, mount_cap, Fixture, GIB,
};

/// One replica: its own RDS connection and attachment table, the cluster's nodes, and the
/// attachment re-reads `serve` wires in.
fn replica(f: &Fixture, config: ControllerConfig, api: &RealApi) -> ControllerService {
    let svc = common::controller::service_with(&f.mock, &f.key, config);
    let sync = AttachmentSync::new(api.client(), DRIVER, Arc::clone(svc.attachments()));
    svc.with_node_lookup(api.client(), DRIVER)
        .with_attachment_sync(sync)
}

struct Cluster {
    f: Fixture,
    api: RealApi,
    a: ControllerService,
    b: ControllerService,
}

async fn cluster(config: ControllerConfig) -> Cluster {
    let f = fixture_with(config.clone()).await;
    let api = RealApi::start().await;
    for name in ["node-a", "node-b"] {
        api.put(NODES, node(name, true)).await;
    }
    let a = replica(&f, config.clone(), &api);
    let b = replica(&f, config, &api);
    Cluster { f, api, a, b }
}

fn va_name(node: &str) -> String {
    format!("va-{node}")
}

/// The PV the provisioner would make for `v`.
async fn put_pv(api: &RealApi, v: &Volume, access: &str, mode: &str) {
    let mut pv = pv(&v.volume_id, &v.volume_id, DRIVER, access, mode);
    pv["spec"]["csi"]["volumeAttributes"] = serde_json::to_value(&v.volume_context).unwrap();
    api.put(PVS, pv).await;
}

async fn publish_on(
    svc: &ControllerService,
    v: &Volume,
    node: &str,
    cap: &VolumeCapability,
) -> Result<(), tonic::Status> {
    svc.controller_publish_volume(Request::new(ControllerPublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: node.into(),
        volume_capability: Some(cap.clone()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    }))
    .await
    .map(drop)
}

async fn unpublish_on(svc: &ControllerService, v: &Volume, node: &str) {
    svc.controller_unpublish_volume(Request::new(ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: node.into(),
        ..Default::default()
    }))
    .await
    .unwrap();
}

/// The attacher's attach through `svc`: the VolumeAttachment exists first, and is marked
/// attached once the publish succeeded.
async fn attach(
    c: &Cluster,
    svc: &ControllerService,
    v: &Volume,
    node: &str,
    cap: &VolumeCapability,
) -> Result<(), tonic::Status> {
    let va = |attached| va(&va_name(node), &v.volume_id, node, DRIVER, attached);
    let mut pending = va(false);
    // The attacher's finalizer: a deleted VolumeAttachment stays until the detach is done.
    pending["metadata"]["finalizers"] = serde_json::json!(["external-attacher/rds-csi"]);
    c.api.put(VAS, pending.clone()).await;
    publish_on(svc, v, node, cap).await?;
    let mut attached = pending;
    attached["status"] = serde_json::json!({"attached": true});
    c.api.put(VAS, attached).await;
    Ok(())
}

/// Kubernetes deletes the VolumeAttachment: it stays, marked for deletion, until `finish_detach`.
async fn start_detach(c: &Cluster, node: &str) {
    c.api.delete(VAS, &va_name(node)).await.unwrap();
}

/// The attacher drops its finalizer after the unpublish, and the VolumeAttachment is gone.
async fn finish_detach(c: &Cluster, node: &str) {
    let mut va = c.api.get(VAS, &va_name(node)).await.unwrap();
    va["metadata"]["finalizers"] = serde_json::json!([]);
    c.api.replace(VAS, va).await;
    assert!(c.api.get(VAS, &va_name(node)).await.is_none());
}

#[tokio::test]
async fn either_replica_refuses_a_second_node_and_follows_the_others_detach() {
    let c = cluster(config()).await;
    let rwo = mount_cap(Mode::SingleNodeWriter);
    let v =
        c.a.create_volume(Request::new(create_req("pvc-ha", GIB)))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
    put_pv(&c.api, &v, "ReadWriteOnce", "Filesystem").await;
    attach(&c, &c.a, &v, "node-a", &rwo).await.unwrap();

    // The attacher's leader moved to replica b, which never published the volume.
    let err = attach(&c, &c.b, &v, "node-b", &rwo).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("node-a"), "{}", err.message());
    c.api.delete(VAS, &va_name("node-b")).await;

    // Replica b detaches node-a, which only replica a had published.
    start_detach(&c, "node-a").await;
    unpublish_on(&c.b, &v, "node-a").await;
    finish_detach(&c, "node-a").await;
    // The leader is back on replica a, whose own memory still has node-a.
    attach(&c, &c.a, &v, "node-b", &rwo).await.unwrap();
    assert_eq!(c.a.attachments().nodes("pvc-ha"), ["node-b"]);

    // Replica b will not delete a volume that replica a published.
    let err =
        c.b.delete_volume(Request::new(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(c.f.mock.disk("pvc-ha").is_some());
}

#[tokio::test]
async fn a_fence_pass_on_either_replica_follows_the_others_attachments() {
    let c = cluster(fencing_config()).await;
    let rwx = block_cap(Mode::MultiNodeMultiWriter);
    let v = common::controller::fenced_volume(&c.f, "pvc-hf").await;
    put_pv(&c.api, &v, "ReadWriteMany", "Block").await;
    let allowed = || {
        c.f.mock
            .disk("pvc-hf")
            .unwrap()
            .nvme_tcp_server_allow_host_name
    };
    let node_a = fence_key().host_identity("node-a").nqn;
    let closed = fence_key().closed_host();
    let pass = |svc: &ControllerService| {
        let fence = svc.fence().unwrap().clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            fence.pass(deadline).await.unwrap()
        }
    };

    attach(&c, &c.a, &v, "node-a", &rwx).await.unwrap();
    assert_eq!(allowed(), node_a);
    // Replica b holds the Lease and runs the repair pass; node-a stays let in.
    let report = pass(&c.b).await;
    assert_eq!((report.repaired, report.failed), (0, 0));
    assert_eq!(allowed(), node_a);

    // Replica b detaches node-a; while its VolumeAttachment is still being deleted, replica a
    // (holding the Lease now, with node-a in its memory) must not let node-a back in.
    start_detach(&c, "node-a").await;
    unpublish_on(&c.b, &v, "node-a").await;
    assert_eq!(allowed(), closed);
    let report = pass(&c.a).await;
    assert_eq!((report.repaired, report.failed), (0, 0));
    assert_eq!(allowed(), closed);
    finish_detach(&c, "node-a").await;
    let report = pass(&c.a).await;
    assert_eq!((report.repaired, report.failed), (0, 0));
    assert_eq!(allowed(), closed);
    assert!(c.a.attachments().nodes("pvc-hf").is_empty());
}
