//! The Controller service with a Kubernetes-backed attachment table (mock-rds and a real API
//! server): publishes wait for the rebuild, a restarted controller still refuses a second node,
//! `serve`'s wiring from a kubeconfig, the volume context's migration timeout. Against the fake
//! API server, kept for faults and for counting one client's requests: failing and hung API
//! calls, the expansion event's failures, and the fence pass of Lease holder and standby (the
//! standby's Lease reads, counted in the fake's request log, show it had its chances).

mod common;
mod kube_fake;
mod kube_objects;
mod kube_real;

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::v1::*;
use kube_fake::*;
use kube_objects::*;
use kube_real::RealApi;
use mock_rds::MockRds;
use rds_csi::controller::params::ParamDefaults;
use rds_csi::controller::{ControllerConfig, ControllerService};
use rds_csi::kube::attachments::{rebuild, AttachmentManager, AttachmentSync};
use rds_csi::kube::events::{EventRecorder, REASON_EXPANSION_DONE};
use rds_csi::rds::{Port, RdsClient, RdsPath, RetryPolicy};
use tonic::{Code, Request};

const BASE: &str = "/storage-pool/metal-csi";

fn cap(mode: Mode, block: bool) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume::default())
        }),
    }
}

async fn rds() -> (MockRds, Arc<RdsClient>) {
    let key = common::new_key();
    let mock = common::start_mock(key.public_key(), None).await;
    let rds = common::client_for(&mock, key, common::pinned(&mock), RetryPolicy::default());
    (mock, Arc::new(rds))
}

fn controller(rds: &Arc<RdsClient>, attachments: Arc<AttachmentManager>) -> ControllerService {
    ControllerService::with_attachments(
        rds.clone(),
        ControllerConfig::new(ParamDefaults {
            base_paths: vec![RdsPath::new(BASE).unwrap()],
            nvme_address: Some("10.0.0.1".into()),
            nvme_port: Port::new(4420).unwrap(),
        }),
        attachments,
    )
}

async fn create(svc: &ControllerService, name: &str, c: VolumeCapability) {
    svc.create_volume(Request::new(CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![c],
        ..Default::default()
    }))
    .await
    .unwrap();
}

fn publish(id: &str, node: &str, c: VolumeCapability) -> Request<ControllerPublishVolumeRequest> {
    Request::new(ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(c),
        ..Default::default()
    })
}

