//! The CSI Identity service.

use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::plugin_capability::{self, service::Type as ServiceType};
use csi_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::rds::RdsClient;

/// How long Probe waits for the RDS before reporting not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct IdentityService {
    driver_name: String,
    controller: bool,
    /// The controller's RDS, whose reachability is the driver's readiness.
    rds: Option<Arc<RdsClient>>,
}

impl IdentityService {
    pub fn new(
        driver_name: impl Into<String>,
        controller: bool,
        rds: Option<Arc<RdsClient>>,
    ) -> Self {
        Self {
            driver_name: driver_name.into(),
            controller,
            rds,
        }
    }
}

fn service_capability(kind: ServiceType) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service {
                r#type: kind as i32,
            },
        )),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let capabilities = if self.controller {
            vec![
                service_capability(ServiceType::ControllerService),
                service_capability(ServiceType::VolumeAccessibilityConstraints),
            ]
        } else {
            Vec::new()
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        let ready = match &self.rds {
            None => true,
            Some(rds) => match rds.identity(crate::rds::deadline_in(PROBE_TIMEOUT)).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "probe: the RDS is not reachable");
                    false
                }
            },
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capabilities_follow_the_controller_role() {
        let caps = |controller| async move {
            IdentityService::new("x", controller, None)
                .get_plugin_capabilities(Request::new(GetPluginCapabilitiesRequest {}))
                .await
                .unwrap()
                .into_inner()
                .capabilities
        };
        assert_eq!(
            caps(true).await,
            vec![
                service_capability(ServiceType::ControllerService),
                service_capability(ServiceType::VolumeAccessibilityConstraints)
            ]
        );
        assert!(caps(false).await.is_empty());
    }
}
