//! The Controller service against an embedded mock-rds: the fixture shared by the controller
//! test binaries.

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode;
use csi_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::v1::*;
use mock_rds::MockRds;
use rds_csi::controller::params::ParamDefaults;
use rds_csi::controller::{ControllerConfig, ControllerService};
use rds_csi::rds::{Port, RdsPath, RetryPolicy};
use russh::keys::PrivateKey;
use tonic::{Code, Request};

use super as common;

pub const BASE: &str = "/storage-pool/metal-csi";
pub const GIB: i64 = 1 << 30;

pub struct Fixture {
    pub mock: MockRds,
    pub svc: ControllerService,
    pub key: PrivateKey,
    pub state: tempfile::TempDir,
}

/// The controller configuration the fixture uses: base path BASE, NVMe at 10.42.68.1:4420.
pub fn config() -> ControllerConfig {
    ControllerConfig::new(ParamDefaults {
        base_paths: vec![RdsPath::new(BASE).unwrap()],
        nvme_address: Some("10.42.68.1".into()),
        nvme_port: Port::new(4420).unwrap(),
    })
}

pub fn service(mock: &MockRds, key: &PrivateKey) -> ControllerService {
    service_with(mock, key, config())
}

pub fn service_with(
    mock: &MockRds,
    key: &PrivateKey,
    config: ControllerConfig,
) -> ControllerService {
    let retry = RetryPolicy {
        attempts: 3,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(3),
    };
    let rds = Arc::new(common::client_for(
        mock,
        key.clone(),
        common::pinned(mock),
        retry,
    ));
    ControllerService::new(rds, config)
}

pub async fn fixture() -> Fixture {
    fixture_with(config()).await
}

pub async fn fixture_with(config: ControllerConfig) -> Fixture {
    let key = common::new_key();
    let state = tempfile::tempdir().unwrap();
    let mock = common::start_mock(key.public_key(), Some(state.path())).await;
    let svc = service_with(&mock, &key, config);
    Fixture {
        mock,
        svc,
        key,
        state,
    }
}

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

pub fn block_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

/// Grow `volume_id` to `bytes` (no capability: a filesystem volume).
pub fn expand_req(volume_id: &str, bytes: i64) -> ControllerExpandVolumeRequest {
    ControllerExpandVolumeRequest {
        volume_id: volume_id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

pub fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
        ..Default::default()
    }
}

impl Fixture {
    pub async fn create(&self, name: &str, bytes: i64) -> Volume {
        self.create_from(create_req(name, bytes)).await
    }

    /// The volume `req` creates (which must succeed).
    pub async fn create_from(&self, req: CreateVolumeRequest) -> Volume {
        self.svc
            .create_volume(Request::new(req))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
    }

    pub fn adds(&self) -> usize {
        self.mock
            .history()
            .iter()
            .filter(|h| h.command.starts_with("/disk add"))
            .count()
    }

    pub fn file_exists(&self, path: &str) -> bool {
        self.mock.files().iter().any(|f| f.path == path)
    }
}

pub fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The cluster's fence key in the controller tests.
pub fn fence_key() -> rds_csi::fence_key::FenceKey {
    rds_csi::fence_key::FenceKey::new(b"a fence key for the controller tests, 32+ bytes").unwrap()
}

/// A controller configuration with fencing on (`fence_key`).
pub fn fencing_config() -> ControllerConfig {
    let mut c = config();
    c.fencing = Some(fence_key());
    c
}

/// Creates an RWX block volume of a fenced class (`nvmeFencing: "true"`).
pub async fn fenced_volume(f: &Fixture, name: &str) -> Volume {
    let mut req = create_req(name, GIB);
    req.volume_capabilities = vec![block_cap(Mode::MultiNodeMultiWriter)];
    req.parameters = [("nvmeFencing".to_string(), "true".to_string())].into();
    f.create_from(req).await
}

/// Publishes `v` to `node` as a multi-writer block volume (the mode that allows two nodes).
pub async fn publish(f: &Fixture, v: &Volume, node: &str) -> Result<(), tonic::Status> {
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
