//! ControllerPublishVolume and ControllerUnpublishVolume: which nodes exist, how many volumes
//! each may hold, and what the node is told about the attachment.

use std::collections::HashMap;

use csi_proto::v1::{
    ControllerPublishVolumeRequest, ControllerPublishVolumeResponse,
    ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse,
};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::CSINode;
use tonic::{Request, Response, Status};

use super::caps::{self, is_block, is_multi_node, is_multi_node_reader, is_reader_only};
use super::params::{self, keys};
use super::{required, ControllerService};
use crate::grpc::deadline;
use crate::kube::attachments::AttachOptions;
use crate::node::context::PUBLISH_READONLY_KEY;

/// The nodes a controller knows when Kubernetes does not tell it (no in-cluster config and no
/// `--kubeconfig`); with Kubernetes, the Node and CSINode objects decide instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KnownNodes {
    /// A controller-only process: nothing says which nodes exist, so every node ID is accepted,
    /// with no attach limit.
    #[default]
    Any,
    /// A process that also serves the node role: exactly that node exists, and it holds at most
    /// `max_volumes` volumes (0: no limit), what its NodeGetInfo reports.
    Local { node_id: String, max_volumes: usize },
}

/// Where the controller learns whether a node exists and its attach limit.
pub(super) enum NodeSource {
    Config(KnownNodes),
    Kube(Box<ClusterNodes>),
}

/// The cluster's view: the Node object says whether a node exists; its CSINode entry for this
/// driver holds the limit kubelet registered from NodeGetInfo.
pub(super) struct ClusterNodes {
    pub nodes: ::kube::Api<Node>,
    pub csi_nodes: ::kube::Api<CSINode>,
    pub driver: String,
}

use crate::kube::api_deadline::{within, CALL_TIMEOUT};

