//! Periodic orphan check: what the RDS holds against what the cluster references.
//!
//! - Disks without PV: managed volume disks whose ID no PV of this driver references, whose file
//!   is older than the grace period (a volume just created may not have its PV yet), and which
//!   no node holds.
//! - Files without disk, disks without file: as `crate::orphans::scan`, except that files
//!   referenced by a PV or VolumeSnapshotContent are never orphans, and snapshot files are never
//!   counted here at all (the Go driver deleted live snapshot files, test-scenarios §6.4.1);
//!   `rds-csi orphans` reports those for a person to judge.
//! - Dry run by default: it reports (log, event on the CSIDriver object, stats) and deletes only
//!   when dry run is off. A disk without file whose ID a PV still references is never deleted.
//! - Fails open: when PVs or VolumeSnapshotContents cannot be listed, the pass does nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::kube::api::{Api, ApiResource, DynamicObject, ListParams};
use ::kube::Client;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::VolumeAttachment;
use tokio_util::sync::CancellationToken;

use super::api_deadline::{within, LIST_TIMEOUT};
use super::attachments::{states_from, AttachmentManager, Clock, SystemClock};
use super::events::{EventRecorder, EventType, REASON_ORPHAN_DELETED, REASON_ORPHAN_FOUND};
use super::reconciler::{BackgroundTask, LifecycleError};
use crate::ids::{classify_managed_file, ManagedFile};
use crate::orphans::{self, Orphan, OrphanKind, References};
use crate::rds::{deadline_in, RdsClient, RdsError, RdsPath};

pub const DEFAULT_ORPHAN_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_ORPHAN_GRACE_PERIOD: Duration = Duration::from_secs(300);
/// Upper bound of one pass's RDS work (listing a large pool, deletes).
const PASS_DEADLINE: Duration = Duration::from_secs(120);

/// snapshot.storage.k8s.io/v1 VolumeSnapshotContent (a CRD; k8s-openapi has no type for it).
pub fn volume_snapshot_content_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshotContent".into(),
        plural: "volumesnapshotcontents".into(),
    }
}

/// Volume handles of this driver's PVs, snapshot handles of its VolumeSnapshotContents, and the
/// volumes its VolumeAttachments hold. A cluster without the snapshot CRD (404 on the list)
/// has no snapshot references.
pub async fn cluster_references(
    client: &Client,
    driver: &str,
) -> Result<References, ::kube::Error> {
    let mut refs = References::default();
    let pvs = within(
        LIST_TIMEOUT,
        Api::<PersistentVolume>::all(client.clone()).list(&ListParams::default()),
    )
    .await?;
    let vas = within(
        LIST_TIMEOUT,
        Api::<VolumeAttachment>::all(client.clone()).list(&ListParams::default()),
    )
    .await?;
    refs.attached = states_from(&vas.items, &pvs.items, driver, Duration::ZERO)
        .into_iter()
        .map(|s| s.volume_id)
        .collect();
    for pv in &pvs.items {
        if let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) {
            if csi.driver == driver {
                refs.volumes.insert(csi.volume_handle.clone());
            }
        }
    }
    for vsc in &snapshot_contents(client, driver).await? {
        refs.snapshots
            .extend(snapshot_handles(vsc).into_iter().map(str::to_string));
    }
    Ok(refs)
}

