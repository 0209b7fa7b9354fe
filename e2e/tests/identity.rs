//! The Identity service of the real binary, over its Unix socket, and its shutdown on SIGTERM.

use std::time::Duration;

use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::plugin_capability::service::Type as ServiceType;
use csi_proto::v1::plugin_capability::Type as CapabilityType;
use csi_proto::v1::{GetPluginCapabilitiesRequest, GetPluginInfoRequest, ProbeRequest};
use e2e::{Driver, Keys, Mock};
use nix::sys::signal::Signal;

fn service_types(caps: &[csi_proto::v1::PluginCapability]) -> Vec<ServiceType> {
    caps.iter()
        .filter_map(|c| match &c.r#type {
            Some(CapabilityType::Service(s)) => ServiceType::try_from(s.r#type).ok(),
            _ => None,
        })
        .collect()
}

/// A node-only driver that touches nothing of the host: loop connector, private state dir.
fn node_only_args<'a>(node_id: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "--node",
        "--node-id",
        node_id,
        "--connector",
        "loop",
        "--loop-root",
        dir,
        "--kubelet-dir",
        "",
        "--node-state-dir",
        dir,
    ]
}

#[tokio::test]
async fn identity_answers_and_sigterm_removes_the_socket() {
    let keys = Keys::generate().unwrap();
    let mock = Mock::start(&keys).await.unwrap();
    let mut args = vec![
        "--driver-name",
        "rds.csi.srvlab.io",
        "--node-id",
        "node-a",
        "--controller",
        "--node",
        "--connector",
        "loop",
        "--kubelet-dir",
        "",
        "--node-state-dir",
    ];
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().display().to_string();
    args.push(&state_arg);
    let mock_args = mock.driver_args(&keys);
    args.extend(mock_args.iter().map(String::as_str));
    let mut driver = Driver::start(&args).await.unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let driver = Driver::start(&node_only_args("node-b", &dir_arg))
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
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let driver = Driver::start(&node_only_args("n1", &dir_arg))
        .await
        .unwrap();
    let output = std::process::Command::new(e2e::binary("rds-csi"))
        .arg("serve")
        .args(node_only_args("n2", &dir_arg))
        .args(["--metrics-address", ""])
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

#[tokio::test]
async fn probe_follows_rds_reachability() {
    let keys = Keys::generate().unwrap();
    let mock = Mock::start(&keys).await.unwrap();
    let mock_args = mock.driver_args(&keys);
    let mut args = vec!["--controller"];
    args.extend(mock_args.iter().map(String::as_str));
    let driver = Driver::start(&args).await.unwrap();
    let mut client = IdentityClient::new(driver.channel.clone());
    let ready = |r: tonic::Response<csi_proto::v1::ProbeResponse>| r.into_inner().ready;

    let addr = mock.addr;
    let mut process = mock.process;
    process.signal(Signal::SIGKILL).unwrap();
    process.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        ready(client.probe(ProbeRequest {}).await.unwrap()),
        Some(false)
    );
    assert!(addr.port() > 0);
}

#[tokio::test]
async fn controller_without_host_key_verification_refuses_to_start() {
    let output = std::process::Command::new(e2e::binary("rds-csi"))
        .args([
            "serve",
            "--controller",
            "--rds-address",
            "127.0.0.1",
            "--endpoint",
            "/tmp/never-used.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rds-host-key"), "{stderr}");
}
