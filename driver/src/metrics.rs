//! Prometheus metrics, and the HTTP endpoint that serves them with `/healthz` and `/readyz`.
//!
//! One process-wide registry: the gRPC layer, the RDS client and the reconcilers record into it
//! from wherever they run. Pool capacity and traffic are read from the RDS when scraped (cached
//! briefly); a failed read removes the series rather than reporting zeros.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::Mutex;

use crate::rds::{RdsClient, RdsObserver, RdsPath, Slot};

mod http_server;
pub use http_server::{serve_http, MAX_HTTP_CONNECTIONS};

/// Where the metrics and health endpoint listens; `None` turns it off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Option<SocketAddr>,
}

/// Parses `HOST:PORT`, or `:PORT` as Go drivers accept. `:PORT` listens on `pod_ip` when it is
/// known and on loopback otherwise: the node plugin shares the host's network, so "every
/// interface" would expose the endpoint on all of the node's networks.
pub fn parse_listen_address(s: &str, pod_ip: Option<IpAddr>) -> Result<SocketAddr, String> {
    let bad = || format!("`{s}` is not an address of the form HOST:PORT or :PORT");
    match s.strip_prefix(':') {
        Some(port) => {
            let port: u16 = port.parse().map_err(|_| bad())?;
            let ip = pod_ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            Ok(SocketAddr::new(ip, port))
        }
        None => s.parse().map_err(|_| bad()),
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub csi_calls: IntCounterVec,
    pub csi_latency: HistogramVec,
    pub rds_commands: IntCounterVec,
    pub rds_latency: HistogramVec,
    pub ssh_connected: IntGauge,
    pub ssh_reconnects: IntGauge,
    pub ssh_channels_in_flight: IntGauge,
    pub attachments: IntGauge,
    pub abnormal_volumes: IntGaugeVec,
    pub orphans_found: IntGaugeVec,
    pub pool_bytes: GaugeVec,
    pub pool_traffic: GaugeVec,
    pub pool_scrape_errors: IntCounter,
}

fn build() -> prometheus::Result<Metrics> {
    let registry = Registry::new_custom(Some("rds_csi".into()), None)?;
    let latency_buckets = vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let m = Metrics {
        csi_calls: IntCounterVec::new(
            Opts::new("csi_calls_total", "CSI calls by RPC and gRPC code"),
            &["rpc", "code"],
        )?,
        csi_latency: HistogramVec::new(
            HistogramOpts::new("csi_call_duration_seconds", "CSI call latency by RPC")
                .buckets(latency_buckets.clone()),
            &["rpc"],
        )?,
        rds_commands: IntCounterVec::new(
            Opts::new(
                "rds_commands_total",
                "RouterOS commands by kind and outcome",
            ),
            &["kind", "outcome"],
        )?,
        rds_latency: HistogramVec::new(
            HistogramOpts::new(
                "rds_command_duration_seconds",
                "RouterOS command latency by kind",
            )
            .buckets(latency_buckets),
            &["kind"],
        )?,
        ssh_connected: IntGauge::new(
            "ssh_connected",
            "1 while an SSH connection to the RDS is up",
        )?,
        ssh_reconnects: IntGauge::new("ssh_reconnects", "SSH connections made after the first")?,
        ssh_channels_in_flight: IntGauge::new(
            "ssh_channels_in_flight",
            "RouterOS commands running now",
        )?,
        attachments: IntGauge::new("attachments", "Volume attachments the controller tracks")?,
        abnormal_volumes: IntGaugeVec::new(
            Opts::new(
                "abnormal_volumes",
                "Volumes whose last controller-side condition was abnormal, by reason",
            ),
            &["reason"],
        )?,
        orphans_found: IntGaugeVec::new(
            Opts::new("orphans_found", "Orphans found by the last scan, by kind"),
            &["kind"],
        )?,
        pool_bytes: GaugeVec::new(
            Opts::new("pool_bytes", "Size and free space of the RDS pool"),
            &["kind"],
        )?,
        pool_traffic: GaugeVec::new(
            Opts::new(
                "pool_traffic",
                "RDS pool traffic from /disk monitor-traffic (bytes, ops, bytes/s)",
            ),
            &["counter"],
        )?,
        pool_scrape_errors: IntCounter::new(
            "pool_scrape_errors_total",
            "Failed reads of pool capacity or traffic",
        )?,
        registry,
    };
    m.registry.register(Box::new(m.csi_calls.clone()))?;
    m.registry.register(Box::new(m.csi_latency.clone()))?;
    m.registry.register(Box::new(m.rds_commands.clone()))?;
    m.registry.register(Box::new(m.rds_latency.clone()))?;
    m.registry.register(Box::new(m.ssh_connected.clone()))?;
    m.registry.register(Box::new(m.ssh_reconnects.clone()))?;
    m.registry
        .register(Box::new(m.ssh_channels_in_flight.clone()))?;
    m.registry.register(Box::new(m.attachments.clone()))?;
    m.registry.register(Box::new(m.abnormal_volumes.clone()))?;
    m.registry.register(Box::new(m.orphans_found.clone()))?;
    m.registry.register(Box::new(m.pool_bytes.clone()))?;
    m.registry.register(Box::new(m.pool_traffic.clone()))?;
    m.registry
        .register(Box::new(m.pool_scrape_errors.clone()))?;
    Ok(m)
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| build().expect("metric definitions are valid"))
}

