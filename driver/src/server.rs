//! Runs the gRPC server on the CSI socket until SIGTERM or SIGINT.

use anyhow::Context;
use csi_proto::v1::identity_server::IdentityServer;
use csi_proto::v1::node_server::NodeServer;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use std::path::PathBuf;
use std::sync::Arc;

use csi_proto::v1::controller_server::ControllerServer;

use crate::controller::{ControllerConfig, ControllerService};
use crate::endpoint;
use crate::identity::IdentityService;
use crate::metrics::{GrpcMetricsLayer, PoolSource};
use crate::node::NodeService;
use crate::rds::{RdsClient, RetryPolicy, SshConfig, Transport};

/// What `rds-csi serve` runs; `cli` builds it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The CSI socket.
    pub socket: PathBuf,
    /// Reported by GetPluginInfo (must match the CSIDriver object).
    pub driver_name: String,
    pub controller: Option<ControllerRole>,
    pub node: Option<crate::node::Config>,
    /// Register with kubelet directly (no node-driver-registrar); node plugins only.
    pub kubelet_registration: Option<crate::registration::Config>,
    pub metrics: crate::metrics::Config,
}

/// The controller's part: how to reach the RDS, how volumes are made there, and Kubernetes.
#[derive(Debug, Clone)]
pub struct ControllerRole {
    pub rds: SshConfig,
    /// Whether changes may go to the RDS as one script each (where it runs them).
    pub rds_scripts: bool,
    pub service: ControllerConfig,
    pub kube: crate::kube::Config,
}

/// The RDS client the controller and the operator commands use. Nothing is contacted yet: the
/// connection is made on first use, so a driver starts (and reports not ready) while the RDS is
/// down.
pub fn rds_client(config: SshConfig, scripts: bool) -> Arc<RdsClient> {
    let client = RdsClient::new(
        Transport::with_observer(config, crate::metrics::rds_observer()),
        RetryPolicy::default(),
    );
    Arc::new(if scripts {
        client
    } else {
        client.without_scripts()
    })
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let path = config.socket;
    // Install the handlers before the socket exists, so a signal that arrives as soon as a
    // client sees the socket still shuts down cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let serves_controller = config.controller.is_some();
    let mut kube_tasks = None;
    let mut pool = None;
    let (rds, controller) = if let Some(role) = config.controller {
        let rds = rds_client(role.rds, role.rds_scripts);
        let learner = Arc::clone(&rds);
        tokio::spawn(async move {
            learner
                .learn(tokio::time::Instant::now() + std::time::Duration::from_secs(30))
                .await
        });
        let bases = role.service.defaults.base_paths.clone();
        // Capacity and traffic are the pool's, which holds the first base path.
        let base_path = bases[0].clone();
        // Attachments rebuilt from the cluster, and the reconcilers, when Kubernetes is reachable.
        let (attachments, kube) =
            crate::kube::setup_controller(&role.kube, &config.driver_name, Arc::clone(&rds), bases)
                .await?;
        pool = Some(Arc::new(
            PoolSource::new(Arc::clone(&rds), base_path).with_attachments(Arc::clone(&attachments)),
        ));
        let mut controller =
            ControllerService::with_attachments(Arc::clone(&rds), role.service, attachments);
        if let Some(kube) = &kube {
            controller = controller
                .with_events(kube.events.clone())
                .with_node_lookup(kube.client.clone(), &config.driver_name)
                .with_class_lookup(kube.client.clone())
                .with_attachment_sync(kube.attachment_sync(&config.driver_name));
            // Only a table rebuilt from the cluster may overrule the RDS: one kept in memory
            // starts empty after a restart and would close the fences of volumes in use.
            if let Some(fence) = controller.fence().cloned() {
                kube.run_on_leader(crate::controller::fence::leader_task(fence));
            }
        }
        kube_tasks = kube;
        (Some(rds), Some(ControllerServer::new(controller)))
    } else {
        (None, None)
    };
    let metrics_task = match config.metrics.listen {
        Some(addr) => Some(
            crate::metrics::serve_http(addr, pool)
                .await
                .with_context(|| format!("--metrics-address: listening on {addr}"))?
                .1,
        ),
        None => None,
    };
    let identity = IdentityService::new(config.driver_name.clone(), serves_controller, rds);
    let listener = endpoint::bind(&path).await?;
    tracing::info!(
        endpoint = %path.display(),
        driver_name = %config.driver_name,
        node_id = config.node.as_ref().map_or("", |n| n.service.node_id.as_str()),
        controller = serves_controller,
        node = config.node.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "serving CSI"
    );

    let (stop_registration, registration_stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down; letting in-flight calls finish"
        );
        let _ = stop_registration.send(());
    };
    let node = if let Some(node) = config.node {
        let node = NodeService::from_config(node);
        // Report (and tidy) what an earlier run left on this host before serving calls.
        if let Err(e) = node.recover().await {
            tracing::warn!(error = %e, "node recovery scan failed; serving anyway");
        }
        Some(NodeServer::new(node))
    } else {
        None
    };
    // The CSI socket is bound: kubelet's NodeGetInfo right after registering waits for the
    // server below rather than failing.
    let registration = match config.kubelet_registration {
        Some(registration) => {
            let registrar = crate::registration::Registrar::bind(registration).await?;
            let driver_name = config.driver_name.clone();
            Some(tokio::spawn(async move {
                registrar
                    .serve(&driver_name, async {
                        let _ = registration_stopped.await;
                    })
                    .await
            }))
        }
        None => None,
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
    if let Some(task) = registration {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "kubelet registration"),
            Err(e) => tracing::warn!(error = %e, "kubelet registration task"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(kube) = kube_tasks {
        kube.shutdown().await;
    }
    result.context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}
