//! Per-volume operation guard: a second concurrent operation on the same volume gets ABORTED
//! (the CO retries), instead of queueing behind a possibly wedged one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::error::NodeError;

#[derive(Debug, Default, Clone)]
pub struct VolumeLocks(Arc<Mutex<HashSet<String>>>);

/// Held for the duration of one operation; released on drop, also when the RPC future is
/// cancelled, so a lock can never leak.
#[derive(Debug)]
pub struct VolumeGuard {
    locks: VolumeLocks,
    id: String,
}

impl VolumeLocks {
    pub fn try_lock(&self, volume_id: &str) -> Result<VolumeGuard, NodeError> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(volume_id.to_string()) {
            return Err(NodeError::Aborted(format!(
                "an operation on volume {volume_id} is already in progress"
            )));
        }
        Ok(VolumeGuard {
            locks: self.clone(),
            id: volume_id.to_string(),
        })
    }
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let mut set = self.locks.0.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_aborted_until_release() {
        let locks = VolumeLocks::default();
        let g = locks.try_lock("a").unwrap();
        assert!(matches!(locks.try_lock("a"), Err(NodeError::Aborted(_))));
        let _b = locks.try_lock("b").unwrap();
        drop(g);
        locks.try_lock("a").unwrap();
    }
}
