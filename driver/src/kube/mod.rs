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
//! | `""` (core/v1)            | `nodes`                  | get, list, watch   | attachment reconciler (get per node; list+watch for delete/NotReady) |
//! | `""` (core/v1)            | `persistentvolumes`      | list               | attachment rebuild, orphan reconciler, PV/PVC lookup for events |
//! | `""` (core/v1)            | `events`                 | create             | events (on PVs, PVCs, and the CSIDriver object) |
//! | `storage.k8s.io`          | `volumeattachments`      | list               | attachment rebuild at start |
//! | `snapshot.storage.k8s.io` | `volumesnapshotcontents` | list               | orphan reconciler, `rds-csi orphans --kubeconfig` |
//! | `coordination.k8s.io`     | `leases`                 | get, create, update| leader election (namespaced, one Lease) |
//!
//! `rds-csi orphans --kubeconfig` uses only the two `list` calls on `persistentvolumes` and
//! `volumesnapshotcontents`. Nothing here patches, updates or deletes any object but the Lease.

pub mod attachments;
pub mod events;
pub mod leader;
pub mod orphans;
pub mod reconciler;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use anyhow::Context;
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::parse_duration;
use crate::rds::{RdsClient, RdsPath};
use attachments::AttachmentManager;
use events::EventRecorder;
use leader::{LeaderElector, LeaseConfig};
use orphans::{OrphanReconciler, OrphanReconcilerConfig};
use reconciler::{AttachmentReconciler, ReconcilerConfig};

/// Kubernetes flags of `rds-csi serve` (names as the Go driver's).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file; without it the in-cluster config is used when running in a pod, and
    /// Kubernetes features are off otherwise.
    #[arg(long, env = "RDS_CSI_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// How long a node must be missing before the attachment reconciler clears its
    /// attachments; volumes detached within this period are left alone.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "RDS_CSI_ATTACHMENT_GRACE_PERIOD")]
    pub attachment_grace_period: Duration,

    /// How often the attachment reconciler checks that attached nodes still exist (it also
    /// runs on node deletes and NotReady transitions).
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "RDS_CSI_ATTACHMENT_RECONCILE_INTERVAL")]
    pub attachment_reconcile_interval: Duration,

    /// How long two nodes may hold an RWX block volume during a live migration; the volume
    /// context key `migrationTimeoutSeconds` overrides it.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "RDS_CSI_MIGRATION_TIMEOUT")]
    pub migration_timeout: Duration,

    /// Periodically compare the RDS with the cluster's PVs and VolumeSnapshotContents.
    #[arg(long, env = "RDS_CSI_ENABLE_ORPHAN_RECONCILER")]
    pub enable_orphan_reconciler: bool,

    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "RDS_CSI_ORPHAN_CHECK_INTERVAL")]
    pub orphan_check_interval: Duration,

    /// Files and volumes younger than this are never orphans.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "RDS_CSI_ORPHAN_GRACE_PERIOD")]
    pub orphan_grace_period: Duration,

    /// Only report orphans; `--orphan-dry-run=false` deletes them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", env = "RDS_CSI_ORPHAN_DRY_RUN")]
    pub orphan_dry_run: bool,

    /// Run the reconcilers only on the replica holding the Lease.
    #[arg(long, env = "RDS_CSI_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the Lease (default: the pod's namespace / the kubeconfig's).
    #[arg(long, env = "RDS_CSI_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    #[arg(long, default_value = leader::DEFAULT_LEASE_NAME, env = "RDS_CSI_LEADER_ELECTION_LEASE_NAME")]
    pub leader_election_lease_name: String,
}

