//! CSI v1 types, servers and clients, generated from `proto/csi.proto`; and kubelet's plugin
//! registration API from `proto/pluginregistration.proto`.

#![allow(clippy::all, clippy::pedantic)]

pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

pub use csi::v1;

/// kubelet's plugin registration service (`pluginregistration.Registration`), which a node
/// plugin serves in kubelet's `plugins_registry` directory to be found by kubelet.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// The encoded `FileDescriptorSet` of `csi.proto`, for reflection and the spec tests.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/csi_descriptor.bin"));
