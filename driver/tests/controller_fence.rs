//! Storage-side fencing in the controller, against the mock's `nvme-tcp-server-allow-host-name`:
//! what each call leaves on the RDS, the repair pass, and the failures that must not publish.
//! (The kernel target's enforcement is proven in the e2e VM tier.)

mod common;

use std::collections::HashMap;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::*;
use mock_rds::Fault;
use rds_csi::fence_key::FenceKey;
use tonic::{Code, Request};

use common::controller::{
    block_cap, fence_key, fenced_volume, fencing_config, fixture_with, publish, Fixture, GIB,
};

fn key() -> FenceKey {
    fence_key()
}

/// What a fenced volume nobody holds allows.
fn closed() -> String {
    key().closed_host()
}

fn allowed(f: &Fixture, id: &str) -> String {
    f.mock.disk(id).unwrap().nvme_tcp_server_allow_host_name
}

/// Polls the mock's history (from entry `since`) until a fence pass has listed the disks, the
/// point at which it has decided what to repair. Finer than `e2e::poll_until`: the windows
/// these tests open after the listing are a fraction of a second.
async fn until_the_pass_has_listed(f: &Fixture, since: usize) {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f.mock.history()[since..]
        .iter()
        .any(|h| h.command.starts_with("/disk print") && !h.command.contains("where"))
    {
        assert!(tokio::time::Instant::now() < until, "the pass never listed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn host(node: &str) -> String {
    key().host_identity(node).nqn
}

async fn unpublish(f: &Fixture, id: &str, node: &str) -> Result<(), tonic::Status> {
    unpublish_on(&f.svc, id, node).await
}

async fn unpublish_on(
    svc: &rds_csi::controller::ControllerService,
    id: &str,
    node: &str,
) -> Result<(), tonic::Status> {
    svc.controller_unpublish_volume(Request::new(ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        ..Default::default()
    }))
    .await
    .map(drop)
}

/// The RDS refuses the next change of a fence.
fn refuse_the_next_fence(f: &Fixture) {
    f.mock.inject(Fault::Fail {
        pattern: "allow-host-name".into(),
        times: Some(1),
        message: "failure: execution error".into(),
        exit_status: 1,
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fence_follows_publish_and_unpublish() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-fence-1").await;
    let id = v.volume_id.as_str();
    assert_eq!(v.volume_context["nvmeFencing"], "true");
    assert_eq!(allowed(&f, id), closed(), "a new fenced volume is closed");
    // A retried CreateVolume leaves it closed.
    fenced_volume(&f, "pvc-fence-1").await;
    assert_eq!(allowed(&f, id), closed());

    publish(&f, &v, "node-a").await.unwrap();
    assert_eq!(allowed(&f, id), host("node-a"));
    publish(&f, &v, "node-a").await.unwrap();
    assert_eq!(
        allowed(&f, id),
        host("node-a"),
        "a repeated publish changes nothing"
    );
    // A migration: both nodes may connect, so any host may for that window.
    publish(&f, &v, "node-b").await.unwrap();
    assert_eq!(allowed(&f, id), "");
    unpublish(&f, id, "node-a").await.unwrap();
    assert_eq!(
        allowed(&f, id),
        host("node-b"),
        "the migration's end closes to the target"
    );
    unpublish(&f, id, "node-a").await.unwrap();
    assert_eq!(allowed(&f, id), host("node-b"));
    unpublish(&f, id, "node-b").await.unwrap();
    assert_eq!(allowed(&f, id), closed(), "nobody holds it: closed again");

    // Unfenced volumes are never touched.
    let plain = f.create("pvc-plain-1", GIB).await;
    f.svc
        .controller_publish_volume(Request::new(ControllerPublishVolumeRequest {
            volume_id: plain.volume_id.clone(),
            node_id: "node-a".into(),
            volume_capability: Some(common::controller::mount_cap(Mode::SingleNodeWriter)),
            volume_context: plain.volume_context.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    unpublish(&f, &plain.volume_id, "node-a").await.unwrap();
    assert_eq!(allowed(&f, &plain.volume_id), "");
    assert!(!f
        .mock
        .history()
        .iter()
        .any(|h| h.command.contains("allow-host-name") && h.command.contains("pvc-plain-1")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_not_set_is_no_publish() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-fence-2").await;
    let id = v.volume_id.as_str();
    // The RDS refuses the change.
    refuse_the_next_fence(&f);
    let e = publish(&f, &v, "node-a").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("fence"), "{e:?}");
    assert!(
        f.svc.attachments().nodes(id).is_empty(),
        "the attachment stayed"
    );
    assert_eq!(allowed(&f, id), closed());
    // Text no client knows, with exit status 0, after the mutation: a failure too.
    f.mock.inject(Fault::Fail {
        pattern: "allow-host-name".into(),
        times: Some(1),
        message: "something else happened".into(),
        exit_status: 0,
    });
    let e = publish(&f, &v, "node-a").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(f.svc.attachments().nodes(id).is_empty());
    // The retry the CO makes succeeds.
    publish(&f, &v, "node-a").await.unwrap();
    assert_eq!(allowed(&f, id), host("node-a"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pass_repairs_the_rds_from_the_table() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-fence-3").await;
    let id = v.volume_id.clone();
    publish(&f, &v, "node-a").await.unwrap();
    let plain = f.create("pvc-plain", GIB).await;
    let fence = f.svc.fence().expect("fencing is on");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let before = f.mock.history().len();
    assert_eq!(
        fence.pass(deadline).await.unwrap().repaired,
        0,
        "nothing to repair"
    );
    // The listing tells an unfenced volume: the pass never reads it again nor locks it.
    let read_again: Vec<String> = f.mock.history()[before..]
        .iter()
        .map(|h| h.command.clone())
        .filter(|c| c.contains(plain.volume_id.as_str()))
        .collect();
    assert!(read_again.is_empty(), "{read_again:?}");
    // Someone lets a stranger in behind the driver's back.
    let stranger = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
    let r = f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    assert_eq!(r.exit_status, 0, "{r:?}");
    assert_eq!(fence.pass(deadline).await.unwrap().repaired, 1);
    assert_eq!(allowed(&f, &id), host("node-a"));
    // The task the Lease holder runs is that pass, with a deadline of its own.
    f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    rds_csi::controller::fence::leader_task(fence.clone())().await;
    assert_eq!(allowed(&f, &id), host("node-a"));
    // A fenced volume nobody holds that was opened is closed again.
    unpublish(&f, &id, "node-a").await.unwrap();
    f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    assert_eq!(fence.pass(deadline).await.unwrap().repaired, 1);
    assert_eq!(allowed(&f, &id), closed());
    // Disks that are not the driver's are never touched.
    f.mock.execute(&format!(
        "/disk add type=file file-path=/storage-pool/other/nixos-var.img file-size=1G slot=nixos-var \
         nvme-tcp-export=yes nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    assert_eq!(fence.pass(deadline).await.unwrap().repaired, 0);
    assert_eq!(allowed(&f, "nixos-var"), stranger);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_volume_needs_a_fencing_controller() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-fence-4").await;
    // The same RDS, a controller without --nvme-fencing.
    let plain = common::controller::service(&f.mock, &f.key);
    let e = plain
        .controller_publish_volume(Request::new(ControllerPublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: "node-a".into(),
            volume_capability: Some(block_cap(Mode::MultiNodeMultiWriter)),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("--nvme-fencing"), "{e:?}");
    assert!(plain.attachments().nodes(&v.volume_id).is_empty());
    assert_eq!(allowed(&f, &v.volume_id), closed());
}

/// A second controller service on the same RDS whose attachment table is `attachments`: a
/// restarted controller, or another replica.
fn replica(
    f: &Fixture,
    attachments: std::sync::Arc<rds_csi::kube::attachments::AttachmentManager>,
) -> rds_csi::controller::ControllerService {
    let rds = std::sync::Arc::new(common::client_for(
        &f.mock,
        f.key.clone(),
        common::pinned(&f.mock),
        common::fast_retry(),
    ));
    rds_csi::controller::ControllerService::with_attachments(rds, fencing_config(), attachments)
}

/// The attachment table a restarted controller rebuilds from the cluster: one attached
/// VolumeAttachment per node, and the PV with the volume attributes CreateVolume returned.
fn rebuilt_table(
    v: &Volume,
    nodes: &[&str],
) -> std::sync::Arc<rds_csi::kube::attachments::AttachmentManager> {
    use k8s_openapi::api::core::v1::PersistentVolume;
    use k8s_openapi::api::storage::v1::VolumeAttachment;
    const DRIVER: &str = "rds.csi.srvlab.io";
    let id = &v.volume_id;
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": id},
        "spec": {
            "accessModes": ["ReadWriteMany"], "volumeMode": "Block",
            "capacity": {"storage": "1Gi"},
            "csi": {"driver": DRIVER, "volumeHandle": id, "volumeAttributes": v.volume_context},
        },
    }))
    .unwrap();
    let vas: Vec<VolumeAttachment> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                "metadata": {"name": format!("va-{i}"),
                             "creationTimestamp": format!("2026-01-01T00:00:0{i}Z")},
                "spec": {"attacher": DRIVER, "nodeName": node,
                         "source": {"persistentVolumeName": id}},
                "status": {"attached": true},
            }))
            .unwrap()
        })
        .collect();
    let table = rds_csi::kube::attachments::AttachmentManager::new();
    table.merge(rds_csi::kube::attachments::states_from(
        &vas,
        &[pv],
        DRIVER,
        std::time::Duration::from_secs(300),
    ));
    std::sync::Arc::new(table)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_during_a_migration_leaves_the_volume_fenced() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-fence-restart").await;
    let id = v.volume_id.as_str();
    publish(&f, &v, "node-a").await.unwrap();
    publish(&f, &v, "node-b").await.unwrap();
    assert_eq!(allowed(&f, id), "", "open for the migration");

    // The controller restarts: what it knows comes from the cluster and the RDS only.
    let restarted = replica(&f, rebuilt_table(&v, &["node-a", "node-b"]));
    // Its pass knows the open disk as fenced: it leaves it open to both nodes, and repairs a
    // disk someone limited to a stranger.
    let pass = || async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        restarted.fence().unwrap().pass(deadline).await.unwrap()
    };
    assert_eq!(pass().await.repaired, 0);
    assert_eq!(allowed(&f, id), "");
    let stranger = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
    f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    assert_eq!(pass().await.repaired, 1);
    assert_eq!(allowed(&f, id), "", "open to both holders again");
    unpublish_on(&restarted, id, "node-a").await.unwrap();
    assert_eq!(
        allowed(&f, id),
        host("node-b"),
        "the migration's end closes the fence to its target, after a restart too"
    );
    unpublish_on(&restarted, id, "node-b").await.unwrap();
    assert_eq!(allowed(&f, id), closed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_publish_retry_keeps_the_existing_attachment() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-fence-retry").await;
    let id = v.volume_id.as_str();
    publish(&f, &v, "node-a").await.unwrap();
    // Someone opened the disk; the CO's retry of the same publish cannot set the fence.
    f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"\""
    ));
    refuse_the_next_fence(&f);
    let e = publish(&f, &v, "node-a").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(
        f.svc.attachments().nodes(id),
        ["node-a"],
        "the retry failed; node-a still holds the volume it was given"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pass_carries_on_past_a_disk_it_cannot_repair() {
    let f = fixture_with(fencing_config()).await;
    let first = fenced_volume(&f, "pvc-fence-pass-a").await;
    let second = fenced_volume(&f, "pvc-fence-pass-b").await;
    publish(&f, &first, "node-a").await.unwrap();
    publish(&f, &second, "node-a").await.unwrap();
    let stranger = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
    for v in [&first, &second] {
        f.mock.execute(&format!(
            "/disk set [find slot={}] nvme-tcp-server-allow-host-name=\"{stranger}\"",
            v.volume_id
        ));
    }
    f.mock.inject(Fault::Fail {
        pattern: "pvc-fence-pass-a.*allow-host-name".into(),
        times: None,
        message: "failure: execution error".into(),
        exit_status: 1,
    });
    let fence = f.svc.fence().expect("fencing is on");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = fence.pass(deadline).await.unwrap();
    assert_eq!((report.repaired, report.failed), (1, 1), "{report:?}");
    assert_eq!(
        allowed(&f, &second.volume_id),
        host("node-a"),
        "one disk's failure must not leave the others open"
    );
    assert_eq!(allowed(&f, &first.volume_id), stranger);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pass_never_lands_a_stale_fence_after_an_unpublish() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-fence-stale").await;
    let id = v.volume_id.clone();
    publish(&f, &v, "node-a").await.unwrap();
    let stranger = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
    f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    // The pass's repair (to node-a) is slow to land.
    f.mock.inject(Fault::Latency {
        pattern: regex::escape(&host("node-a")),
        min: std::time::Duration::from_millis(600),
        max: std::time::Duration::from_millis(600),
    });
    f.mock.clear_history();
    let fence = f.svc.fence().expect("fencing is on").clone();
    let pass = tokio::spawn(async move {
        fence
            .pass(tokio::time::Instant::now() + std::time::Duration::from_secs(20))
            .await
    });
    // Once the pass has listed the disks it has decided; the unpublish comes while its
    // repair is on the way.
    until_the_pass_has_listed(&f, 0).await;
    unpublish(&f, &id, "node-a").await.unwrap();
    let _ = pass.await.unwrap();
    assert!(f.svc.attachments().nodes(&id).is_empty());
    assert_eq!(
        allowed(&f, &id),
        closed(),
        "nobody holds the volume: a pass that decided before the unpublish must not reopen it"
    );
}

/// A fenced volume, and above all a clone or restore whose copy takes a while, is never
/// exported to any host: it is added unexported and exported with its fence in one command.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_copy_is_never_open_while_it_fills() {
    use csi_proto::v1::volume_content_source::{Type, VolumeSource};
    let f = fixture_with(fencing_config()).await;
    let source = fenced_volume(&f, "pvc-fence-src").await;
    f.mock.clear_history();
    let mut req = common::controller::create_req("pvc-fence-clone", GIB);
    req.volume_capabilities = vec![block_cap(Mode::MultiNodeMultiWriter)];
    req.parameters = HashMap::from([("nvmeFencing".to_string(), "true".to_string())]);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Type::Volume(VolumeSource {
            volume_id: source.volume_id.clone(),
        })),
    });
    f.svc.create_volume(Request::new(req)).await.unwrap();
    let clone_commands: Vec<String> = f
        .mock
        .history()
        .into_iter()
        .map(|h| h.command)
        .filter(|c| c.contains("pvc-fence-clone") && !c.contains(" print"))
        .collect();
    let add = clone_commands
        .iter()
        .find(|c| c.starts_with("/disk add"))
        .expect("the clone's /disk add");
    assert!(
        add.contains("nvme-tcp-export=no") && !add.contains("nvme-tcp-export=yes"),
        "{add}"
    );
    let first_export = clone_commands
        .iter()
        .find(|c| c.contains("nvme-tcp-export=yes"))
        .expect("the clone is exported");
    assert!(
        first_export.contains(&format!("nvme-tcp-server-allow-host-name=\"{}\"", closed())),
        "exported without its fence: {first_export}"
    );
    let disk = f.mock.disk("pvc-fence-clone").unwrap();
    assert!(disk.nvme_tcp_export);
    assert_eq!(disk.nvme_tcp_server_allow_host_name, closed());
}