impl RdsObserver for Metrics {
    fn command_done(&self, kind: &str, outcome: &str, elapsed: Duration) {
        self.rds_commands.with_label_values(&[kind, outcome]).inc();
        self.rds_latency
            .with_label_values(&[kind])
            .observe(elapsed.as_secs_f64());
    }

    fn channel_opened(&self) {
        self.ssh_channels_in_flight.inc();
    }

    fn channel_closed(&self) {
        self.ssh_channels_in_flight.dec();
    }
}

/// The process-wide metrics as an RDS client's observer.
pub fn rds_observer() -> Arc<dyn RdsObserver> {
    struct Global;
    impl RdsObserver for Global {
        fn command_done(&self, kind: &str, outcome: &str, elapsed: Duration) {
            global().command_done(kind, outcome, elapsed);
        }
        fn channel_opened(&self) {
            global().channel_opened();
        }
        fn channel_closed(&self) {
            global().channel_closed();
        }
    }
    Arc::new(Global)
}

/// The CSI v1 services and their RPCs: the only `rpc` label values.
const CSI_RPCS: &[(&str, &[&str])] = &[
    (
        "Identity",
        &["GetPluginInfo", "GetPluginCapabilities", "Probe"],
    ),
    (
        "Controller",
        &[
            "CreateVolume",
            "DeleteVolume",
            "ControllerPublishVolume",
            "ControllerUnpublishVolume",
            "ValidateVolumeCapabilities",
            "ListVolumes",
            "GetCapacity",
            "ControllerGetCapabilities",
            "CreateSnapshot",
            "DeleteSnapshot",
            "ListSnapshots",
            "ControllerExpandVolume",
            "ControllerGetVolume",
            "ControllerModifyVolume",
        ],
    ),
    (
        "Node",
        &[
            "NodeStageVolume",
            "NodeUnstageVolume",
            "NodePublishVolume",
            "NodeUnpublishVolume",
            "NodeGetVolumeStats",
            "NodeExpandVolume",
            "NodeGetCapabilities",
            "NodeGetInfo",
        ],
    ),
];

/// The `rpc` label of a gRPC path. The path is chosen by the client, so anything but a CSI RPC
/// is `unknown`: each distinct label value is a series kept for the life of the process.
fn rpc_label(path: &str) -> &'static str {
    let Some((service, method)) = path
        .strip_prefix("/csi.v1.")
        .and_then(|rest| rest.split_once('/'))
    else {
        return "unknown";
    };
    CSI_RPCS
        .iter()
        .filter(|(s, _)| *s == service)
        .flat_map(|(_, methods)| methods.iter())
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown")
}

/// Records one CSI call. `path` is the gRPC path (`/csi.v1.Controller/CreateVolume`).
pub fn record_csi_call(path: &str, code: tonic::Code, elapsed: Duration) {
    let rpc = rpc_label(path);
    let m = global();
    m.csi_calls
        .with_label_values(&[rpc, &format!("{code:?}")])
        .inc();
    m.csi_latency
        .with_label_values(&[rpc])
        .observe(elapsed.as_secs_f64());
}

/// A tower layer for the gRPC server that counts calls by RPC and status code.
#[derive(Clone, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // A failed unary call carries its status in the headers (trailers-only response);
            // a successful one has OK in the trailers.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            record_csi_call(&path, code, started.elapsed());
            Ok(response)
        })
    }
}

