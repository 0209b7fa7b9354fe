//! The kubernetes-csi sanity expectations the conformance run found unmet, against the real
//! binary as csi-sanity runs it: controller and node in one process with the loop connector,
//! no Kubernetes, and an attach limit. Also what a controller-only process accepts.

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::controller_service_capability::rpc::Type as ControllerCap;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::node_service_capability::rpc::Type as NodeCap;
use csi_proto::v1::*;
use e2e::{create_request, mount_cap, run_id, Driver, Keys, Mock, MIB};
use tonic::transport::Channel;
use tonic::Code;

const NODE: &str = "sanity-node";
const LIMIT: usize = 2;

fn expect_code<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, code: Code) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(e.code(), code, "{what}: {e:?}"),
    }
}

fn publish(volume_id: &str, node_id: &str) -> ControllerPublishVolumeRequest {
    ControllerPublishVolumeRequest {
        volume_id: volume_id.into(),
        node_id: node_id.into(),
        volume_capability: Some(mount_cap("ext4")),
        ..Default::default()
    }
}

async fn create_volumes(ctl: &mut ControllerClient<Channel>, names: &[String]) {
    for name in names {
        ctl.create_volume(create_request(name, 16 * MIB, mount_cap("ext4")))
            .await
            .unwrap();
    }
}

async fn delete_volumes(ctl: &mut ControllerClient<Channel>, names: &[String]) {
    for name in names {
        ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_combined_driver_meets_the_sanity_expectations() {
    let keys = Keys::generate().unwrap();
    let mock = Mock::start(&keys).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().display().to_string();
    let limit_arg = LIMIT.to_string();
    let mut args = vec![
        "--controller",
        "--node",
        "--node-id",
        NODE,
        "--max-volumes-per-node",
        &limit_arg,
        "--connector",
        "loop",
        "--kubelet-dir",
        "",
        "--node-state-dir",
        &state_arg,
    ];
    let mock_args = mock.driver_args(&keys);
    args.extend(mock_args.iter().map(String::as_str));
    let driver = Driver::start(&args).await.unwrap();
    let mut ctl = ControllerClient::new(driver.channel.clone());
    let mut node = NodeClient::new(driver.channel.clone());

    let controller_caps: Vec<ControllerCap> = ctl
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type())
        })
        .collect();
    for cap in [
        ControllerCap::SingleNodeMultiWriter,
        ControllerCap::PublishReadonly,
    ] {
        assert!(controller_caps.contains(&cap), "{cap:?}");
    }
    let node_caps: Vec<NodeCap> = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|node_service_capability::Type::Rpc(r)| r.r#type())
        })
        .collect();
    assert!(node_caps.contains(&NodeCap::SingleNodeMultiWriter));
    let info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.node_id.as_str(), info.max_volumes_per_node),
        (NODE, LIMIT as i64)
    );

    // Tokens the driver did not make.
    expect_code(
        "ListVolumes invalid-token",
        ctl.list_volumes(ListVolumesRequest {
            max_entries: 0,
            starting_token: "invalid-token".into(),
        })
        .await,
        Code::Aborted,
    );
    expect_code(
        "ListSnapshots invalid-token",
        ctl.list_snapshots(ListSnapshotsRequest {
            starting_token: "invalid-token".into(),
            ..Default::default()
        })
        .await,
        Code::Aborted,
    );

    // A volume that is not at the path.
    expect_code(
        "NodeGetVolumeStats some/path",
        node.node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "id".into(),
            volume_path: "some/path".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    expect_code(
        "NodeExpandVolume some/path",
        node.node_expand_volume(NodeExpandVolumeRequest {
            volume_id: "id".into(),
            volume_path: "some/path".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );

    // Only its own node, and at most LIMIT volumes on it.
    let run = run_id("sanity");
    let names: Vec<String> = (0..=LIMIT).map(|i| format!("{run}-{i}")).collect();
    create_volumes(&mut ctl, &names).await;
    expect_code(
        "ControllerPublishVolume to a node that does not exist",
        ctl.controller_publish_volume(publish(&names[0], "some-fake-node-id"))
            .await,
        Code::NotFound,
    );
    for name in &names[..LIMIT] {
        ctl.controller_publish_volume(publish(name, NODE))
            .await
            .unwrap();
    }
    expect_code(
        "ControllerPublishVolume past the attach limit",
        ctl.controller_publish_volume(publish(&names[LIMIT], NODE))
            .await,
        Code::ResourceExhausted,
    );
    delete_volumes(&mut ctl, &names).await;
}

#[tokio::test]
async fn a_controller_only_driver_publishes_to_any_node() {
    let keys = Keys::generate().unwrap();
    let mock = Mock::start(&keys).await.unwrap();
    let mut args = vec!["--controller"];
    let mock_args = mock.rds_args(&keys);
    args.extend(mock_args.iter().map(String::as_str));
    let driver = Driver::start(&args).await.unwrap();
    let mut ctl = ControllerClient::new(driver.channel.clone());
    let run = run_id("anynode");
    let names: Vec<String> = (0..3).map(|i| format!("{run}-{i}")).collect();
    create_volumes(&mut ctl, &names).await;
    for name in &names {
        ctl.controller_publish_volume(publish(name, "any-node"))
            .await
            .unwrap();
    }
    delete_volumes(&mut ctl, &names).await;
}