/// A fenced volume whose create failed before its export (the disk is there, unexported, and
/// shows no host) must not be exported open by a call that cannot tell it is fenced: an
/// expansion carries no volume context. Found by the soak.
#[tokio::test(flavor = "multi_thread")]
async fn an_expansion_never_exports_a_disk_it_cannot_tell_is_fenced() {
    let f = fixture_with(fencing_config()).await;
    f.mock.inject(Fault::Fail {
        pattern: "/disk set.*nvme-tcp-export=yes".into(),
        times: None,
        message: "failure: execution error".into(),
        exit_status: 1,
    });
    let mut req = common::controller::create_req("pvc-fence-grow", GIB);
    req.volume_capabilities = vec![block_cap(Mode::MultiNodeMultiWriter)];
    req.parameters = HashMap::from([("nvmeFencing".to_string(), "true".to_string())]);
    let e = f
        .svc
        .create_volume(Request::new(req.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(!f.mock.disk("pvc-fence-grow").unwrap().nvme_tcp_export);
    f.mock.clear_faults();
    let e = f
        .svc
        .controller_expand_volume(Request::new(ControllerExpandVolumeRequest {
            volume_id: "pvc-fence-grow".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 2 * GIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let disk = f.mock.disk("pvc-fence-grow").unwrap();
    assert!(
        !disk.nvme_tcp_export,
        "exported open by an expansion: {disk:?}"
    );
    // The CreateVolume retry knows the volume is fenced: it exports it closed.
    f.svc.create_volume(Request::new(req)).await.unwrap();
    let disk = f.mock.disk("pvc-fence-grow").unwrap();
    assert!(disk.nvme_tcp_export);
    assert_eq!(disk.nvme_tcp_server_allow_host_name, closed());
}

/// The pass re-reads each fenced disk under the volume's lock and acts on that reading: a disk
/// unfenced by hand after the listing is left as it now is, not closed from a stale listing.
#[tokio::test(flavor = "multi_thread")]
async fn the_pass_acts_on_the_disk_as_reread_under_the_lock() {
    let f = fixture_with(fencing_config()).await;
    let id = fenced_volume(&f, "pvc-fence-reread").await.volume_id;
    assert_eq!(allowed(&f, &id), closed());
    // The re-read waits long enough for the change below to land first.
    f.mock.inject(Fault::Latency {
        pattern: format!("^/disk print detail where slot=\"?{id}\"?$"),
        min: std::time::Duration::from_secs(2),
        max: std::time::Duration::from_secs(2),
    });
    let before = f.mock.history().len();
    let fence = f.svc.fence().expect("fencing is on").clone();
    let pass = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        fence.pass(deadline).await
    });
    until_the_pass_has_listed(&f, before).await;
    let r = f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"\""
    ));
    assert_eq!(r.exit_status, 0, "{r:?}");
    let report = pass.await.unwrap().unwrap();
    assert_eq!(report.repaired, 0, "{report:?}");
    assert_eq!(allowed(&f, &id), "", "left open as it was re-read");
}
