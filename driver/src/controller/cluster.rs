//! Events the controller posts while serving a call, in the background so an unanswering API
//! never holds the call up. (The publish node lookup is bounded in `publish.rs`.)

use super::ControllerService;

impl ControllerService {
    /// Posts the expansion event on the volume's PV and PVC without waiting for it.
    pub(super) fn expansion_event(&self, volume_id: &str, bytes: u64) {
        if let Some(events) = &self.events {
            let (events, volume_id) = (events.clone(), volume_id.to_string());
            tokio::spawn(async move { events.expansion_done(&volume_id, bytes).await });
        }
    }
}
