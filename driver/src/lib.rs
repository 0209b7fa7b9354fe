//! rds-csi: a CSI driver for the MikroTik ROSE Data Server.

pub mod cli;
pub mod controller;
pub mod duration;
pub mod endpoint;
pub mod fence_key;
pub mod grpc;
pub mod identity;
pub mod ids;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod mkfs;
pub mod node;
pub mod operator;
pub mod orphans;
pub mod rds;
pub mod registration;
pub mod server;
pub mod validate;
