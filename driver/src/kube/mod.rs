//! Kubernetes integration of the controller: the client, the attachment table rebuilt from
//! VolumeAttachments, the attachment and orphan reconcilers, Events, and leader election.
//!
//! Without Kubernetes (no in-cluster config and no `--kubeconfig`, as in CI and local runs) the
//! controller keeps attachments in memory only and none of this runs.
//!
//! # Kubernetes API calls (keep the RBAC rules in deploy/ in step with this list)
//!
//! | API group                 | resource                 | verbs              | used by |
//! |---------------------------|--------------------------|--------------------|---------|
//! | `""` (core/v1)            | `nodes`                  | get, list, watch   | attachment reconciler (get per node; list+watch for delete/NotReady), ControllerPublish (the node exists) |
//! | `""` (core/v1)            | `persistentvolumes`      | list               | attachment rebuild and re-reads, orphan reconciler, PV/PVC lookup for events |
//! | `""` (core/v1)            | `events`                 | create             | events (on PVs, PVCs, and the CSIDriver object) |
//! | `""` (core/v1)            | `persistentvolumeclaims` | get                | CreateVolume of an encrypted volume (its claim's class) |
//! | `storage.k8s.io`          | `storageclasses`         | get                | CreateVolume of an encrypted volume (the class names a node-stage Secret) |
//! | `storage.k8s.io`          | `volumeattachments`      | list               | attachment rebuild at start; re-read under the volume's lock before each publish, unpublish, expansion, deletion and fence repair |
//! | `storage.k8s.io`          | `csinodes`               | get                | ControllerPublish (the node's attach limit for this driver) |
//! | `snapshot.storage.k8s.io` | `volumesnapshotcontents` | list               | orphan reconciler, `rds-csi orphans --kubeconfig` |
//! | `coordination.k8s.io`     | `leases`                 | get, create, update| leader election (namespaced, one Lease) |
//!
//! `rds-csi orphans --kubeconfig` uses only the two `list` calls on `persistentvolumes` and
//! `volumesnapshotcontents`. Nothing here patches, updates or deletes any object but the Lease.

pub mod api_deadline;
pub mod attachments;
pub mod events;
pub mod leader;
pub mod orphans;
pub mod reconciler;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::Client;
use anyhow::Context;
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::rds::{RdsClient, RdsPath};
use attachments::AttachmentManager;
use events::EventRecorder;
use leader::{LeaderElector, LeaseConfig};
use orphans::{OrphanReconciler, OrphanReconcilerConfig};
use reconciler::{AttachmentReconciler, ReconcilerConfig};

/// How the controller uses Kubernetes. The defaults are the Go driver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Without it the in-cluster config is used when running in a pod, and Kubernetes features
    /// are off otherwise.
    pub kubeconfig: Option<PathBuf>,
    /// How long a node must be missing before its attachments are cleared.
    pub attachment_grace_period: Duration,
    /// How often the attachment reconciler checks that attached nodes still exist.
    pub attachment_reconcile_interval: Duration,
    /// How long two nodes may hold an RWX block volume during a live migration.
    pub migration_timeout: Duration,
    pub enable_orphan_reconciler: bool,
    pub orphan_check_interval: Duration,
    /// Files and volumes younger than this are never orphans.
    pub orphan_grace_period: Duration,
    /// Only report orphans.
    pub orphan_dry_run: bool,
    /// Run the reconcilers only on the replica holding the Lease.
    pub leader_election: bool,
    /// Namespace of the Lease; None: the client's default namespace.
    pub leader_election_namespace: Option<String>,
    pub leader_election_lease_name: String,
    /// This replica's name in the Lease and its events; None: [`identity`].
    pub identity: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            attachment_grace_period: Duration::from_secs(30),
            attachment_reconcile_interval: Duration::from_secs(300),
            migration_timeout: Duration::from_secs(300),
            enable_orphan_reconciler: false,
            orphan_check_interval: Duration::from_secs(3600),
            orphan_grace_period: Duration::from_secs(300),
            orphan_dry_run: true,
            leader_election: false,
            leader_election_namespace: None,
            leader_election_lease_name: leader::DEFAULT_LEASE_NAME.to_string(),
            identity: None,
        }
    }
}