#[tokio::test]
async fn restarted_controller_refuses_a_second_node_after_rebuild() {
    let (_mock, rds) = rds().await;
    let rwo = cap(Mode::SingleNodeWriter, false);
    // The controller before the restart published pvc-1 to node-a; the cluster recorded it.
    create(
        &ControllerService::new(
            rds.clone(),
            ControllerConfig::new(ParamDefaults {
                base_paths: vec![RdsPath::new(BASE).unwrap()],
                nvme_address: Some("10.0.0.1".into()),
                nvme_port: Port::new(4420).unwrap(),
            }),
        ),
        "pvc-1",
        rwo.clone(),
    )
    .await;
    let api = RealApi::start().await;
    api.put(
        PVS,
        pv("pvc-1", "pvc-1", DRIVER, "ReadWriteOnce", "Filesystem"),
    )
    .await;
    api.put(VAS, va("va-1", "pvc-1", "node-a", DRIVER, true))
        .await;

    let attachments = Arc::new(AttachmentManager::new().not_ready());
    let svc = controller(&rds, attachments.clone());
    let err = svc
        .controller_publish_volume(publish("pvc-1", "node-b", rwo.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "no publish before the rebuild"
    );
    // Nor an unpublish or a delete: the rebuild would undo or contradict them.
    let unpublish = ControllerUnpublishVolumeRequest {
        volume_id: "pvc-1".into(),
        node_id: "node-a".into(),
        ..Default::default()
    };
    let err = svc
        .controller_unpublish_volume(Request::new(unpublish))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let early_delete = DeleteVolumeRequest {
        volume_id: "pvc-1".into(),
        ..Default::default()
    };
    let err = svc
        .delete_volume(Request::new(early_delete))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    rebuild(&api.client(), DRIVER, &attachments).await.unwrap();
    let err = svc
        .controller_publish_volume(publish("pvc-1", "node-b", rwo.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("node-a"), "{}", err.message());
    // The holder's retry is idempotent; the delete is refused while attached.
    svc.controller_publish_volume(publish("pvc-1", "node-a", rwo.clone()))
        .await
        .unwrap();
    let del = DeleteVolumeRequest {
        volume_id: "pvc-1".into(),
        ..Default::default()
    };
    assert_eq!(
        svc.delete_volume(Request::new(del))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let listed = svc
        .list_volumes(Request::new(ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.entries[0]
            .status
            .as_ref()
            .unwrap()
            .published_node_ids,
        ["node-a"]
    );
    // After the unpublish, node-b gets it.
    svc.controller_unpublish_volume(Request::new(ControllerUnpublishVolumeRequest {
        volume_id: "pvc-1".into(),
        node_id: "node-a".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(attachments.is_within_grace_period("pvc-1", Duration::from_secs(30)));
    svc.controller_publish_volume(publish("pvc-1", "node-b", rwo))
        .await
        .unwrap();
    assert_eq!(attachments.nodes("pvc-1"), ["node-b"]);
}

#[tokio::test]
async fn volume_context_sets_the_migration_timeout() {
    let (_mock, rds) = rds().await;
    let attachments = Arc::new(AttachmentManager::new());
    let svc = controller(&rds, attachments.clone());
    let rwx = cap(Mode::MultiNodeMultiWriter, true);
    create(&svc, "pvc-rwx", rwx.clone()).await;
    for node in ["node-a", "node-b"] {
        let mut req = publish("pvc-rwx", node, rwx.clone());
        req.get_mut()
            .volume_context
            .insert("migrationTimeoutSeconds".into(), "42".into());
        svc.controller_publish_volume(req).await.unwrap();
    }
    let state = attachments.get("pvc-rwx").unwrap();
    assert_eq!(state.migration_timeout, Duration::from_secs(42));
    assert!(state.is_migrating());
    let err = svc
        .controller_publish_volume(publish("pvc-rwx", "node-c", rwx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("migration limit"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn expansion_event_reaches_pv_and_pvc() {
    let api = RealApi::start().await;
    api.put(
        PVS,
        pv("pv-1", "pvc-1", DRIVER, "ReadWriteOnce", "Filesystem"),
    )
    .await;
    let events = EventRecorder::new(api.client(), DRIVER, "test");
    events.expansion_done("pvc-1", 2 << 30).await;
    let posted: Vec<_> = api
        .list(&kube_objects::events("default"))
        .await
        .into_iter()
        .filter(|e| e["reason"] == REASON_EXPANSION_DONE)
        .collect();
    let mut objects: Vec<String> = posted
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["involvedObject"]["kind"].as_str().unwrap(),
                e["involvedObject"]["name"].as_str().unwrap()
            )
        })
        .collect();
    objects.sort();
    assert_eq!(
        objects,
        ["PersistentVolume/pv-1", "PersistentVolumeClaim/claim-pv-1"]
    );
    assert!(posted[0]["message"]
        .as_str()
        .unwrap()
        .contains("2147483648"));
    assert_eq!(posted[0]["type"], "Normal");
    // An unknown volume posts nothing.
    events.expansion_done("pvc-unknown", 1).await;
    assert_eq!(
        api.list(&kube_objects::events("default"))
            .await
            .iter()
            .filter(|e| e["reason"] == REASON_EXPANSION_DONE)
            .count(),
        2
    );
}

/// An API failure while posting the expansion event is logged, not returned.
#[tokio::test]
async fn an_expansion_event_failure_is_swallowed() {
    let api = FakeApi::start().await;
    api.put(
        PVS,
        pv("pv-1", "pvc-1", DRIVER, "ReadWriteOnce", "Filesystem"),
    );
    api.fail(PVS, None, 500, None);
    let events = EventRecorder::new(api.client(), DRIVER, "test");
    events.expansion_done("pvc-1", 1).await;
    assert!(api.list(&kube_objects::events("default")).is_empty());
}

#[tokio::test]
async fn serve_wiring_rebuilds_elects_and_reconciles_from_a_kubeconfig() {
    let (_mock, rds) = rds().await;
    let api = RealApi::start().await;
    api.put(NODES, node("node-a", true)).await;
    api.put(
        PVS,
        pv("pvc-1", "pvc-1", DRIVER, "ReadWriteOnce", "Filesystem"),
    )
    .await;
    api.put(
        PVS,
        pv("pvc-2", "pvc-2", DRIVER, "ReadWriteOnce", "Filesystem"),
    )
    .await;
    api.put(VAS, va("va-1", "pvc-1", "node-a", DRIVER, true))
        .await;
    api.put(VAS, va("va-2", "pvc-2", "node-gone", DRIVER, true))
        .await;
    // The admin's kubeconfig, with the namespace the controller takes its Lease in.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let admin = std::fs::read_to_string(api.kubeconfig()).unwrap();
    std::fs::write(
        &kubeconfig,
        admin.replace(
            "context: {cluster: e2e, user: u}",
            "context: {cluster: e2e, user: u, namespace: csi}",
        ),
    )
    .unwrap();
    api.put(
        "/api/v1/namespaces",
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "csi"}}),
    )
    .await;
    let config = rds_csi::kube::Config {
        kubeconfig: Some(kubeconfig),
        leader_election: true,
        attachment_grace_period: Duration::ZERO,
        ..Default::default()
    };
    let (attachments, kube) =
        rds_csi::kube::setup_controller(&config, DRIVER, rds, vec![RdsPath::new(BASE).unwrap()])
            .await
            .unwrap();
    let kube = kube.expect("a kubeconfig turns Kubernetes features on");
    let wait = Duration::from_secs(10);
    assert!(eventually(wait, || attachments.is_ready()).await);
    assert_eq!(attachments.nodes("pvc-1"), ["node-a"]);
    let lease = || async {
        api.get(&leases("csi"), "rds-csi-controller")
            .await
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    e2e::poll_until("the Lease taken in the kubeconfig's namespace", wait, lease)
        .await
        .unwrap();
    assert!(
        eventually(wait, || attachments.nodes("pvc-2").is_empty()).await,
        "the leader's reconciler cleared the deleted node's attachment"
    );
    assert_eq!(attachments.nodes("pvc-1"), ["node-a"]);
    kube.shutdown().await;
    assert_eq!(lease().await, None, "released at shutdown");
}

#[tokio::test]
async fn publish_to_an_unknown_node_is_not_found() {
    let (_mock, rds) = rds().await;
    let api = RealApi::start().await;
    api.put(NODES, node("node-a", true)).await;
    let svc =
        controller(&rds, Arc::new(AttachmentManager::new())).with_node_lookup(api.client(), DRIVER);
    let rwo = cap(Mode::SingleNodeWriter, false);
    create(&svc, "pvc-n", rwo.clone()).await;

    let err = svc
        .controller_publish_volume(publish("pvc-n", "node-gone", rwo.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("node-gone"), "{}", err.message());
    assert!(svc.attachments().nodes("pvc-n").is_empty());

    svc.controller_publish_volume(publish("pvc-n", "node-a", rwo.clone()))
        .await
        .unwrap();
    assert_eq!(svc.attachments().nodes("pvc-n"), ["node-a"]);
}

/// A Node that cannot be read does not block the attach.
#[tokio::test]
async fn an_unreadable_node_does_not_block_the_attach() {
    let (_mock, rds) = rds().await;
    let api = FakeApi::start().await;
    let svc =
        controller(&rds, Arc::new(AttachmentManager::new())).with_node_lookup(api.client(), DRIVER);
    let rwo = cap(Mode::SingleNodeWriter, false);
    create(&svc, "pvc-m", rwo.clone()).await;
    api.fail(NODES, None, 500, None);
    svc.controller_publish_volume(publish("pvc-m", "node-b", rwo))
        .await
        .unwrap();
}

/// kube sets no read timeout: an API server that never answers must not hold up a publish (its
/// node lookup runs under the volume lock) or an expansion (its event looks the PV up).
#[tokio::test]
async fn a_hung_api_server_holds_up_no_publish_or_expand_past_its_deadline() {
    let (_mock, rds) = rds().await;
    let api = FakeApi::start().await;
    let svc = controller(&rds, Arc::new(AttachmentManager::new()))
        .with_node_lookup(api.client(), DRIVER)
        .with_events(EventRecorder::new(api.client(), DRIVER, "test"));
    let rwo = cap(Mode::SingleNodeWriter, false);
    create(&svc, "pvc-1", rwo.clone()).await;
    api.hang(NODES, None, None);
    api.hang(PVS, None, None);
    let mut request = publish("pvc-1", "node-a", rwo.clone());
    request
        .metadata_mut()
        .insert("grpc-timeout", "4S".parse().unwrap());
    tokio::time::timeout(
        Duration::from_secs(15),
        svc.controller_publish_volume(request),
    )
    .await
    .expect("publish waited on a hung node lookup")
    .expect("an unanswered lookup fails open: the publish goes ahead");
    let expand = ControllerExpandVolumeRequest {
        volume_id: "pvc-1".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 2 << 30,
            limit_bytes: 0,
        }),
        volume_capability: Some(rwo),
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(15),
        svc.controller_expand_volume(Request::new(expand)),
    )
    .await
    .expect("expand waited on a hung PV list")
    .unwrap();

    // As `serve` wires it, a publish or expansion decides from the VolumeAttachments as they
    // are: unreadable, it fails (retried) within its deadline instead of guessing.
    let table = Arc::clone(svc.attachments());
    let svc = svc.with_attachment_sync(AttachmentSync::new(api.client(), DRIVER, table));
    api.hang(VAS, None, None);
    let mut request = publish("pvc-1", "node-b", cap(Mode::SingleNodeWriter, false));
    request
        .metadata_mut()
        .insert("grpc-timeout", "4S".parse().unwrap());
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        svc.controller_publish_volume(request),
    )
    .await
    .expect("publish waited past its deadline on hung VolumeAttachments")
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("VolumeAttachments"), "{err:?}");
}

#[tokio::test]
async fn the_attach_limit_comes_from_the_nodes_csinode() {
    let (_mock, rds) = rds().await;
    let api = RealApi::start().await;
    for name in ["node-a", "node-b"] {
        api.put(NODES, node(name, true)).await;
    }
    // node-a registered a limit of one volume for this driver (another driver's limit is not
    // ours); node-b registered none.
    api.put(
        CSINODES,
        csinode(
            "node-a",
            &[("other.csi.example.com", Some(9)), (DRIVER, Some(1))],
        ),
    )
    .await;
    api.put(CSINODES, csinode("node-b", &[(DRIVER, None)]))
        .await;
    let svc =
        controller(&rds, Arc::new(AttachmentManager::new())).with_node_lookup(api.client(), DRIVER);
    let rwo = cap(Mode::SingleNodeWriter, false);
    for id in ["pvc-1", "pvc-2", "pvc-3"] {
        create(&svc, id, rwo.clone()).await;
    }
    svc.controller_publish_volume(publish("pvc-1", "node-a", rwo.clone()))
        .await
        .unwrap();
    let err = svc
        .controller_publish_volume(publish("pvc-2", "node-a", rwo.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("node-a"), "{}", err.message());
    for id in ["pvc-2", "pvc-3"] {
        svc.controller_publish_volume(publish(id, "node-b", rwo.clone()))
            .await
            .unwrap();
    }
}

/// A CSINode that cannot be read does not block the attach.
#[tokio::test]
async fn an_unreadable_csinode_does_not_block_the_attach() {
    let (_mock, rds) = rds().await;
    let api = FakeApi::start().await;
    api.put(NODES, node("node-a", true));
    api.put(CSINODES, csinode("node-a", &[(DRIVER, Some(1))]));
    api.fail(CSINODES, None, 500, None);
    let svc =
        controller(&rds, Arc::new(AttachmentManager::new())).with_node_lookup(api.client(), DRIVER);
    let rwo = cap(Mode::SingleNodeWriter, false);
    for id in ["pvc-1", "pvc-2"] {
        create(&svc, id, rwo.clone()).await;
        svc.controller_publish_volume(publish(id, "node-a", rwo.clone()))
            .await
            .unwrap();
    }
}

/// The fence repair pass runs on the Lease holder only: a standby whose table may be stale
/// never rewrites a fence, and takes the pass over once it holds the Lease.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_repairs_fences() {
    let (mock, rds) = rds().await;
    let api = FakeApi::start().await;
    // Another replica holds the Lease, freshly renewed.
    let now = k8s_openapi::jiff::Timestamp::now();
    api.put(
        &leases("default"),
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "rds-csi-controller", "namespace": "default"},
            "spec": {"holderIdentity": "other-replica", "leaseDurationSeconds": 15,
                     "renewTime": now.to_string()},
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let key = rds_csi::fence_key::FenceKey::new(&[b'k'; 32]).unwrap();
    let (svc, kube) = fencing_replica(&api, &rds, "replica-a", dir.path(), &key).await;
    let attachments = svc.attachments().clone();
    let wait = Duration::from_secs(10);
    assert!(eventually(wait, || attachments.is_ready()).await);

    fenced_rwx_published(&svc, "pvc-lease-fence", "node-a").await;
    let stranger = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
    mock.execute(&format!(
        "/disk set [find slot=pvc-lease-fence] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    let allowed = || {
        mock.disk("pvc-lease-fence")
            .unwrap()
            .nvme_tcp_server_allow_host_name
    };
    // Two tries at the Lease are two retry intervals (4 s), some 40 pass intervals.
    let lease_reads = || lease_reads(&api);
    let from = lease_reads();
    assert!(eventually(wait, || lease_reads() >= from + 2).await);
    assert_eq!(allowed(), stranger, "a standby repaired a fence");

    // The holder goes away: this replica takes the Lease, and its pass repairs the fence.
    api.delete(&leases("default"), "rds-csi-controller");
    assert!(
        eventually(wait, || allowed() == key.host_identity("node-a").nqn).await,
        "the new leader did not repair the fence: {}",
        allowed()
    );
    kube.shutdown().await;
}

/// How often the replicas have read the Lease: each standby reads it once a retry interval.
fn lease_reads(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains("/leases/"))
        .count()
}

/// Creates a fenced RWX block volume and publishes it to `node`.
async fn fenced_rwx_published(svc: &ControllerService, name: &str, node: &str) {
    let rwx = cap(Mode::MultiNodeMultiWriter, true);
    let volume = svc
        .create_volume(Request::new(CreateVolumeRequest {
            name: name.into(),
            volume_capabilities: vec![rwx.clone()],
            parameters: [("nvmeFencing".to_string(), "true".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mut req = publish(name, node, rwx).into_inner();
    req.volume_context = volume.volume_context;
    svc.controller_publish_volume(Request::new(req))
        .await
        .unwrap();
}

/// One controller replica with fencing and leader election, against `api`.
async fn fencing_replica(
    api: &FakeApi,
    rds: &Arc<RdsClient>,
    identity: &str,
    dir: &std::path::Path,
    key: &rds_csi::fence_key::FenceKey,
) -> (ControllerService, rds_csi::kube::ControllerKube) {
    let config = rds_csi::kube::Config {
        kubeconfig: Some(api.kubeconfig(dir)),
        leader_election: true,
        attachment_reconcile_interval: Duration::from_millis(100),
        identity: Some(identity.to_string()),
        ..Default::default()
    };
    let (attachments, kube) = rds_csi::kube::setup_controller(
        &config,
        DRIVER,
        rds.clone(),
        vec![RdsPath::new(BASE).unwrap()],
    )
    .await
    .unwrap();
    let kube = kube.unwrap();
    let mut service_config = ControllerConfig::new(ParamDefaults {
        base_paths: vec![RdsPath::new(BASE).unwrap()],
        nvme_address: Some("10.0.0.1".into()),
        nvme_port: Port::new(4420).unwrap(),
    });
    service_config.fencing = Some(key.clone());
    let svc = ControllerService::with_attachments(rds.clone(), service_config, attachments);
    kube.run_on_leader(rds_csi::controller::fence::leader_task(
        svc.fence().unwrap().clone(),
    ));
    (svc, kube)
}

/// Two replicas whose tables disagree (the standby's is stale): only the Lease holder's pass
/// writes, so the fence does not flip between them; the standby writes once it leads.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_only_the_lease_holder_writes_fences() {
    let (mock, rds) = rds().await;
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = rds_csi::fence_key::FenceKey::new(&[b'k'; 32]).unwrap();
    let wait = Duration::from_secs(10);
    let (a, kube_a) = fencing_replica(&api, &rds, "replica-a", dir.path(), &key).await;
    let holder = || {
        api.get(&leases("default"), "rds-csi-controller")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    assert!(eventually(wait, || holder().as_deref() == Some("replica-a")).await);
    let (b, kube_b) = fencing_replica(&api, &rds, "replica-b", dir.path(), &key).await;
    assert!(eventually(wait, || b.attachments().is_ready()).await);

    fenced_rwx_published(&a, "pvc-two-fence", "node-a").await;
    // The standby's table is stale: it still believes node-b holds the volume.
    let options = rds_csi::kube::attachments::AttachOptions {
        readonly: false,
        multi_node_block: true,
        multi_node_reader: false,
    };
    b.attachments()
        .attach("pvc-two-fence", "node-b", options, None)
        .unwrap();
    b.attachments().set_fenced("pvc-two-fence");
    let allowed = || {
        mock.disk("pvc-two-fence")
            .unwrap()
            .nvme_tcp_server_allow_host_name
    };
    let node_a = key.host_identity("node-a").nqn;
    let node_b = key.host_identity("node-b").nqn;
    assert_eq!(allowed(), node_a);
    // Two of the standby's tries at the Lease: some 40 intervals of its pass.
    let lease_reads = || lease_reads(&api);
    let from = lease_reads();
    assert!(eventually(wait, || lease_reads() >= from + 4).await);
    assert_eq!(allowed(), node_a, "the standby's stale pass wrote a fence");
    assert!(
        !mock.history().iter().any(|h| h.command.contains(&node_b)),
        "the standby sent a fence"
    );

    // The leader leaves (releasing the Lease): the standby leads, and its pass now writes.
    kube_a.shutdown().await;
    assert!(eventually(wait, || holder().as_deref() == Some("replica-b")).await);
    assert!(
        eventually(wait, || allowed() == node_b).await,
        "the new leader's pass did not run: {}",
        allowed()
    );
    kube_b.shutdown().await;
}

fn storage_class(name: &str, parameters: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": DRIVER,
        "parameters": parameters,
    })
}

fn claim(name: &str, class: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {
            "storageClassName": class,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    })
}

/// The external-provisioner strips `csi.storage.k8s.io/` keys from CreateVolume's parameters,
/// so whether an encrypted class names a node-stage Secret is read from the class itself,
/// through the claim `--extra-create-metadata` names. Without one no node would get the
/// passphrase: the volume is refused before anything is made on the RDS.
#[tokio::test]
async fn an_encrypted_class_without_a_node_stage_secret_is_refused() {
    let (mock, rds) = rds().await;
    let api = RealApi::start().await;
    api.put(
        STORAGE_CLASSES,
        storage_class("bare", serde_json::json!({"encrypted": "true"})),
    )
    .await;
    api.put(
        STORAGE_CLASSES,
        storage_class(
            "half",
            serde_json::json!({
                "encrypted": "true",
                "csi.storage.k8s.io/node-stage-secret-name": "luks",
            }),
        ),
    )
    .await;
    api.put(
        STORAGE_CLASSES,
        storage_class(
            "keyed",
            serde_json::json!({
                "encrypted": "true",
                "csi.storage.k8s.io/node-stage-secret-name": "luks",
                "csi.storage.k8s.io/node-stage-secret-namespace": "${pvc.namespace}",
            }),
        ),
    )
    .await;
    let claims = "/api/v1/namespaces/apps/persistentvolumeclaims";
    for class in ["bare", "half", "keyed"] {
        api.put(claims, claim(&format!("claim-{class}"), class))
            .await;
    }
    let svc = controller(&rds, Arc::new(AttachmentManager::new())).with_class_lookup(api.client());
    let request = |class: &str| {
        Request::new(CreateVolumeRequest {
            name: format!("pvc-{class}"),
            volume_capabilities: vec![cap(Mode::SingleNodeWriter, false)],
            // What the external-provisioner sends: the class's own keys and the claim's name.
            parameters: [
                ("encrypted", "true"),
                ("csi.storage.k8s.io/pvc/name", &format!("claim-{class}")),
                ("csi.storage.k8s.io/pvc/namespace", "apps"),
                ("csi.storage.k8s.io/pv/name", &format!("pvc-{class}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        })
    };
    for (class, missing) in [
        ("bare", "node-stage-secret-name"),
        ("half", "node-stage-secret-namespace"),
    ] {
        let err = svc.create_volume(request(class)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        for named in ["parameters.encrypted", missing, class] {
            assert!(err.message().contains(named), "{}", err.message());
        }
        assert_eq!(mock.disk(&format!("pvc-{class}")), None);
    }
    let volume = svc
        .create_volume(request("keyed"))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        volume.volume_context.get("encrypted").map(String::as_str),
        Some("true")
    );
    assert!(mock.disk("pvc-keyed").is_some());
}
