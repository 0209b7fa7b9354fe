//! ControllerPublishVolume without Kubernetes: a controller that also serves the node role
//! knows exactly its own node and that node's attach limit; a controller-only one accepts any
//! node. Also the access modes and read-only publishing the controller advertises.

mod common;

use std::collections::HashMap;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::*;
use rds_csi::controller::publish::KnownNodes;
use rstest::rstest;
use tonic::{Code, Request};

use common::controller::*;

fn publish(id: &str, node: &str, cap: VolumeCapability) -> Request<ControllerPublishVolumeRequest> {
    Request::new(ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(cap),
        ..Default::default()
    })
}

fn unpublish(id: &str, node: &str) -> Request<ControllerUnpublishVolumeRequest> {
    Request::new(ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        ..Default::default()
    })
}

async fn fixture_for_local_node(node_id: &str, max_volumes: usize) -> Fixture {
    let mut config = config();
    config.known_nodes = KnownNodes::Local {
        node_id: node_id.into(),
        max_volumes,
    };
    fixture_with(config).await
}

#[tokio::test]
async fn a_controller_serving_the_node_role_publishes_only_to_that_node() {
    let f = fixture_for_local_node("node-1", 0).await;
    f.create("pvc-a", GIB).await;
    let rwo = mount_cap(Mode::SingleNodeWriter);
    let err = f
        .svc
        .controller_publish_volume(publish("pvc-a", "node-2", rwo.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("node-2") && err.message().contains("node-1"),
        "names the node asked for and the one known: {}",
        err.message()
    );
    assert!(f.svc.attachments().nodes("pvc-a").is_empty());
    f.svc
        .controller_publish_volume(publish("pvc-a", "node-1", rwo))
        .await
        .unwrap();
    assert_eq!(f.svc.attachments().nodes("pvc-a"), ["node-1"]);
}

#[tokio::test]
async fn a_controller_only_process_publishes_to_any_node_without_limit() {
    let f = fixture().await;
    let rwo = mount_cap(Mode::SingleNodeWriter);
    for (i, node) in ["node-x", "node-y", "node-x", "node-x"].iter().enumerate() {
        let id = format!("pvc-{i}");
        f.create(&id, GIB).await;
        f.svc
            .controller_publish_volume(publish(&id, node, rwo.clone()))
            .await
            .unwrap();
    }
}

/// csi-sanity's `testnodevolumeattachlimit`: with `--max-volumes-per-node N`, volume N+1 on one
/// node is ResourceExhausted.
#[tokio::test]
async fn the_local_nodes_attach_limit_is_enforced() {
    let f = fixture_for_local_node("node-1", 2).await;
    let rwo = mount_cap(Mode::SingleNodeWriter);
    for id in ["pvc-1", "pvc-2", "pvc-3"] {
        f.create(id, GIB).await;
    }
    for id in ["pvc-1", "pvc-2"] {
        f.svc
            .controller_publish_volume(publish(id, "node-1", rwo.clone()))
            .await
            .unwrap();
    }
    let err = f
        .svc
        .controller_publish_volume(publish("pvc-3", "node-1", rwo.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("node-1") && err.message().contains('2'),
        "names the node and its limit: {}",
        err.message()
    );
    assert!(f.svc.attachments().nodes("pvc-3").is_empty());
    // A retry of a publish the node already holds is not a new volume.
    f.svc
        .controller_publish_volume(publish("pvc-2", "node-1", rwo.clone()))
        .await
        .unwrap();
    // A detach makes room.
    f.svc
        .controller_unpublish_volume(unpublish("pvc-1", "node-1"))
        .await
        .unwrap();
    f.svc
        .controller_publish_volume(publish("pvc-3", "node-1", rwo))
        .await
        .unwrap();
    let mut held: Vec<String> = f.svc.attachments().list().into_keys().collect();
    held.sort();
    assert_eq!(held, ["pvc-2", "pvc-3"]);
}

#[tokio::test]
async fn concurrent_publishes_never_pass_the_attach_limit() {
    let f = std::sync::Arc::new(fixture_for_local_node("node-1", 3).await);
    let ids: Vec<String> = (0..8).map(|i| format!("pvc-race-{i}")).collect();
    for id in &ids {
        f.create(id, GIB).await;
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (f, id) = (std::sync::Arc::clone(&f), id.clone());
            tokio::spawn(async move {
                f.svc
                    .controller_publish_volume(publish(
                        &id,
                        "node-1",
                        mount_cap(Mode::SingleNodeWriter),
                    ))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code())
            })
        })
        .collect();
    let mut codes = HashMap::new();
    for t in tasks {
        let code = match t.await.unwrap() {
            Ok(()) => Code::Ok,
            Err(c) => c,
        };
        *codes.entry(code).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&Code::Ok), Some(&3), "{codes:?}");
    assert_eq!(codes.get(&Code::ResourceExhausted), Some(&5), "{codes:?}");
    assert_eq!(f.svc.attachments().list().len(), 3);
}

