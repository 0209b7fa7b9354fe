//! Deadlines for Kubernetes API calls. kube 5 sets no read timeout, so one call over a
//! half-open connection would wait forever: the publish node lookup under its volume lock, a
//! reconciler pass, the rebuild, a Lease renewal. Every call is bounded here; one that runs out
//! fails like any other API error, which each caller already treats as "unknown" (the
//! reconcilers and the publish lookup fail open, the rebuild retries).

use std::future::Future;
use std::time::Duration;

/// One object: a get, a create, a replace.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A cluster-wide list (every PV, VolumeAttachment or VolumeSnapshotContent).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// The error of a call that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API did not answer within {0:?}")]
pub struct ApiTimeout(pub Duration);

/// Runs `call`, failing it with [`ApiTimeout`] after `limit`.
pub async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, ::kube::Error>>,
) -> Result<T, ::kube::Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(::kube::Error::Service(Box::new(ApiTimeout(limit)))),
    }
}
