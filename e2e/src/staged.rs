//! A volume taken through the CSI calls a pod's life makes: provisioned and controller-published,
//! staged and published on the node, and back.

use std::collections::HashMap;
use std::path::Path;

use csi_proto::v1::{
    ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest, CreateVolumeRequest,
    DeleteVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};

use crate::{create_request, Env, BASE_PATH, NODE_ID};

pub struct Staged {
    pub volume_id: String,
    pub cap: VolumeCapability,
    pub volume_context: HashMap<String, String>,
    pub publish_context: HashMap<String, String>,
    /// The node-stage secrets (an encrypted volume's passphrase).
    pub secrets: HashMap<String, String>,
    pub staging: String,
    pub target: String,
}

impl Staged {
    pub async fn stage_and_publish(&self, env: &Env) {
        let mut node = env.node();
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: self.volume_id.clone(),
            publish_context: self.publish_context.clone(),
            staging_target_path: self.staging.clone(),
            volume_capability: Some(self.cap.clone()),
            volume_context: self.volume_context.clone(),
            secrets: self.secrets.clone(),
        })
        .await
        .unwrap();
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            publish_context: self.publish_context.clone(),
            staging_target_path: self.staging.clone(),
            target_path: self.target.clone(),
            volume_capability: Some(self.cap.clone()),
            readonly: false,
            volume_context: self.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    pub async fn unpublish_and_unstage(&self, env: &Env) {
        let mut node = env.node();
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            target_path: self.target.clone(),
        })
        .await
        .unwrap();
        assert!(!Path::new(&self.target).exists(), "target path left behind");
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: self.volume_id.clone(),
            staging_target_path: self.staging.clone(),
        })
        .await
        .unwrap();
        // Nothing of this volume stays on the host: no mount, no loop device.
        assert_eq!(env.host.leftovers(), Vec::<String>::new());
    }
}

/// Creates and controller-publishes a volume, returning what the node calls need.
pub async fn provision(env: &Env, suffix: &str, bytes: i64, cap: VolumeCapability) -> Staged {
    provision_with(env, suffix, bytes, cap, &[]).await
}

/// [`provision`] with StorageClass parameters.
pub async fn provision_with(
    env: &Env,
    suffix: &str,
    bytes: i64,
    cap: VolumeCapability,
    parameters: &[(&str, &str)],
) -> Staged {
    let mut request = create_request(&env.name(suffix), bytes, cap);
    request.parameters = parameters
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    provision_request(env, suffix, request).await
}

/// [`provision`] of a CreateVolume request made by the caller (a content source, say); the
/// volume's name is the request's.
pub async fn provision_request(env: &Env, suffix: &str, request: CreateVolumeRequest) -> Staged {
    let mut ctl = env.controller();
    let name = request.name.clone();
    let bytes = request
        .capacity_range
        .as_ref()
        .map_or(0, |r| r.required_bytes);
    let cap = request.volume_capabilities[0].clone();
    let vol = ctl
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.volume_id, name);
    let disk = env
        .mock
        .disks()
        .unwrap()
        .into_iter()
        .find(|d| d.slot == name)
        .expect("disk on the mock");
    assert_eq!(disk.file_path, format!("{BASE_PATH}/{name}.img"));
    assert!(disk.exported);
    assert_eq!(disk.file_size, bytes as u64);
    let publish_context = ctl
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: name.clone(),
            node_id: NODE_ID.into(),
            volume_capability: Some(cap.clone()),
            readonly: false,
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(
        publish_context.get("nvme_nqn").map(String::as_str),
        Some(format!("nqn.2000-02.com.mikrotik:{name}").as_str())
    );
    Staged {
        volume_id: name,
        cap,
        volume_context: vol.volume_context,
        publish_context,
        secrets: HashMap::new(),
        staging: env.path(&format!("staging-{suffix}")).display().to_string(),
        target: env
            .path(&format!("pods/{suffix}/target"))
            .display()
            .to_string(),
    }
}

/// Controller-unpublishes and deletes; then the mock holds neither disk nor file, and the
/// backing file is gone from the data dir.
pub async fn retire(env: &Env, v: &Staged) {
    let mut ctl = env.controller();
    ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: NODE_ID.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let id = &v.volume_id;
    assert!(!env.mock.disks().unwrap().iter().any(|d| &d.slot == id));
    assert!(!env
        .mock
        .files()
        .unwrap()
        .iter()
        .any(|f| f.path.contains(id.as_str())));
    let backing = env
        .mock
        .data_dir
        .join(format!("{}/{}.img", &BASE_PATH[1..], v.volume_id));
    assert!(!backing.exists(), "{} left behind", backing.display());
    assert_eq!(env.cleanup_run().await.unwrap(), (0, 0));
}