fn publish_readonly(
    id: &str,
    node: &str,
    cap: VolumeCapability,
    readonly: bool,
) -> Request<ControllerPublishVolumeRequest> {
    let mut r = publish(id, node, cap);
    r.get_mut().readonly = readonly;
    r
}

/// PUBLISH_READONLY: the node is told (publish context `readonly`), and the same node cannot
/// hold a volume both ways.
#[tokio::test]
async fn readonly_publishes_reach_the_node_and_conflict_with_read_write() {
    let f = fixture().await;
    let rwo = mount_cap(Mode::SingleNodeWriter);
    f.create("pvc-ro", GIB).await;
    f.create("pvc-rw", GIB).await;
    let ctx = f
        .svc
        .controller_publish_volume(publish_readonly("pvc-ro", "node-a", rwo.clone(), true))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(ctx.get("readonly").map(String::as_str), Some("true"));
    let ctx = f
        .svc
        .controller_publish_volume(publish_readonly("pvc-rw", "node-a", rwo.clone(), false))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(ctx.get("readonly"), None, "{ctx:?}");
    for (id, readonly) in [("pvc-ro", false), ("pvc-rw", true)] {
        let err = f
            .svc
            .controller_publish_volume(publish_readonly(id, "node-a", rwo.clone(), readonly))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{id}: {err:?}");
        assert!(err.message().contains("node-a"), "{}", err.message());
    }
    // The same setting again is an idempotent retry.
    f.svc
        .controller_publish_volume(publish_readonly("pvc-ro", "node-a", rwo, true))
        .await
        .unwrap();
}

/// ReadOnlyMany (MULTI_NODE_READER_ONLY): any number of nodes, each read-only whatever
/// `readonly` says; a writer is refused while readers hold the volume, and readers while a
/// writer does.
#[tokio::test]
async fn reader_only_volumes_are_published_read_only_to_many_nodes() {
    let f = fixture().await;
    let rox = mount_cap(Mode::MultiNodeReaderOnly);
    let mut req = create_req("pvc-rox", GIB);
    req.volume_capabilities = vec![rox.clone()];
    f.svc.create_volume(Request::new(req)).await.unwrap();
    for (node, readonly) in [("node-a", true), ("node-b", false), ("node-c", true)] {
        let ctx = f
            .svc
            .controller_publish_volume(publish_readonly("pvc-rox", node, rox.clone(), readonly))
            .await
            .unwrap()
            .into_inner()
            .publish_context;
        assert_eq!(
            ctx.get("readonly").map(String::as_str),
            Some("true"),
            "{node}"
        );
    }
    let mut nodes = f.svc.attachments().nodes("pvc-rox");
    nodes.sort();
    assert_eq!(nodes, ["node-a", "node-b", "node-c"]);
    let err = f
        .svc
        .controller_publish_volume(publish(
            "pvc-rox",
            "node-d",
            mount_cap(Mode::SingleNodeWriter),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    f.create("pvc-written", GIB).await;
    f.svc
        .controller_publish_volume(publish(
            "pvc-written",
            "node-a",
            mount_cap(Mode::SingleNodeWriter),
        ))
        .await
        .unwrap();
    let err = f
        .svc
        .controller_publish_volume(publish("pvc-written", "node-b", rox))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

#[rstest]
#[tokio::test]
async fn single_node_single_and_multi_writer_are_single_node_modes(
    #[values(Mode::SingleNodeSingleWriter, Mode::SingleNodeMultiWriter)] mode: Mode,
) {
    let f = fixture().await;
    let id = format!(
        "pvc-{}",
        mode.as_str_name().to_lowercase().replace('_', "-")
    );
    let mut req = create_req(&id, GIB);
    req.volume_capabilities = vec![mount_cap(mode), block_cap(mode)];
    f.svc.create_volume(Request::new(req)).await.unwrap();
    let validated = f
        .svc
        .validate_volume_capabilities(Request::new(ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![mount_cap(mode)],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        validated.confirmed.is_some(),
        "{mode:?}: {}",
        validated.message
    );
    f.svc
        .controller_publish_volume(publish(&id, "node-a", mount_cap(mode)))
        .await
        .unwrap();
    let err = f
        .svc
        .controller_publish_volume(publish(&id, "node-b", mount_cap(mode)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{mode:?}: {err:?}");
}

#[tokio::test]
async fn publish_capabilities_are_advertised_and_modify_volume_is_not() {
    let f = fixture().await;
    use controller_service_capability::rpc::Type;
    let types: Vec<Type> = f
        .svc
        .controller_get_capabilities(Request::new(ControllerGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(controller_service_capability::Type::Rpc(r)) => Type::try_from(r.r#type).ok(),
            None => None,
        })
        .collect();
    for t in [Type::SingleNodeMultiWriter, Type::PublishReadonly] {
        assert!(types.contains(&t), "{t:?} in {types:?}");
    }
    assert!(!types.contains(&Type::ModifyVolume), "{types:?}");
}