/// A client from `kubeconfig`, else from the in-cluster config; None when neither exists.
/// An explicit kubeconfig that cannot be loaded is an error.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Option<Client>> {
    if let Some(path) = kubeconfig {
        // Opened first: `Kubeconfig::read_from`'s own error for a missing file repeats its cause.
        std::fs::File::open(path).with_context(|| format!("--kubeconfig {}", path.display()))?;
        let file = Kubeconfig::read_from(path)
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
        let config = ::kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
        return Ok(Some(Client::try_from(config)?));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return Ok(None);
    }
    match ::kube::Config::incluster() {
        Ok(config) => Ok(Some(Client::try_from(config)?)),
        Err(e) => {
            tracing::warn!(error = %e, "in a pod, but the in-cluster Kubernetes config is unusable");
            Ok(None)
        }
    }
}

/// This replica's name for the Lease and Events.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("rds-csi-{:016x}", rand::random::<u64>()))
}

/// Periodic work for the Lease holder; see [`ControllerKube::run_on_leader`].
pub type LeaderTask = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// The controller's running Kubernetes tasks.
pub struct ControllerKube {
    pub client: Client,
    /// Work the controller hands over to run on the Lease holder (`run_on_leader`).
    leader_task: Arc<std::sync::OnceLock<LeaderTask>>,
    pub attachments: Arc<AttachmentManager>,
    pub attachment_reconciler: Arc<AttachmentReconciler>,
    pub orphan_reconciler: Option<Arc<OrphanReconciler>>,
    pub events: EventRecorder,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ControllerKube {
    /// Runs `task` every attachment reconcile interval on the Lease holder only (with leader
    /// election), once the attachment table is rebuilt; a replica that loses the Lease stops it
    /// at once, even mid-run. The controller's fence repair pass runs this way.
    pub fn run_on_leader(&self, task: LeaderTask) {
        if self.leader_task.set(task).is_err() {
            tracing::warn!("a leader task was already set; the new one is ignored");
        }
    }

    /// What brings the attachment table up to date before each decision.
    pub fn attachment_sync(&self, driver: &str) -> attachments::AttachmentSync {
        attachments::AttachmentSync::new(self.client.clone(), driver, Arc::clone(&self.attachments))
    }

    /// Stops the reconcilers and releases the Lease.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Detach times are read with the attachment grace period: keep them at least that long.
fn detach_retention(config: &Config) -> Duration {
    config
        .attachment_grace_period
        .max(attachments::DEFAULT_DETACH_RETENTION)
}

/// The attachment table for the controller and, when Kubernetes is reachable, the tasks that
/// rebuild and reconcile it. Without Kubernetes the table is in memory only (logged).
pub async fn setup_controller(
    config: &Config,
    driver_name: &str,
    rds: Arc<RdsClient>,
    bases: Vec<RdsPath>,
) -> anyhow::Result<(Arc<AttachmentManager>, Option<ControllerKube>)> {
    let Some(client) = connect(config.kubeconfig.as_deref()).await? else {
        tracing::info!(
            "no Kubernetes config (not in a pod, no --kubeconfig): Kubernetes features are off; \
             attachments are kept in memory only and no reconciler runs"
        );
        let manager = AttachmentManager::new()
            .with_migration_timeout(config.migration_timeout)
            .with_detach_retention(detach_retention(config));
        return Ok((Arc::new(manager), None));
    };
    let kube = start_controller(client, config, driver_name, rds, bases);
    Ok((Arc::clone(&kube.attachments), Some(kube)))
}

/// Starts the rebuild (every replica: any of them may serve publishes) and the reconcilers
/// (only the leader's, with `--leader-election`).
pub fn start_controller(
    client: Client,
    config: &Config,
    driver_name: &str,
    rds: Arc<RdsClient>,
    bases: Vec<RdsPath>,
) -> ControllerKube {
    let cancel = CancellationToken::new();
    let identity = config.identity.clone().unwrap_or_else(identity);
    let manager = Arc::new(
        AttachmentManager::new()
            .with_migration_timeout(config.migration_timeout)
            .with_detach_retention(detach_retention(config))
            .not_ready(),
    );
    let events = EventRecorder::new(client.clone(), driver_name, identity.clone());
    let reconciler = Arc::new(AttachmentReconciler::new(
        Arc::clone(&manager),
        client.clone(),
        ReconcilerConfig {
            interval: config.attachment_reconcile_interval,
            grace_period: config.attachment_grace_period,
            watch_nodes: true,
        },
        Some(events.clone()),
    ));
    manager.set_conflict_hook(reconciler.trigger_handle());
    let orphan = config.enable_orphan_reconciler.then(|| {
        let mut orphans = OrphanReconcilerConfig::new(driver_name, bases);
        orphans.interval = config.orphan_check_interval;
        orphans.grace_period = config.orphan_grace_period;
        orphans.dry_run = config.orphan_dry_run;
        Arc::new(
            OrphanReconciler::new(client.clone(), rds, orphans)
                .with_events(events.clone())
                .with_attachments(Arc::clone(&manager)),
        )
    });

    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![tokio::spawn({
        let (client, driver, manager, cancel) = (
            client.clone(),
            driver_name.to_string(),
            Arc::clone(&manager),
            cancel.clone(),
        );
        async move {
            attachments::rebuild_until_ready(client, driver, manager, cancel).await;
            let _ = ready_tx.send(true);
        }
    })];

    let leader_task = Arc::new(std::sync::OnceLock::new());
    let work = {
        let (reconciler, orphan, leader_task) = (
            Arc::clone(&reconciler),
            orphan.clone(),
            Arc::clone(&leader_task),
        );
        let interval = config.attachment_reconcile_interval;
        move |token: CancellationToken| {
            let (reconciler, orphan, mut ready) =
                (Arc::clone(&reconciler), orphan.clone(), ready_rx.clone());
            let leader_task = Arc::clone(&leader_task);
            async move {
                // Reconcile only a table that holds the cluster's attachments.
                tokio::select! {
                    _ = token.cancelled() => return,
                    r = ready.wait_for(|r| *r) => if r.is_err() { return },
                }
                if let Err(e) = reconciler.start(&token) {
                    tracing::error!(error = %e, "attachment reconciler");
                }
                if let Some(o) = &orphan {
                    if let Err(e) = o.start(&token) {
                        tracing::error!(error = %e, "orphan reconciler");
                    }
                }
                // Ends with the leadership: a replica that lost the Lease stops its task.
                run_every(&leader_task, interval, &token).await;
                reconciler.stop().await;
                if let Some(o) = &orphan {
                    o.stop().await;
                }
            }
            .boxed()
        }
    };
    if config.leader_election {
        let namespace = config
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let elector = Arc::new(LeaderElector::new(
            client.clone(),
            LeaseConfig::new(
                namespace,
                config.leader_election_lease_name.clone(),
                identity,
            ),
        ));
        tasks.push(tokio::spawn(elector.run(cancel.clone(), work)));
    } else {
        tasks.push(tokio::spawn(work(cancel.child_token())));
    }
    tracing::info!(
        leader_election = config.leader_election,
        orphan_reconciler = config.enable_orphan_reconciler,
        orphan_dry_run = config.orphan_dry_run,
        "Kubernetes features on"
    );
    ControllerKube {
        client,
        leader_task,
        attachments: manager,
        attachment_reconciler: reconciler,
        orphan_reconciler: orphan,
        events,
        cancel,
        tasks,
    }
}

/// Runs the leader task every `every` until `token` is cancelled; does nothing until the
/// controller has handed one over.
async fn run_every(
    task: &std::sync::OnceLock<LeaderTask>,
    every: Duration,
    token: &CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(task) = task.get() else { continue };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = task() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_cluster_means_no_client() {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            assert!(connect(None).await.unwrap().is_none());
        }
        let missing = Path::new("/nonexistent/kubeconfig");
        assert!(
            connect(Some(missing)).await.is_err(),
            "an explicit bad kubeconfig is an error"
        );
    }
}