/// The VolumeSnapshotContents of `driver`; none in a cluster without the snapshot CRD (404).
pub async fn snapshot_contents(
    client: &Client,
    driver: &str,
) -> Result<Vec<DynamicObject>, ::kube::Error> {
    let vscs = within(
        LIST_TIMEOUT,
        Api::<DynamicObject>::all_with(client.clone(), &volume_snapshot_content_resource())
            .list(&ListParams::default()),
    )
    .await;
    let vscs = match vscs {
        Ok(list) => list.items,
        Err(::kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(vscs
        .into_iter()
        .filter(|v| v.data["spec"]["driver"].as_str() == Some(driver))
        .collect())
}

/// A VolumeSnapshotContent's snapshot handles: dynamic snapshots carry it in status,
/// pre-provisioned ones in spec.source.
pub fn snapshot_handles(vsc: &DynamicObject) -> Vec<&str> {
    [
        vsc.data["status"]["snapshotHandle"].as_str(),
        vsc.data["spec"]["source"]["snapshotHandle"].as_str(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[derive(Debug, Clone)]
pub struct OrphanReconcilerConfig {
    pub driver_name: String,
    /// Every base path of the driver (see `ParamDefaults::base_paths`).
    pub bases: Vec<RdsPath>,
    pub interval: Duration,
    pub grace_period: Duration,
    pub dry_run: bool,
}

impl OrphanReconcilerConfig {
    pub fn new(driver_name: impl Into<String>, bases: Vec<RdsPath>) -> Self {
        Self {
            driver_name: driver_name.into(),
            bases,
            interval: DEFAULT_ORPHAN_CHECK_INTERVAL,
            grace_period: DEFAULT_ORPHAN_GRACE_PERIOD,
            dry_run: true,
        }
    }
}

/// Counters for metrics. `found_by_kind` is the last pass's count (a gauge); the others add up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanStats {
    pub runs: u64,
    pub failures: u64,
    pub found_by_kind: BTreeMap<&'static str, u64>,
    pub deleted: u64,
    pub delete_failures: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanReport {
    pub found: Vec<Orphan>,
    pub deleted: Vec<Orphan>,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    #[error("cannot read the cluster's PVs or VolumeSnapshotContents: {0}")]
    Kube(#[from] ::kube::Error),
    #[error("cannot scan the RDS: {0}")]
    Rds(#[from] RdsError),
}

pub struct OrphanReconciler {
    client: Client,
    rds: Arc<RdsClient>,
    config: OrphanReconcilerConfig,
    events: Option<EventRecorder>,
    attachments: Option<Arc<AttachmentManager>>,
    clock: Arc<dyn Clock>,
    stats: Mutex<OrphanStats>,
    reported: Mutex<HashSet<(OrphanKind, String)>>,
    /// When this process first saw each current orphan, exactly as seen (size and time
    /// included, so a file still being written starts over). Deletion waits for a whole grace
    /// period of this clock, whatever the RDS's clock or time zone says.
    first_seen: Mutex<HashMap<Orphan, SystemTime>>,
    task: BackgroundTask,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(o: &Orphan) -> String {
    o.slot
        .clone()
        .or_else(|| o.path.clone())
        .unwrap_or_default()
}

impl OrphanReconciler {
    pub fn new(client: Client, rds: Arc<RdsClient>, config: OrphanReconcilerConfig) -> Self {
        Self {
            client,
            rds,
            config,
            events: None,
            attachments: None,
            clock: Arc::new(SystemClock),
            stats: Mutex::default(),
            reported: Mutex::default(),
            first_seen: Mutex::default(),
            task: BackgroundTask::default(),
        }
    }

    pub fn with_events(mut self, events: EventRecorder) -> Self {
        self.events = Some(events);
        self
    }

    /// Volumes a node holds are never disks without PV.
    pub fn with_attachments(mut self, attachments: Arc<AttachmentManager>) -> Self {
        self.attachments = Some(attachments);
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &OrphanReconcilerConfig {
        &self.config
    }

    pub fn stats(&self) -> OrphanStats {
        lock(&self.stats).clone()
    }

    /// One pass: scan, report, and (unless dry run) delete.
    pub async fn reconcile_once(&self) -> Result<OrphanReport, OrphanError> {
        let result = self.pass().await;
        let mut stats = lock(&self.stats);
        stats.runs += 1;
        match &result {
            Ok(report) => {
                stats.found_by_kind = [
                    OrphanKind::FileWithoutDisk,
                    OrphanKind::DiskWithoutFile,
                    OrphanKind::DiskWithoutPv,
                ]
                .into_iter()
                .map(|k| {
                    let n = report.found.iter().filter(|o| o.kind == k).count() as u64;
                    crate::metrics::global()
                        .orphans_found
                        .with_label_values(&[k.as_str()])
                        .set(n as i64);
                    (k.as_str(), n)
                })
                .collect();
                stats.deleted += report.deleted.len() as u64;
            }
            Err(e) => {
                stats.failures += 1;
                tracing::warn!(error = %e, "orphan check skipped (nothing deleted)");
            }
        }
        result
    }

    async fn pass(&self) -> Result<OrphanReport, OrphanError> {
        let refs = cluster_references(&self.client, &self.config.driver_name).await?;
        let deadline = deadline_in(PASS_DEADLINE);
        let base = self.config.bases.as_slice();
        let scanned = orphans::scan_at(
            &self.rds,
            base,
            self.config.grace_period,
            Some(&refs),
            self.clock.now(),
            deadline,
        )
        .await?;
        let attached: HashSet<String> = self
            .attachments
            .as_ref()
            .map(|a| a.list().into_keys().collect())
            .unwrap_or_default();
        let found: Vec<Orphan> = scanned
            .into_iter()
            .filter(|o| match o.kind {
                OrphanKind::FileWithoutDisk => !matches!(
                    o.path
                        .as_deref()
                        .and_then(|p| classify_managed_file(base, p)),
                    Some(ManagedFile::Snapshot { .. })
                ),
                OrphanKind::DiskWithoutPv => !o.slot.as_ref().is_some_and(|s| attached.contains(s)),
                OrphanKind::DiskWithoutFile => true,
            })
            .collect();
        // A volume created while this pass ran has its PV only now: look again before judging.
        let refs_after = cluster_references(&self.client, &self.config.driver_name).await?;
        let found: Vec<Orphan> = found
            .into_iter()
            .filter(|o| {
                o.kind != OrphanKind::DiskWithoutPv
                    || !o
                        .slot
                        .as_ref()
                        .is_some_and(|s| refs_after.volumes.contains(s))
            })
            .collect();
        self.report(&found).await;
        let now = self.clock.now();
        let seen_since = {
            let mut first_seen = lock(&self.first_seen);
            let current: HashSet<&Orphan> = found.iter().collect();
            first_seen.retain(|o, _| current.contains(o));
            for o in current {
                first_seen.entry(o.clone()).or_insert(now);
            }
            first_seen.clone()
        };
        let mut deleted = Vec::new();
        if !self.config.dry_run {
            for o in &found {
                if let Some(reason) = orphans::keep_reason(base, o, &[&refs, &refs_after]) {
                    tracing::info!(kind = o.kind.as_str(), orphan = %key(o), reason, "orphan kept");
                    continue;
                }
                let seen_for = seen_since
                    .get(o)
                    .and_then(|t| now.duration_since(*t).ok())
                    .unwrap_or_default();
                if seen_for < self.config.grace_period {
                    tracing::info!(
                        kind = o.kind.as_str(),
                        orphan = %key(o),
                        "orphan will be deleted once it has been seen for the grace period"
                    );
                    continue;
                }
                match orphans::delete(&self.rds, o, deadline).await {
                    Ok(()) => {
                        tracing::warn!(kind = o.kind.as_str(), orphan = %key(o), "orphan deleted");
                        if let Some(events) = &self.events {
                            let message = format!("deleted {} {}", o.kind.as_str(), key(o));
                            events
                                .publish(
                                    &events.driver_ref(),
                                    EventType::Normal,
                                    REASON_ORPHAN_DELETED,
                                    &message,
                                )
                                .await;
                        }
                        deleted.push(o.clone());
                    }
                    Err(e) => {
                        lock(&self.stats).delete_failures += 1;
                        tracing::warn!(error = %e, orphan = %key(o), "could not delete an orphan");
                    }
                }
            }
        }
        Ok(OrphanReport {
            found,
            deleted,
            dry_run: self.config.dry_run,
        })
    }

    /// Logs every orphan and posts an event for each one not reported before.
    async fn report(&self, found: &[Orphan]) {
        let fresh: Vec<&Orphan> = {
            let mut reported = lock(&self.reported);
            let now: HashSet<(OrphanKind, String)> =
                found.iter().map(|o| (o.kind, key(o))).collect();
            reported.retain(|k| now.contains(k));
            found
                .iter()
                .filter(|o| reported.insert((o.kind, key(o))))
                .collect()
        };
        for o in found {
            tracing::warn!(kind = o.kind.as_str(), orphan = %key(o), dry_run = self.config.dry_run,
                "orphan on the RDS");
        }
        let Some(events) = &self.events else { return };
        for o in fresh {
            let action = if self.config.dry_run {
                "dry run: not deleted; remove it with `rds-csi orphans --delete` or disable the dry run"
            } else {
                "it will be deleted"
            };
            let message = format!(
                "{} on the RDS: {} ({} bytes); {action}",
                o.kind.as_str(),
                key(o),
                o.size_bytes.unwrap_or_default()
            );
            events
                .publish(
                    &events.driver_ref(),
                    EventType::Warning,
                    REASON_ORPHAN_FOUND,
                    &message,
                )
                .await;
        }
    }

    /// Runs a pass now and every interval until `parent` is cancelled or `stop`.
    pub fn start(self: &Arc<Self>, parent: &CancellationToken) -> Result<(), LifecycleError> {
        let this = Arc::clone(self);
        self.task.start(parent, move |token| async move {
            loop {
                tokio::select! {
                    // Stopped, or leadership lost: the pass ends at its next await, so it never
                    // runs on (deleting) beside the next leader's.
                    _ = token.cancelled() => break,
                    _ = this.reconcile_once() => {}
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(this.config.interval) => {}
                }
            }
        })
    }

    pub async fn stop(&self) {
        self.task.stop().await;
    }

    pub fn is_running(&self) -> bool {
        self.task.is_running()
    }
}