/// What the HTTP endpoint reads from the RDS at scrape time.
pub struct PoolSource {
    pub rds: Arc<RdsClient>,
    pub base: RdsPath,
    attachments: Option<Arc<crate::kube::attachments::AttachmentManager>>,
    last: Mutex<Option<Instant>>,
}

/// Scrapes within this window reuse the previous reading, so a busy Prometheus does not flood
/// the RDS with SSH sessions.
const POOL_CACHE: Duration = Duration::from_secs(10);
const POOL_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl PoolSource {
    pub fn new(rds: Arc<RdsClient>, base: RdsPath) -> Self {
        Self {
            rds,
            base,
            attachments: None,
            last: Mutex::new(None),
        }
    }

    /// Also report how many node attachments the controller holds.
    pub fn with_attachments(
        mut self,
        attachments: Arc<crate::kube::attachments::AttachmentManager>,
    ) -> Self {
        self.attachments = Some(attachments);
        self
    }

    async fn refresh(&self) {
        let m = global();
        let transport = self.rds.transport();
        m.ssh_connected.set(i64::from(transport.is_connected()));
        m.ssh_reconnects.set(transport.reconnects() as i64);
        if let Some(attachments) = &self.attachments {
            let held: usize = attachments
                .list()
                .values()
                .map(|s| s.node_ids().len())
                .sum();
            m.attachments.set(held as i64);
        }
        let mut last = self.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < POOL_CACHE) {
            return;
        }
        *last = Some(Instant::now());
        let deadline = crate::rds::deadline_in(POOL_READ_TIMEOUT);
        match self.rds.capacity(&self.base, deadline).await {
            Ok(c) => {
                m.pool_bytes
                    .with_label_values(&["total"])
                    .set(c.total_bytes as f64);
                m.pool_bytes
                    .with_label_values(&["free"])
                    .set(c.free_bytes as f64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read pool capacity");
                m.pool_bytes.reset();
                m.pool_scrape_errors.inc();
            }
        }
        let traffic = match Slot::new(self.base.mount_point()) {
            Ok(slot) => self.rds.traffic(&slot, deadline).await,
            Err(e) => Err(e.into()),
        };
        match traffic {
            Ok(t) => {
                for (name, value) in [
                    ("read_bytes", t.read_bytes as f64),
                    ("write_bytes", t.write_bytes as f64),
                    ("read_ops", t.read_ops as f64),
                    ("write_ops", t.write_ops as f64),
                    ("read_rate_bytes_per_second", t.read_rate_bytes),
                    ("write_rate_bytes_per_second", t.write_rate_bytes),
                    ("in_flight_ops", t.in_flight_ops as f64),
                ] {
                    m.pool_traffic.with_label_values(&[name]).set(value);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read pool traffic");
                m.pool_traffic.reset();
                m.pool_scrape_errors.inc();
            }
        }
    }
}

/// The registry in Prometheus text format.
fn encode() -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&global().registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gRPC path comes from the client: only CSI's own RPC names become label values, so
    /// a caller cannot grow the registry without bound.
    #[test]
    fn unknown_grpc_paths_share_one_label() {
        for i in 0..50 {
            record_csi_call(
                &format!("/csi.v1.Controller/Bogus{i}"),
                tonic::Code::Unimplemented,
                Duration::from_millis(1),
            );
        }
        record_csi_call("/x/y/z", tonic::Code::Unimplemented, Duration::ZERO);
        record_csi_call("/csi.v1.Node/NodeGetInfo", tonic::Code::Ok, Duration::ZERO);
        let text = encode();
        assert!(!text.contains("Bogus"), "client-chosen label values");
        assert!(!text.contains("rpc=\"z\""), "client-chosen label values");
        assert!(text.contains("rpc=\"NodeGetInfo\""));
        assert!(text.contains("rpc=\"unknown\""));
    }

    #[test]
    fn listen_address_accepts_go_style_port_only() {
        assert_eq!(
            parse_listen_address(":9809", None).unwrap(),
            "127.0.0.1:9809".parse().unwrap()
        );
        assert_eq!(
            parse_listen_address(":9809", Some("10.0.0.7".parse().unwrap())).unwrap(),
            "10.0.0.7:9809".parse().unwrap()
        );
        assert_eq!(
            parse_listen_address("127.0.0.1:1", Some("10.0.0.7".parse().unwrap())).unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert!(parse_listen_address("9809", None).is_err());
        assert!(parse_listen_address(":99999", None).is_err());
    }
}
