//! What the controller asks of Kubernetes while serving a call: whether the node of a publish
//! exists, and events. Neither may hold the call up for long: the lookup runs under the volume
//! lock and is bounded (an unanswered one fails open, as an unreadable API does), and events
//! are posted in the background.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use super::ControllerService;
use crate::kube::api_deadline::{within, CALL_TIMEOUT};

impl ControllerService {
    /// NotFound when Kubernetes says `node` does not exist. Without Kubernetes, or when the API
    /// cannot be read in time, the publish goes ahead: an API outage must not block attaching.
    pub(super) async fn check_node_exists(
        &self,
        node: &str,
        deadline: Instant,
    ) -> Result<(), Status> {
        let Some(nodes) = &self.nodes else {
            return Ok(());
        };
        // At most half of what is left, so the publish itself still has time.
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = CALL_TIMEOUT.min(left / 2).max(Duration::from_millis(100));
        match within(limit, nodes.get_opt(node)).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Status::not_found(format!("node {node} does not exist"))),
            Err(e) => {
                tracing::warn!(node, error = %e, "cannot look the node up; publishing anyway");
                Ok(())
            }
        }
    }

    /// Posts the expansion event on the volume's PV and PVC without waiting for it.
    pub(super) fn expansion_event(&self, volume_id: &str, bytes: u64) {
        if let Some(events) = &self.events {
            let (events, volume_id) = (events.clone(), volume_id.to_string());
            tokio::spawn(async move { events.expansion_done(&volume_id, bytes).await });
        }
    }
}
