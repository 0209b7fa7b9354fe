//! Storage-side fencing in the controller, against the mock's `nvme-tcp-server-allow-host-name`:
//! what each call leaves on the RDS, the repair pass, and the failures that must not publish.
//! (The kernel target's enforcement is proven in the e2e VM tier.)

mod common;

use std::collections::HashMap;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::*;
use mock_rds::Fault;
use rds_csi::controller::fence::CLOSED_HOST;
use rds_csi::node::connector::nvme::derived_host_nqn;
use tonic::{Code, Request};

use common::controller::{block_cap, config, fixture_with, Fixture, GIB};

fn fencing_fixture_config() -> rds_csi::controller::ControllerConfig {
    let mut c = config();
    c.nvme_fencing = true;
    c
}

async fn fenced_volume(f: &Fixture, name: &str) -> Volume {
    let mut req = common::controller::create_req(name, GIB);
    req.volume_capabilities = vec![block_cap(Mode::MultiNodeMultiWriter)];
    req.parameters = HashMap::from([("nvmeFencing".to_string(), "true".to_string())]);
    f.svc
        .create_volume(Request::new(req))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

fn allowed(f: &Fixture, id: &str) -> String {
    f.mock.disk(id).unwrap().nvme_tcp_server_allow_host_name
}

fn host(node: &str) -> String {
    derived_host_nqn(node).0
}

async fn publish(f: &Fixture, v: &Volume, node: &str) -> Result<(), tonic::Status> {
    f.svc
        .controller_publish_volume(Request::new(ControllerPublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: node.into(),
            volume_capability: Some(block_cap(Mode::MultiNodeMultiWriter)),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        }))
        .await
        .map(drop)
}

async fn unpublish(f: &Fixture, id: &str, node: &str) -> Result<(), tonic::Status> {
    f.svc
        .controller_unpublish_volume(Request::new(ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            ..Default::default()
        }))
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fence_follows_publish_and_unpublish() {
    let f = fixture_with(fencing_fixture_config()).await;
    let v = fenced_volume(&f, "pvc-fence-1").await;
    let id = v.volume_id.as_str();
    assert_eq!(v.volume_context["nvmeFencing"], "true");
    assert_eq!(
        allowed(&f, id),
        CLOSED_HOST,
        "a new fenced volume is closed"
    );
    // A retried CreateVolume leaves it closed.
    fenced_volume(&f, "pvc-fence-1").await;
    assert_eq!(allowed(&f, id), CLOSED_HOST);

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
    assert_eq!(
        allowed(&f, id),
        CLOSED_HOST,
        "nobody holds it: closed again"
    );

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
    let f = fixture_with(fencing_fixture_config()).await;
    let v = fenced_volume(&f, "pvc-fence-2").await;
    let id = v.volume_id.as_str();
    // The RDS refuses the change.
    f.mock.inject(Fault::Fail {
        pattern: "allow-host-name".into(),
        times: Some(1),
        message: "failure: execution error".into(),
        exit_status: 1,
    });
    let e = publish(&f, &v, "node-a").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("fence"), "{e:?}");
    assert!(
        f.svc.attachments().nodes(id).is_empty(),
        "the attachment stayed"
    );
    assert_eq!(allowed(&f, id), CLOSED_HOST);
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
    let f = fixture_with(fencing_fixture_config()).await;
    let v = fenced_volume(&f, "pvc-fence-3").await;
    let id = v.volume_id.clone();
    publish(&f, &v, "node-a").await.unwrap();
    let fence = f.svc.fence().expect("fencing is on");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    assert_eq!(fence.pass(deadline).await.unwrap(), 0, "nothing to repair");
    // Someone lets a stranger in behind the driver's back.
    let stranger = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
    let r = f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    assert_eq!(r.exit_status, 0, "{r:?}");
    assert_eq!(fence.pass(deadline).await.unwrap(), 1);
    assert_eq!(allowed(&f, &id), host("node-a"));
    // A fenced volume nobody holds that was opened is closed again.
    unpublish(&f, &id, "node-a").await.unwrap();
    f.mock.execute(&format!(
        "/disk set [find slot={id}] nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    assert_eq!(fence.pass(deadline).await.unwrap(), 1);
    assert_eq!(allowed(&f, &id), CLOSED_HOST);
    // Disks that are not the driver's are never touched.
    f.mock.execute(&format!(
        "/disk add type=file file-path=/storage-pool/other/nixos-var.img file-size=1G slot=nixos-var \
         nvme-tcp-export=yes nvme-tcp-server-allow-host-name=\"{stranger}\""
    ));
    assert_eq!(fence.pass(deadline).await.unwrap(), 0);
    assert_eq!(allowed(&f, "nixos-var"), stranger);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_volume_needs_a_fencing_controller() {
    let f = fixture_with(fencing_fixture_config()).await;
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
    assert_eq!(allowed(&f, &v.volume_id), CLOSED_HOST);
}
