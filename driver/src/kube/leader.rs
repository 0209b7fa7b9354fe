//! Leader election on a coordination.k8s.io/v1 Lease, so two controller replicas never run the
//! reconcilers at once. The same protocol as client-go:
//! - acquire: create the Lease (409: someone else was first), or take it over with a replace
//!   carrying the read resourceVersion (409: someone else changed it first) when it is free
//!   or expired;
//! - expiry is judged by when *this* process last saw the Lease change, plus its duration, so
//!   clock skew between replicas does not matter;
//! - renew: replace with a new renewTime. Each renewal must succeed within the renew deadline
//!   (two thirds of the lease duration) of the last one; a leader that misses it, even with
//!   the call still unanswered, steps down (its work is cancelled and awaited) before the
//!   lease can run out and another replica take over;
//! - release: clear holderIdentity so another replica takes over at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::kube::api::{Api, PostParams};
use ::kube::Client;
use futures_util::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::api_deadline::{within, CALL_TIMEOUT};
use super::attachments::{Clock, SystemClock};

pub const DEFAULT_LEASE_NAME: &str = "rds-csi-controller";
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    pub retry_interval: Duration,
}

impl LeaseConfig {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    holder: Option<String>,
    renew: Option<MicroTime>,
    resource_version: Option<String>,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    clock: Arc<dyn Clock>,
    /// The Lease as last read, and when (by our clock) it last changed.
    observed: Mutex<Option<(Seen, SystemTime)>>,
    leading: AtomicBool,
}

fn is_conflict(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::Api(s) if s.code == 409)
}

fn micro(t: SystemTime) -> MicroTime {
    MicroTime(Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH))
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            clock: Arc::new(SystemClock),
            observed: Mutex::default(),
            leading: AtomicBool::new(false),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Whether the last acquire/renew succeeded.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn spec(&self, now: SystemTime, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire,
            renew_time: Some(micro(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// How long after its last renewal a leader may go on: two thirds of the lease duration,
    /// leaving the rest for its work to stop before another replica may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.config.lease_duration * 2 / 3
    }

    /// One round: Ok(true) when this replica holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, ::kube::Error> {
        let result = self.round().await;
        self.leading
            .store(matches!(result, Ok(true)), Ordering::SeqCst);
        result
    }

    async fn round(&self) -> Result<bool, ::kube::Error> {
        let now = self.clock.now();
        let Some(lease) = within(CALL_TIMEOUT, self.api.get_opt(&self.config.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, Some(micro(now)), 0)),
            };
            return match within(
                CALL_TIMEOUT,
                self.api.create(&PostParams::default(), &lease),
            )
            .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let seen = Seen {
            holder: holder.clone(),
            renew: spec.renew_time.clone(),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let changed_at = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            match observed.as_ref() {
                Some((s, at)) if s == &seen => *at,
                _ => {
                    *observed = Some((seen, now));
                    now
                }
            }
        };
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .filter(|d| *d > 0)
            .map_or(self.config.lease_duration, |d| {
                Duration::from_secs(d as u64)
            });
        let expired = now
            .duration_since(changed_at)
            .is_ok_and(|age| age >= duration);
        if !mine && holder.is_some() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if mine {
            self.spec(now, spec.acquire_time.clone(), transitions)
        } else {
            self.spec(now, Some(micro(now)), transitions + 1)
        };
        let mut updated = lease;
        updated.spec = Some(new_spec);
        // The read resourceVersion makes the replace fail with 409 if anyone wrote in between.
        match within(
            CALL_TIMEOUT,
            self.api
                .replace(&self.config.name, &PostParams::default(), &updated),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica holds it.
    pub async fn release(&self) -> Result<(), ::kube::Error> {
        self.leading.store(false, Ordering::SeqCst);
        let Some(mut lease) = within(CALL_TIMEOUT, self.api.get_opt(&self.config.name)).await?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro(self.clock.now()));
        match within(
            CALL_TIMEOUT,
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(_) => Ok(()),
            // Someone else already wrote it: it is not ours any more.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Campaigns until `cancel`; while leading runs `work(token)`, whose token is cancelled when
    /// leadership is lost (renewal failed for the lease duration, or the Lease was taken). The
    /// work must return soon after its token is cancelled; it is awaited before campaigning again.
    /// On cancel, the work is stopped and the Lease released.
    pub async fn run<F>(self: Arc<Self>, cancel: CancellationToken, work: F)
    where
        F: Fn(CancellationToken) -> BoxFuture<'static, ()> + Send + Sync,
    {
        let mut term: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
        // When the last successful round began: the Lease we wrote then is ours until at least
        // that plus the lease duration, by any replica's view.
        let mut renewed_at: Option<Instant> = None;
        let renew_deadline = self.renew_deadline();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let started = Instant::now();
            // A leader must renew by its deadline; a candidate's round is bounded the same.
            let deadline = match (&term, renewed_at) {
                (Some(_), Some(at)) => at + renew_deadline,
                _ => started + renew_deadline,
            };
            let leading = match timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed_at = Some(started);
                    true
                }
                Ok(Ok(false)) => false,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.config.name, "leader election: Lease API error");
                    // Keep leading only while the Lease we renewed last is surely still ours.
                    term.is_some()
                        && renewed_at.is_some_and(|at| Instant::now() < at + renew_deadline)
                }
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, deadline = ?renew_deadline,
                        "leader election: no answer from the Lease API within the renew deadline");
                    false
                }
            };
            if leading && term.is_none() {
                tracing::info!(identity = %self.config.identity, "became leader");
                let token = cancel.child_token();
                term = Some((token.clone(), tokio::spawn(work(token))));
            } else if !leading {
                self.leading.store(false, Ordering::SeqCst);
                if let Some((token, handle)) = term.take() {
                    tracing::warn!(identity = %self.config.identity, "lost leadership; stopping work");
                    token.cancel();
                    let _ = handle.await;
                }
            }
            let wait = match (leading, renewed_at) {
                // Never sleep past the renew deadline.
                (true, Some(at)) => self
                    .config
                    .renew_interval
                    .min((at + renew_deadline).saturating_duration_since(Instant::now())),
                _ => self.config.retry_interval,
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some((token, handle)) = term.take() {
            token.cancel();
            let _ = handle.await;
        }
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the Lease");
        }
    }
}
