//! `/metrics`, `/healthz` and `/readyz`: counters move after real CSI calls over a Unix socket,
//! and readiness follows the RDS.

mod common;

use std::sync::Arc;

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::controller_server::ControllerServer;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::{
    CapacityRange, ControllerPublishVolumeRequest, CreateVolumeRequest, DeleteVolumeRequest,
    ListVolumesRequest, VolumeCapability,
};
use hyper_util::rt::TokioIo;
use rds_csi::controller::params::ParamDefaults;
use rds_csi::controller::{ControllerConfig, ControllerService};
use rds_csi::metrics::{serve_http, GrpcMetricsLayer, PoolSource, MAX_HTTP_CONNECTIONS};
use rds_csi::rds::{Port, RdsPath};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_stream::wrappers::UnixListenerStream;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text)
}

/// The value of the sample whose line starts with `series` (name and labels), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn create(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(MountVolume::default())),
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn metrics_follow_csi_calls_and_readiness_follows_the_rds() {
    let key = common::new_key();
    let mock = common::start_mock(key.public_key(), None).await;
    let rds = Arc::new(common::client_for(
        &mock,
        key,
        common::pinned(&mock),
        common::fast_retry(),
    ));
    let base = RdsPath::new("/storage-pool/metal-csi").unwrap();
    let controller = ControllerService::new(
        Arc::clone(&rds),
        ControllerConfig::new(ParamDefaults {
            base_paths: vec![base.clone()],
            nvme_address: Some("127.0.0.1".into()),
            nvme_port: Port::new(4420).unwrap(),
        }),
    );

    let attachments = std::sync::Arc::clone(controller.attachments());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GrpcMetricsLayer)
            .add_service(ControllerServer::new(controller))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let (http, http_task) = serve_http(
        "127.0.0.1:0".parse().unwrap(),
        Some(Arc::new(
            PoolSource::new(Arc::clone(&rds), base).with_attachments(attachments),
        )),
    )
    .await
    .unwrap();

    let socket_path = socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::1]:1")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let p = socket_path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .unwrap();
    let mut client = ControllerClient::new(channel);

    let (status, before) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    let ok_series = "rds_csi_csi_calls_total{code=\"Ok\",rpc=\"CreateVolume\"}";
    let bad_series = "rds_csi_csi_calls_total{code=\"InvalidArgument\",rpc=\"CreateVolume\"}";
    // The mock runs scripts: a create is one `script-create` exec.
    let add_series = "rds_csi_rds_commands_total{kind=\"script-create\",outcome=\"ok\"}";

    client.create_volume(create("pvc-m1")).await.unwrap();
    client.create_volume(create("pvc-m2")).await.unwrap();
    assert_eq!(
        client.create_volume(create("")).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    client
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: "pvc-m1".into(),
            node_id: "node-a".into(),
            volume_capability: create("x").volume_capabilities.pop(),
            ..Default::default()
        })
        .await
        .unwrap();

    let (_, after) = http_get(http, "/metrics").await;
    assert_eq!(
        sample(&after, ok_series) - sample(&before, ok_series),
        2.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, bad_series) - sample(&before, bad_series),
        1.0
    );
    assert_eq!(
        sample(&after, add_series) - sample(&before, add_series),
        2.0
    );
    assert!(after.contains("rds_csi_csi_call_duration_seconds_bucket{rpc=\"CreateVolume\""));
    assert!(
        sample(&after, "rds_csi_pool_bytes{kind=\"total\"}") > 0.0,
        "pool size from the RDS"
    );
    assert!(
        after.contains("rds_csi_pool_traffic{counter=\"write_bytes\"}"),
        "traffic from monitor-traffic"
    );
    assert_eq!(sample(&after, "rds_csi_ssh_connected"), 1.0);
    assert_eq!(
        sample(&after, "rds_csi_attachments"),
        1.0,
        "{}",
        after
            .lines()
            .filter(|l| l.contains("attach"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Abnormal volumes by reason, from the conditions ListVolumes reported; a deleted volume
    // leaves the count.
    let not_exported = "rds_csi_abnormal_volumes{reason=\"not_exported\"}";
    client
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap();
    assert_eq!(
        sample(&http_get(http, "/metrics").await.1, not_exported),
        0.0
    );
    let reply = mock.execute("/disk set [find slot=pvc-m2] nvme-tcp-export=no");
    assert_eq!(reply.exit_status, 0, "{reply:?}");
    client
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap();
    let (_, listed) = http_get(http, "/metrics").await;
    assert_eq!(sample(&listed, not_exported), 1.0, "{listed}");
    assert!(listed.contains("rds_csi_abnormal_volumes{reason=\"file_size\"} 0"));
    client
        .delete_volume(DeleteVolumeRequest {
            volume_id: "pvc-m2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        sample(&http_get(http, "/metrics").await.1, not_exported),
        0.0
    );

    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    assert_eq!(http_get(http, "/nope").await.0, 404);
    mock.stop().await;
    // Readiness is cached for a few seconds: poll until it notices.
    let (status, body) = poll_readyz_until_not_ready(http).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        http_get(http, "/healthz").await.0,
        200,
        "the process itself is still healthy"
    );

    http_task.abort();
    server.abort();
}

/// Polls `/readyz` (it is cached) until it stops answering 200, within a deadline.
async fn poll_readyz_until_not_ready(addr: std::net::SocketAddr) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = http_get(addr, "/readyz").await;
        if status != 200 || Instant::now() > deadline {
            return (status, text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that sends half a request is dropped by the header timeout, not kept open.
#[tokio::test]
async fn a_half_sent_request_is_dropped() {
    let (http, task) = serve_http("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // Closed (EOF or reset) well within the deadline; hanging past it is the bug.
    let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a half-sent request held its connection for 20 s"
    );
    task.abort();
}

/// Past the connection cap a new connection is closed at once instead of held, and service
/// resumes when the idle ones go.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let (http, task) = serve_http("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..MAX_HTTP_CONNECTIONS {
        idle.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut rest = Vec::new();
    // Well below the header timeout: only the cap can close it this soon.
    let closed = tokio::time::timeout(Duration::from_secs(3), extra.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a connection past the cap was kept open");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not resume: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

/// `/readyz` does not run an SSH command per request, and its failure names no internals
/// (RDS address, port, key fingerprints).
#[tokio::test]
async fn readiness_is_cached_and_a_failure_shows_no_internals() {
    let key = common::new_key();
    let mock = common::start_mock(key.public_key(), None).await;
    let rds = Arc::new(common::client_for(
        &mock,
        key,
        common::pinned(&mock),
        common::fast_retry(),
    ));
    let base = RdsPath::new("/storage-pool/metal-csi").unwrap();
    let (http, task) = serve_http(
        "127.0.0.1:0".parse().unwrap(),
        Some(Arc::new(PoolSource::new(rds, base))),
    )
    .await
    .unwrap();
    let identities = || {
        mock.history()
            .iter()
            .filter(|h| h.command == "/system identity print")
            .count()
    };
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    let after_first = identities();
    for _ in 0..20 {
        assert_eq!(http_get(http, "/readyz").await.0, 200);
    }
    assert!(
        identities() - after_first <= 1,
        "{} identity commands for 20 readiness checks",
        identities() - after_first
    );
    let port = mock.addr().port().to_string();
    let fingerprint = mock.host_key_fingerprint();
    mock.stop().await;
    let (status, text) = poll_readyz_until_not_ready(http).await;
    assert_eq!(status, 503, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    for secret in [port.as_str(), fingerprint.as_str(), "127.0.0.1", "SHA256"] {
        assert!(!body.contains(secret), "the body shows `{secret}`: {body}");
    }
    task.abort();
}
