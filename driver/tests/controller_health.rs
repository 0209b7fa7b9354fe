//! The controller's volume condition (ControllerGetVolume, ListVolumes) against mock-rds, each
//! abnormal state made on the RDS with the commands an administrator would type: a disk no
//! longer exported, exported under another NQN or moved to another port under its nodes, a
//! backing file gone or of another size, a fence that keeps out a node the volume is published
//! to; healthy again once put right. A missing disk is NotFound.

mod common;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::*;
use tonic::{Code, Request};

use common::controller::{
    block_cap, fenced_volume, fencing_config, fixture, fixture_with, publish, Fixture, GIB,
};

async fn condition(f: &Fixture, id: &str) -> VolumeCondition {
    let got = f
        .svc
        .controller_get_volume(Request::new(ControllerGetVolumeRequest {
            volume_id: id.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    got.status.unwrap().volume_condition.unwrap()
}

/// The condition ListVolumes reports for `id`.
async fn listed_condition(f: &Fixture, id: &str) -> VolumeCondition {
    let listed = f
        .svc
        .list_volumes(Request::new(ListVolumesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    listed
        .entries
        .into_iter()
        .find(|e| e.volume.as_ref().unwrap().volume_id == id)
        .and_then(|e| e.status?.volume_condition)
        .unwrap()
}

fn run(f: &Fixture, command: &str) {
    let reply = f.mock.execute(command);
    assert_eq!(reply.exit_status, 0, "{command}: {reply:?}");
}

#[tokio::test]
async fn the_condition_follows_the_disks_export() {
    let f = fixture().await;
    f.create("pvc-h", GIB).await;
    for c in [
        condition(&f, "pvc-h").await,
        listed_condition(&f, "pvc-h").await,
    ] {
        assert!(!c.abnormal, "{c:?}");
    }

    run(&f, "/disk set [find slot=pvc-h] nvme-tcp-export=no");
    for c in [
        condition(&f, "pvc-h").await,
        listed_condition(&f, "pvc-h").await,
    ] {
        assert!(c.abnormal && c.message.contains("not exported"), "{c:?}");
    }

    run(
        &f,
        "/disk set [find slot=pvc-h] nvme-tcp-export=yes nvme-tcp-server-port=4420 \
         nvme-tcp-server-nqn=nqn.2000-02.com.mikrotik:someone-else",
    );
    let c = condition(&f, "pvc-h").await;
    assert!(
        c.abnormal
            && c.message
                .contains("exported as nqn.2000-02.com.mikrotik:someone-else"),
        "{c:?}"
    );

    run(
        &f,
        "/disk set [find slot=pvc-h] nvme-tcp-server-nqn=nqn.2000-02.com.mikrotik:pvc-h",
    );
    assert!(!condition(&f, "pvc-h").await.abnormal);

    run(&f, "/disk remove [find slot=pvc-h]");
    let gone = f
        .svc
        .controller_get_volume(Request::new(ControllerGetVolumeRequest {
            volume_id: "pvc-h".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fence_keeping_out_a_published_node_is_abnormal_until_repaired() {
    let f = fixture_with(fencing_config()).await;
    let v = fenced_volume(&f, "pvc-hf").await;
    // Fenced and held by nobody: closed, and that is healthy.
    assert!(!condition(&f, "pvc-hf").await.abnormal);
    publish(&f, &v, "node-a").await.unwrap();
    assert!(!condition(&f, "pvc-hf").await.abnormal);

    let stranger = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
    run(
        &f,
        &format!("/disk set [find slot=pvc-hf] nvme-tcp-server-allow-host-name=\"{stranger}\""),
    );
    let c = condition(&f, "pvc-hf").await;
    assert!(
        c.abnormal && c.message.contains("keeps out node-a"),
        "{c:?}"
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    f.svc.fence().unwrap().pass(deadline).await.unwrap();
    assert!(!condition(&f, "pvc-hf").await.abnormal);
}

/// Both views of the condition, which must agree.
async fn conditions(f: &Fixture, id: &str) -> [VolumeCondition; 2] {
    [condition(f, id).await, listed_condition(f, id).await]
}

#[tokio::test]
async fn a_backing_file_gone_or_of_another_size_is_abnormal() {
    let f = fixture().await;
    let v = f.create("pvc-hb", GIB).await;
    let path = v.volume_context["filePath"].clone();
    for c in conditions(&f, "pvc-hb").await {
        assert!(!c.abnormal, "{c:?}");
    }

    f.mock.remove_file(&path);
    for c in conditions(&f, "pvc-hb").await {
        assert!(
            c.abnormal
                && c.message
                    .contains(&format!("{path} of disk pvc-hb is missing")),
            "{c:?}"
        );
    }

    f.mock.add_orphan_file(&path, (GIB / 2) as u64);
    for c in conditions(&f, "pvc-hb").await {
        assert!(
            c.abnormal
                && c.message.contains(&format!(
                    "{path} holds {} bytes but disk pvc-hb is {GIB} bytes",
                    GIB / 2
                )),
            "{c:?}"
        );
    }

    f.mock.remove_file(&path);
    f.mock.add_orphan_file(&path, GIB as u64);
    for c in conditions(&f, "pvc-hb").await {
        assert!(!c.abnormal, "{c:?}");
    }
}

#[tokio::test]
async fn a_disk_moved_to_another_port_strands_the_nodes_holding_it() {
    let f = fixture().await;
    let mut req = common::controller::create_req("pvc-hp", GIB);
    req.volume_capabilities = vec![block_cap(Mode::MultiNodeMultiWriter)];
    let v = f.create_from(req).await;
    // Published to nobody, a new port is only where the next publish sends its node.
    run(&f, "/disk set [find slot=pvc-hp] nvme-tcp-server-port=4421");
    assert!(!condition(&f, "pvc-hp").await.abnormal);

    publish(&f, &v, "node-a").await.unwrap();
    assert!(!condition(&f, "pvc-hp").await.abnormal);
    run(&f, "/disk set [find slot=pvc-hp] nvme-tcp-server-port=4420");
    for c in conditions(&f, "pvc-hp").await {
        assert!(
            c.abnormal
                && c.message.contains(
                    "disk pvc-hp is exported on port 4420, but the nodes holding the volume \
                     (node-a) connect to port 4421"
                ),
            "{c:?}"
        );
    }

    run(&f, "/disk set [find slot=pvc-hp] nvme-tcp-server-port=4421");
    assert!(!condition(&f, "pvc-hp").await.abnormal);
}