impl NodeSource {
    /// The node's attach limit (None: no limit), or NotFound when the node does not exist.
    async fn attach_limit(
        &self,
        node: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<usize>, Status> {
        match self {
            NodeSource::Config(KnownNodes::Any) => Ok(None),
            NodeSource::Config(KnownNodes::Local {
                node_id,
                max_volumes,
            }) => {
                if node != node_id {
                    return Err(Status::not_found(format!(
                        "node {node} does not exist: without Kubernetes this controller knows \
                         only the node it serves, {node_id}"
                    )));
                }
                Ok((*max_volumes > 0).then_some(*max_volumes))
            }
            NodeSource::Kube(cluster) => {
                let ClusterNodes {
                    nodes,
                    csi_nodes,
                    driver,
                } = cluster.as_ref();
                // Bounded (the lookup runs under the volume lock) to half of what is left, so the
                // publish itself still has time; one that runs out fails open.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let limit = CALL_TIMEOUT
                    .min(left / 2)
                    .max(std::time::Duration::from_millis(100));
                match within(limit, nodes.get_opt(node)).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(Status::not_found(format!("node {node} does not exist")))
                    }
                    // The API being unreadable must not block attaching a volume.
                    Err(e) => {
                        tracing::warn!(node, error = %e, "cannot look the node up; publishing anyway");
                        return Ok(None);
                    }
                }
                match within(limit, csi_nodes.get_opt(node)).await {
                    Ok(csi_node) => Ok(csi_node.and_then(|c| registered_limit(&c, driver))),
                    Err(e) => {
                        tracing::warn!(node, error = %e,
                            "cannot read the node's CSINode; publishing without its attach limit");
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// The attach limit kubelet registered for `driver` on this CSINode (from NodeGetInfo).
fn registered_limit(csi_node: &CSINode, driver: &str) -> Option<usize> {
    let count = csi_node
        .spec
        .drivers
        .iter()
        .find(|d| d.name == driver)?
        .allocatable
        .as_ref()?
        .count?;
    usize::try_from(count).ok().filter(|n| *n > 0)
}

impl ControllerService {
    pub(super) async fn publish(
        &self,
        request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let raw = required(&req.volume_id, "volume_id")?;
        let node = required(&req.node_id, "node_id")?.to_string();
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        caps::check_capability(cap)
            .map_err(|e| Status::invalid_argument(format!("volume_capability: {e}")))?;
        let _guard = self.locks.lock(raw, deadline).await?;
        let (id, disk) = self.existing_volume(raw, deadline).await?;
        self.refresh_attachments(Some(id.as_str()), deadline)
            .await?;
        let node_limit = self.node_source.attach_limit(&node, deadline).await?;
        // A reader-only mode is read-only on the node even when the CO does not set `readonly`
        // (Kubernetes sets it for ReadOnlyMany PVs only with the provisioner's
        // --controller-publish-readonly).
        let readonly = req.readonly || is_reader_only(cap);
        let options = AttachOptions {
            readonly,
            multi_node_block: is_multi_node(cap) && is_block(cap),
            multi_node_reader: is_multi_node_reader(cap),
        };
        let timeout = self.attachments.migration_timeout_for(&req.volume_context);
        let added = self.attachments.attach_within_limit(
            id.as_str(),
            &node,
            options,
            Some(timeout),
            node_limit,
        )?;
        // A failure undoes only what this call added: a retry for a node that already held
        // the volume leaves that node's attachment alone.
        let undo = |status: Status| {
            if added {
                self.attachments.detach(id.as_str(), &node);
            }
            status
        };
        let ctx = &req.volume_context;
        let fenced = ctx.get(keys::NVME_FENCING).map(String::as_str) == Some("true");
        if fenced {
            self.attachments.set_fenced(id.as_str());
        }
        // A disk left unexported (an expansion that could not export it again) is exported
        // before the node is told to connect; the node may connect only once the RDS lets it,
        // so a fence not set is no publish.
        let port = ctx
            .get(keys::NVME_PORT)
            .and_then(|p| p.parse::<u32>().ok())
            .and_then(|p| crate::rds::Port::new(p).ok())
            .unwrap_or(self.config.defaults.nvme_port);
        let export = Self::export_for(&id, &disk, port);
        let disk = self
            .usable(&id, disk, fenced, export, deadline)
            .await
            .map_err(undo)?;
        let address = ctx
            .get(keys::NVME_ADDRESS)
            .cloned()
            .or_else(|| self.config.defaults.nvme_address.clone())
            .unwrap_or_default();
        let port = disk
            .nvme_port
            .unwrap_or(self.config.defaults.nvme_port.get());
        self.attachments.set_port(id.as_str(), port);
        let fs_type = ctx
            .get(keys::FS_TYPE)
            .cloned()
            .unwrap_or_else(|| params::DEFAULT_FS_TYPE.into());
        let mut publish_context = HashMap::from([
            ("nvme_address".to_string(), address),
            ("nvme_port".to_string(), port.to_string()),
            (
                "nvme_nqn".to_string(),
                disk.nqn.clone().unwrap_or_else(|| id.nqn().to_string()),
            ),
            ("fs_type".to_string(), fs_type),
        ]);
        if readonly {
            publish_context.insert(PUBLISH_READONLY_KEY.to_string(), "true".to_string());
        }
        tracing::info!(volume = %id, node, readonly, "volume published");
        Ok(Response::new(ControllerPublishVolumeResponse {
            publish_context,
        }))
    }

    pub(super) async fn unpublish(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let _guard = self.locks.lock(id, deadline).await?;
        // A detach before the table is rebuilt would be undone by the rebuild.
        self.require_attachments_ready()?;
        self.refresh_attachments(Some(id), deadline).await?;
        // Read before the detach: a fenced volume open to any host (a migration) is known as
        // fenced only by the table while its nodes hold it.
        let fenced_in_table = self.attachments.is_fenced(id);
        // An empty node ID means "from every node".
        self.attachments.detach(id, &req.node_id);
        if let (Some(fence), Some(slot)) = (&self.fence, crate::ids::parse_volume_id(id)) {
            // The node leaves the fence too; a retry repeats this until it holds.
            let disk = self
                .rds
                .get_disk(&slot, deadline)
                .await
                .map_err(super::rds_status)?;
            if let Some(disk) = disk.filter(|d| fenced_in_table || fence.is_fenced(id, d)) {
                fence
                    .apply(&slot, &disk, deadline)
                    .await
                    .map_err(|e| super::fence_status(&slot, e))?;
            }
        }
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }
}
