//! ControllerPublishVolume without Kubernetes: a controller that also serves the node role
//! knows exactly its own node and that node's attach limit; a controller-only one accepts any
//! node. Also the access modes and read-only publishing the controller advertises.

mod common;

use std::collections::HashMap;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::*;
use rds_csi::controller::publish::KnownNodes;
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