/// A client from `kubeconfig`, else from the in-cluster config; None when neither exists.
/// An explicit kubeconfig that cannot be loaded is an error.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Option<Client>> {
    if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path)
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
        return Ok(Some(Client::try_from(config)?));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return Ok(None);
    }
    match Config::incluster() {
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

/// The controller's running Kubernetes tasks.
pub struct ControllerKube {
    pub client: Client,
    pub attachments: Arc<AttachmentManager>,
    pub attachment_reconciler: Arc<AttachmentReconciler>,
    pub orphan_reconciler: Option<Arc<OrphanReconciler>>,
    pub events: EventRecorder,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ControllerKube {
    /// Stops the reconcilers and releases the Lease.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The attachment table for the controller and, when Kubernetes is reachable, the tasks that
/// rebuild and reconcile it. Without Kubernetes the table is in memory only (logged).
pub async fn setup_controller(
    args: &KubeArgs,
    driver_name: &str,
    rds: Arc<RdsClient>,
    base: RdsPath,
) -> anyhow::Result<(Arc<AttachmentManager>, Option<ControllerKube>)> {
    let Some(client) = connect(args.kubeconfig.as_deref()).await? else {
        tracing::info!(
            "no Kubernetes config (not in a pod, no --kubeconfig): Kubernetes features are off; \
             attachments are kept in memory only and no reconciler runs"
        );
        let manager = AttachmentManager::new().with_migration_timeout(args.migration_timeout);
        return Ok((Arc::new(manager), None));
    };
    let kube = start_controller(client, args, driver_name, rds, base);
    Ok((Arc::clone(&kube.attachments), Some(kube)))
}

/// Starts the rebuild (every replica: any of them may serve publishes) and the reconcilers
/// (only the leader's, with `--leader-election`).
pub fn start_controller(
    client: Client,
    args: &KubeArgs,
    driver_name: &str,
    rds: Arc<RdsClient>,
    base: RdsPath,
) -> ControllerKube {
    let cancel = CancellationToken::new();
    let identity = identity();
    let manager = Arc::new(
        AttachmentManager::new()
            .with_migration_timeout(args.migration_timeout)
            .not_ready(),
    );
    let events = EventRecorder::new(client.clone(), driver_name, identity.clone());
    let reconciler = Arc::new(AttachmentReconciler::new(
        Arc::clone(&manager),
        client.clone(),
        ReconcilerConfig {
            interval: args.attachment_reconcile_interval,
            grace_period: args.attachment_grace_period,
            watch_nodes: true,
        },
        Some(events.clone()),
    ));
    manager.set_conflict_hook(reconciler.trigger_handle());
    let orphan = args.enable_orphan_reconciler.then(|| {
        let mut config = OrphanReconcilerConfig::new(driver_name, base);
        config.interval = args.orphan_check_interval;
        config.grace_period = args.orphan_grace_period;
        config.dry_run = args.orphan_dry_run;
        Arc::new(
            OrphanReconciler::new(client.clone(), rds, config)
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

    let work = {
        let (reconciler, orphan) = (Arc::clone(&reconciler), orphan.clone());
        move |token: CancellationToken| {
            let (reconciler, orphan, mut ready) =
                (Arc::clone(&reconciler), orphan.clone(), ready_rx.clone());
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
                token.cancelled().await;
                reconciler.stop().await;
                if let Some(o) = &orphan {
                    o.stop().await;
                }
            }
            .boxed()
        }
    };
    if args.leader_election {
        let namespace = args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let elector = Arc::new(LeaderElector::new(
            client.clone(),
            LeaseConfig::new(namespace, args.leader_election_lease_name.clone(), identity),
        ));
        tasks.push(tokio::spawn(elector.run(cancel.clone(), work)));
    } else {
        tasks.push(tokio::spawn(work(cancel.child_token())));
    }
    tracing::info!(
        leader_election = args.leader_election,
        orphan_reconciler = args.enable_orphan_reconciler,
        orphan_dry_run = args.orphan_dry_run,
        "Kubernetes features on"
    );
    ControllerKube {
        client,
        attachments: manager,
        attachment_reconciler: reconciler,
        orphan_reconciler: orphan,
        events,
        cancel,
        tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kube: KubeArgs,
    }

    #[test]
    fn flags_default_to_the_go_drivers_values() {
        let k = Cli::try_parse_from(["t"]).unwrap().kube;
        assert_eq!(k.kubeconfig, None);
        assert_eq!(k.attachment_grace_period, Duration::from_secs(30));
        assert_eq!(k.attachment_reconcile_interval, Duration::from_secs(300));
        assert_eq!(k.migration_timeout, Duration::from_secs(300));
        assert!(!k.enable_orphan_reconciler);
        assert_eq!(k.orphan_check_interval, Duration::from_secs(3600));
        assert_eq!(k.orphan_grace_period, Duration::from_secs(300));
        assert!(k.orphan_dry_run, "dry run unless switched off");
        assert!(!k.leader_election);
        assert_eq!(k.leader_election_lease_name, "rds-csi-controller");

        let k = Cli::try_parse_from([
            "t",
            "--orphan-dry-run=false",
            "--migration-timeout",
            "90s",
            "--enable-orphan-reconciler",
            "--leader-election",
            "--leader-election-namespace",
            "csi",
        ])
        .unwrap()
        .kube;
        assert!(!k.orphan_dry_run);
        assert_eq!(k.migration_timeout, Duration::from_secs(90));
        assert!(k.enable_orphan_reconciler && k.leader_election);
        assert_eq!(k.leader_election_namespace.as_deref(), Some("csi"));
        assert!(
            Cli::try_parse_from(["t", "--orphan-dry-run"])
                .unwrap()
                .kube
                .orphan_dry_run
        );
        assert!(Cli::try_parse_from(["t", "--orphan-grace-period", "5x"]).is_err());
    }

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
