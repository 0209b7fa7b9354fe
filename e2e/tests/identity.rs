//! The Identity service of the real binary, over its Unix socket, and its shutdown on SIGTERM.

use std::time::Duration;

use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::plugin_capability::service::Type as ServiceType;
use csi_proto::v1::plugin_capability::Type as CapabilityType;
use csi_proto::v1::{GetPluginCapabilitiesRequest, GetPluginInfoRequest, ProbeRequest};
use e2e::Driver;
use nix::sys::signal::Signal;

fn service_types(caps: &[csi_proto::v1::PluginCapability]) -> Vec<ServiceType> {
    caps.iter()
        .filter_map(|c| match &c.r#type {
            Some(CapabilityType::Service(s)) => ServiceType::try_from(s.r#type).ok(),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn identity_answers_and_sigterm_removes_the_socket() {
    let mut driver = Driver::start(&[
        "--driver-name",
        "rds.csi.srvlab.io",
        "--node-id",
        "node-a",
        "--controller",
        "--node",
    ])
    .await
    .unwrap();
    let mut client = IdentityClient::new(driver.channel.clone());

    let info = client
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "rds.csi.srvlab.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));

    let probe = client.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));

    let caps = client
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        service_types(&caps.capabilities),
        vec![
            ServiceType::ControllerService,
            ServiceType::VolumeAccessibilityConstraints
        ]
    );

    drop(client);
    driver.process.signal(Signal::SIGTERM).unwrap();
    let status = driver
        .process
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!driver.socket.exists(), "socket left behind");
}

#[tokio::test]
async fn node_only_driver_advertises_no_controller() {
    let driver = Driver::start(&["--node-id", "node-b", "--node"])
        .await
        .unwrap();
    let caps = IdentityClient::new(driver.channel.clone())
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(service_types(&caps.capabilities).is_empty());
}

#[tokio::test]
async fn second_driver_on_a_live_socket_refuses_to_start() {
    let driver = Driver::start(&["--controller"]).await.unwrap();
    let output = std::process::Command::new(e2e::binary("rds-csi"))
        .args(["serve", "--controller", "--metrics-address", ""])
        .arg("--endpoint")
        .arg(&driver.socket)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by a live process"), "{stderr}");
    // The first driver still serves.
    IdentityClient::new(driver.channel.clone())
        .probe(ProbeRequest {})
        .await
        .unwrap();
}
