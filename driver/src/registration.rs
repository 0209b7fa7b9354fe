//! Registration with kubelet, done by the node plugin itself: the part of node-driver-registrar
//! kubelet needs. kubelet watches its `plugins_registry` directory; for a socket that appears
//! there it calls `GetInfo` (what plugin, where its CSI endpoint is on the host), then the
//! driver's own NodeGetInfo, writes the node's CSINode, and reports the outcome through
//! `NotifyRegistrationStatus`. Removing the socket unregisters the driver.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::Context;
use csi_proto::pluginregistration::registration_server::{Registration, RegistrationServer};
use csi_proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::endpoint;

/// What kubelet's plugin manager calls a CSI driver.
const PLUGIN_TYPE: &str = "CSIPlugin";
/// The CSI versions this driver speaks, as kubelet compares them.
const CSI_VERSIONS: [&str; 1] = ["1.0.0"];

/// Where the node plugin registers and what it tells kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The registration socket, in kubelet's `plugins_registry` directory.
    pub socket: PathBuf,
    /// The CSI socket's path on the host, where kubelet dials it (inside a container the
    /// driver may see it elsewhere).
    pub endpoint: PathBuf,
}

impl Config {
    /// The registration socket in `registry_dir`, named after the driver.
    ///
    /// The `@` is what lets kubelet talk to it. kubelet dials the socket with the gRPC-Go
    /// default authority: the socket's path, percent-encoded (`%2Fvar%2Flib...`). The HTTP/2
    /// layer under tonic refuses a `%` in an authority's host and resets the stream
    /// (PROTOCOL_ERROR), but takes it in the user-info part, which ends at an `@`. kubelet's
    /// CSI connection itself sets the authority `localhost` and needs nothing of the kind.
    pub fn new(registry_dir: &Path, driver_name: &str, endpoint: PathBuf) -> Self {
        Self {
            socket: registry_dir.join(format!("{driver_name}@reg.sock")),
            endpoint,
        }
    }
}

struct Service {
    info: PluginInfo,
}

#[tonic::async_trait]
impl Registration for Service {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::info!(endpoint = %self.info.endpoint, "kubelet asked for the plugin's info");
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("registered with kubelet");
        } else {
            // kubelet tries again while the socket is there; the error says what to mend.
            tracing::error!(error = %status.error, "kubelet refused the registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// The registration socket, bound: a start that cannot make it fails at once.
pub struct Registrar {
    config: Config,
    listener: tokio::net::UnixListener,
}

impl Registrar {
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let listener = endpoint::bind(&config.socket)
            .await
            .context("the kubelet registration socket (--plugin-registration-dir)")?;
        Ok(Self { config, listener })
    }

    /// Serves until `shutdown` completes, then removes the socket, so kubelet unregisters
    /// the driver.
    pub async fn serve(
        self,
        driver_name: &str,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Self { config, listener } = self;
        tracing::info!(
            socket = %config.socket.display(),
            endpoint = %config.endpoint.display(),
            "serving kubelet's plugin registration"
        );
        let service = Service {
            info: PluginInfo {
                r#type: PLUGIN_TYPE.into(),
                name: driver_name.into(),
                endpoint: config.endpoint.display().to_string(),
                supported_versions: CSI_VERSIONS.iter().map(|v| v.to_string()).collect(),
            },
        };
        let result = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await;
        if let Err(e) = std::fs::remove_file(&config.socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %config.socket.display(), error = %e, "could not remove the registration socket");
            }
        }
        result.context("kubelet registration server failed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi_proto::pluginregistration::registration_client::RegistrationClient;
    use std::time::Duration;

    #[tokio::test]
    async fn tells_kubelet_the_host_endpoint_and_unregisters_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new(
            dir.path(),
            "rds.csi.srvlab.io",
            PathBuf::from("/var/lib/kubelet/plugins/rds.csi.srvlab.io/csi.sock"),
        );
        assert_eq!(config.socket, dir.path().join("rds.csi.srvlab.io@reg.sock"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let registrar = Registrar::bind(config.clone()).await.unwrap();
        let server = tokio::spawn(async move {
            registrar
                .serve("rds.csi.srvlab.io", async {
                    let _ = stopped.await;
                })
                .await
        });
        let mut kubelet = RegistrationClient::new(e2e::connect_unix(&config.socket).await.unwrap());
        let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, "rds.csi.srvlab.io");
        assert_eq!(
            info.endpoint,
            "/var/lib/kubelet/plugins/rds.csi.srvlab.io/csi.sock"
        );
        assert_eq!(info.supported_versions, ["1.0.0"]);
        kubelet
            .notify_registration_status(RegistrationStatus {
                plugin_registered: false,
                error: "refused".into(),
            })
            .await
            .unwrap();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!config.socket.exists(), "the socket stays after shutdown");
    }
}
