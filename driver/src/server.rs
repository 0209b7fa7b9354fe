//! Runs the gRPC server on the CSI socket until SIGTERM or SIGINT.

use anyhow::Context;
use csi_proto::v1::identity_server::IdentityServer;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::cli::ServeArgs;
use crate::endpoint;
use crate::identity::IdentityService;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let path = endpoint::socket_path(&args.endpoint)?;
    // Install the handlers before the socket exists, so a signal that arrives as soon as a
    // client sees the socket still shuts down cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let listener = endpoint::bind(&path).await?;

    let identity = IdentityService::new(args.driver_name.clone(), args.controller);
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
    let result = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the socket");
        }
    }
    result.context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}
