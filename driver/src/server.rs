//! Runs the gRPC server on the CSI socket until SIGTERM or SIGINT.

use anyhow::Context;
use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::controller_server::ControllerServer;

use crate::cli::{RdsArgs, ServeArgs};
use crate::controller::params::ParamDefaults;
use crate::controller::{ControllerConfig, ControllerService};
use crate::endpoint;
use crate::identity::IdentityService;
use crate::metrics::{GrpcMetricsLayer, PoolSource};
use crate::node::NodeService;
use crate::rds::ssh::load_private_key;
use crate::rds::{HostKeyPolicy, Port, RdsClient, RdsPath, RetryPolicy, SshConfig, Transport};

/// The RDS client the controller uses, from the command line. Nothing is contacted yet: the
/// connection is made on first use, so a driver starts (and reports not ready) while the RDS is
/// down.
pub fn rds_client(args: &RdsArgs) -> anyhow::Result<Arc<RdsClient>> {
    let host = args
        .rds_address
        .clone()
        .context("--rds-address is required")?;
    let key = load_private_key(&args.rds_key_file).context("--rds-key-file")?;
    let policy = if let Some(pin) = &args.rds_host_key {
        pin.policy().context("--rds-host-key")?
    } else if let Some(path) = &args.rds_known_hosts {
        std::fs::metadata(path).with_context(|| format!("--rds-known-hosts {}", path.display()))?;
        HostKeyPolicy::KnownHosts(path.clone())
    } else {
        tracing::warn!("--rds-insecure-skip-verify: the RDS host key will NOT be verified");
        HostKeyPolicy::InsecureSkipVerify
    };
    let mut config = SshConfig::new(host, args.rds_port, args.rds_user.clone(), key, policy);
    config.connections = usize::from(args.rds_connections);
    config.max_channels = usize::from(args.rds_max_channels);
    config.connect_timeout = Duration::from_secs(args.rds_connect_timeout);
    Ok(Arc::new(RdsClient::new(
        Transport::new(config),
        RetryPolicy::default(),
    )))
}

fn controller_config(args: &ServeArgs) -> anyhow::Result<ControllerConfig> {
    let base_path =
        RdsPath::new(args.rds.rds_volume_base_path.as_str()).context("--rds-volume-base-path")?;
    let nvme_address = match &args.nvme_address {
        Some(a) => Some(
            a.parse::<std::net::IpAddr>()
                .context("--nvme-address must be an IP address")?
                .to_string(),
        ),
        None => args
            .rds
            .rds_address
            .as_ref()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .map(|ip| ip.to_string()),
    };
    Ok(ControllerConfig::new(ParamDefaults {
        base_path,
        nvme_address,
        nvme_port: Port::new(u32::from(args.nvme_port)).context("--nvme-port")?,
    }))
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let path = endpoint::socket_path(&args.endpoint)?;
    // Install the handlers before the socket exists, so a signal that arrives as soon as a
    // client sees the socket still shuts down cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let mut kube_tasks = None;
    let mut attachments_held = None;
    let (rds, controller) = if args.controller {
        let rds = rds_client(&args.rds)?;
        let config = controller_config(&args)?;
        // Attachments rebuilt from the cluster, and the reconcilers, when Kubernetes is reachable.
        let (attachments, kube) = crate::kube::setup_controller(
            &args.kube,
            &args.driver_name,
            Arc::clone(&rds),
            config.defaults.base_path.clone(),
        )
        .await?;
        attachments_held = Some(Arc::clone(&attachments));
        let mut controller =
            ControllerService::with_attachments(Arc::clone(&rds), config, attachments);
        if let Some(kube) = &kube {
            controller = controller
                .with_events(kube.events.clone())
                .with_node_lookup(kube.client.clone());
        }
        kube_tasks = kube;
        (Some(rds), Some(ControllerServer::new(controller)))
    } else {
        (None, None)
    };
    let metrics_task = if args.metrics_address.is_empty() {
        None
    } else {
        let addr =
            crate::cli::parse_listen_address(&args.metrics_address).map_err(anyhow::Error::msg)?;
        let pool = match &rds {
            Some(rds) => {
                let mut pool = PoolSource::new(
                    Arc::clone(rds),
                    RdsPath::new(args.rds.rds_volume_base_path.as_str())
                        .context("--rds-volume-base-path")?,
                );
                if let Some(attachments) = &attachments_held {
                    pool = pool.with_attachments(Arc::clone(attachments));
                }
                Some(Arc::new(pool))
            }
            None => None,
        };
        Some(
            crate::metrics::serve_http(addr, pool)
                .await
                .context("--metrics-address")?
                .1,
        )
    };
    let identity = IdentityService::new(args.driver_name.clone(), args.controller, rds);
    let listener = endpoint::bind(&path).await?;
    tracing::info!(
        endpoint = %path.display(),
        driver_name = %args.driver_name,
        node_id = args.node_id.as_deref().unwrap_or(""),
        controller = args.controller,
        node = args.node,
        version = env!("CARGO_PKG_VERSION"),
        "serving CSI"
    );

    let shutdown = async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down; letting in-flight calls finish"
        );
    };
    let node = if args.node {
        let node = NodeService::from_args(&args)?;
        // Report (and tidy) what an earlier run left on this host before serving calls.
        if let Err(e) = node.recover().await {
            tracing::warn!(error = %e, "node recovery scan failed; serving anyway");
        }
        Some(NodeServer::new(node))
    } else {
        None
    };
    let result = tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer)
        .add_service(IdentityServer::new(identity))
        .add_optional_service(node)
        .add_optional_service(controller)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the socket");
        }
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(kube) = kube_tasks {
        kube.shutdown().await;
    }
    result.context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}
