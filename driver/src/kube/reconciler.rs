//! Clears attachments held by nodes that no longer exist, so a volume whose node was deleted
//! (and never unpublished) can be attached elsewhere.
//!
//! - Runs at start, every `interval` (default 5m), and at once when a Node is deleted or turns
//!   NotReady, or when a publish was refused because another node holds the volume.
//! - Checks every node of an attachment, primary and secondary alike, and removes only the
//!   missing node (the other node of a migration keeps the volume).
//! - A node must have been seen missing for `grace_period` (default 30s) before its attachments
//!   are cleared, and a volume detached within the grace period is left alone (a live-migration
//!   handoff may be in flight).
//! - Fails open: when a Node cannot be read (any error but 404), its attachments are kept.
//! - Also reports RWX migrations that outlived their timeout (event `MigrationTimedOut`).
//!
//! Lifecycle: `start` once (a second start while running is an error), `stop` is idempotent
//! and waits for the task, cancellation of the parent token stops it, and it can be restarted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::kube::api::Api;
use ::kube::runtime::{watcher, WatchStreamExt};
use ::kube::Client;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::api_deadline::{within, CALL_TIMEOUT};
use super::attachments::AttachmentManager;
use super::events::{
    EventRecorder, EventType, REASON_MIGRATION_TIMED_OUT, REASON_STALE_ATTACHMENT_CLEARED,
};

pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub interval: Duration,
    pub grace_period: Duration,
    /// Watch Nodes for deletes and NotReady transitions.
    pub watch_nodes: bool,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_RECONCILE_INTERVAL,
            grace_period: DEFAULT_GRACE_PERIOD,
            watch_nodes: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("the reconciler is already running")]
    AlreadyRunning,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Nodes that returned 404.
    pub missing_nodes: Vec<String>,
    /// Nodes that could not be read (kept: fail open).
    pub unknown_nodes: Vec<String>,
    /// (volume, node) attachments cleared.
    pub cleared: Vec<(String, String)>,
    /// Volumes whose live migration exceeded its timeout.
    pub timed_out_migrations: Vec<String>,
    /// When a missing node's attachment comes due (its grace period, or its volume's detach
    /// window, ends): the loop runs its next pass then rather than a whole interval later.
    pub next_pass_in: Option<Duration>,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachmentReconcilerStats {
    pub runs: u64,
    pub cleared: u64,
    pub api_errors: u64,
    pub timed_out_migrations: u64,
}

struct Shared {
    manager: Arc<AttachmentManager>,
    client: Client,
    config: ReconcilerConfig,
    events: Option<EventRecorder>,
    missing_since: Mutex<HashMap<String, SystemTime>>,
    reported_timeouts: Mutex<HashSet<(String, SystemTime)>>,
    stats: Mutex<AttachmentReconcilerStats>,
}

/// At most one background loop: a second start is refused while one runs, stop cancels it and
/// waits, and a stopped (or finished) loop can be started again.
#[derive(Default)]
pub struct BackgroundTask {
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl BackgroundTask {
    /// Spawns `body` with a child token of `parent`; the loop must end when it is cancelled.
    pub fn start<F, Fut>(&self, parent: &CancellationToken, body: F) -> Result<(), LifecycleError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut running = lock(&self.running);
        if running.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return Err(LifecycleError::AlreadyRunning);
        }
        let cancel = parent.child_token();
        let handle = tokio::spawn(body(cancel.clone()));
        *running = Some((cancel, handle));
        Ok(())
    }

    /// Stops the loop and waits for it; safe to call when not running.
    pub async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some((cancel, handle)) = running {
            cancel.cancel();
            let _ = handle.await;
        }
    }

    pub fn is_running(&self) -> bool {
        lock(&self.running)
            .as_ref()
            .is_some_and(|(_, h)| !h.is_finished())
    }
}

pub struct AttachmentReconciler {
    shared: Arc<Shared>,
    task: BackgroundTask,
    /// Wakes the running loop for a pass now.
    trigger: Mutex<Option<mpsc::Sender<()>>>,
}

impl AttachmentReconciler {
    pub fn new(
        manager: Arc<AttachmentManager>,
        client: Client,
        config: ReconcilerConfig,
        events: Option<EventRecorder>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                manager,
                client,
                config,
                events,
                missing_since: Mutex::default(),
                reported_timeouts: Mutex::default(),
                stats: Mutex::default(),
            }),
            task: BackgroundTask::default(),
            trigger: Mutex::default(),
        }
    }

    pub fn grace_period(&self) -> Duration {
        self.shared.config.grace_period
    }

    pub fn interval(&self) -> Duration {
        self.shared.config.interval
    }

    pub fn stats(&self) -> AttachmentReconcilerStats {
        *lock(&self.shared.stats)
    }

    /// Starts the loop (a first pass runs at once). Stops when `parent` is cancelled.
    pub fn start(&self, parent: &CancellationToken) -> Result<(), LifecycleError> {
        // One pending trigger is enough: a pass reads the whole state.
        let (tx, rx) = mpsc::channel(1);
        let shared = Arc::clone(&self.shared);
        let sender = tx.clone();
        self.task
            .start(parent, move |cancel| run(shared, cancel, sender, rx))?;
        *lock(&self.trigger) = Some(tx);
        Ok(())
    }

    /// Stops the loop and waits for it; safe to call when not running.
    pub async fn stop(&self) {
        lock(&self.trigger).take();
        self.task.stop().await;
    }

    pub fn is_running(&self) -> bool {
        self.task.is_running()
    }

    /// Asks for a pass now; never blocks, a no-op when not running.
    pub fn trigger(&self) {
        if let Some(tx) = lock(&self.trigger).as_ref() {
            let _ = tx.try_send(());
        }
    }

    /// A hook for `AttachmentManager::set_conflict_hook`.
    pub fn trigger_handle(self: &Arc<Self>) -> impl Fn() + Send + Sync + 'static {
        let weak = Arc::downgrade(self);
        move || {
            if let Some(r) = weak.upgrade() {
                r.trigger();
            }
        }
    }

    /// One pass, whether or not the loop runs.
    pub async fn reconcile_once(&self) -> ReconcileReport {
        reconcile(&self.shared).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tx: mpsc::Sender<()>,
    mut rx: mpsc::Receiver<()>,
) {
    let watch = shared
        .config
        .watch_nodes
        .then(|| tokio::spawn(watch_nodes(shared.client.clone(), tx, cancel.clone())));
    loop {
        let next_pass_in = tokio::select! {
            // Stopped, or leadership lost: the pass ends at its next await.
            _ = cancel.cancelled() => break,
            report = reconcile(&shared) => report.next_pass_in,
        };
        // A node's grace period ending is not worth waiting a whole interval for.
        let wait = next_pass_in.map_or(shared.config.interval, |d| d.min(shared.config.interval));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = rx.recv() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(w) = watch {
        w.abort();
    }
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Triggers a pass when a Node is deleted or goes from Ready to NotReady, or when a new list
/// (after the watch was down) lacks a node seen before: its delete event was missed.
async fn watch_nodes(client: Client, tx: mpsc::Sender<()>, cancel: CancellationToken) {
    let api = Api::<Node>::all(client);
    let mut ready: HashMap<String, bool> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Delete(node)) => {
                let name = node.metadata.name.unwrap_or_default();
                tracing::info!(node = %name, "node deleted; checking attachments");
                ready.remove(&name);
                let _ = tx.try_send(());
            }
            Ok(watcher::Event::Apply(node)) | Ok(watcher::Event::InitApply(node)) => {
                let now_ready = is_ready(&node);
                let name = node.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(name.clone());
                }
                if ready.insert(name.clone(), now_ready) == Some(true) && !now_ready {
                    tracing::info!(node = %name, "node became NotReady; checking attachments");
                    let _ = tx.try_send(());
                }
            }
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitDone) => {
                let Some(seen) = relisted.take() else {
                    continue;
                };
                let gone: Vec<String> = ready
                    .keys()
                    .filter(|n| !seen.contains(*n))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    tracing::info!(nodes = ?gone, "nodes gone while the watch was down; checking attachments");
                    for n in &gone {
                        ready.remove(n);
                    }
                    let _ = tx.try_send(());
                }
            }
            Err(e) => tracing::debug!(error = %e, "node watch error; retrying"),
        }
    }
}

enum NodeState {
    Exists,
    Missing,
    Unknown,
}

async fn reconcile(shared: &Shared) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let manager = &shared.manager;
    let now = manager.clock().now();
    let table = manager.list();
    let nodes: BTreeSet<String> = table
        .values()
        .flat_map(|s| s.nodes.iter().map(|n| n.node.clone()))
        .collect();
    let api = Api::<Node>::all(shared.client.clone());
    let mut states = HashMap::new();
    let mut api_errors = 0;
    for node in &nodes {
        let state = match within(CALL_TIMEOUT, api.get_opt(node)).await {
            Ok(Some(_)) => NodeState::Exists,
            Ok(None) => NodeState::Missing,
            Err(e) => {
                tracing::warn!(node = %node, error = %e,
                    "cannot read node; keeping its attachments");
                api_errors += 1;
                NodeState::Unknown
            }
        };
        states.insert(node.clone(), state);
    }
    let grace = shared.config.grace_period;
    let mut clear = Vec::new();
    {
        let mut missing_since = lock(&shared.missing_since);
        missing_since
            .retain(|n, _| matches!(states.get(n), Some(NodeState::Missing | NodeState::Unknown)));
        for (node, state) in &states {
            match state {
                NodeState::Missing => {
                    missing_since.entry(node.clone()).or_insert(now);
                    report.missing_nodes.push(node.clone());
                }
                NodeState::Unknown => report.unknown_nodes.push(node.clone()),
                NodeState::Exists => {}
            }
        }
        let mut next_due: Option<SystemTime> = None;
        for (volume, state) in &table {
            // Judged once per volume, before this pass records detaches of its own.
            let detach_window_ends = manager
                .is_within_grace_period(volume, grace)
                .then(|| manager.detach_time(volume).map(|t| t + grace))
                .flatten();
            for n in &state.nodes {
                if !matches!(states.get(&n.node), Some(NodeState::Missing)) {
                    continue;
                }
                let Some(missing_window_ends) = missing_since.get(&n.node).map(|t| *t + grace)
                else {
                    continue;
                };
                // Both windows must be over; the later end is when it comes due.
                let due =
                    detach_window_ends.map_or(missing_window_ends, |d| d.max(missing_window_ends));
                if detach_window_ends.is_none() && missing_window_ends <= now {
                    clear.push((volume.clone(), n.node.clone()));
                } else if due > now {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                }
            }
        }
        report.next_pass_in = next_due.and_then(|d| d.duration_since(now).ok());
    }
    report.missing_nodes.sort();
    report.unknown_nodes.sort();
    for (volume, node) in &clear {
        manager.clear_gone_node(volume, node);
        tracing::warn!(volume = %volume, node = %node,
            "cleared the attachment of a node that no longer exists");
    }
    report.cleared = clear;

    let mut newly_timed_out = Vec::new();
    {
        let mut reported = lock(&shared.reported_timeouts);
        let current = manager.timed_out_migrations();
        let keys: HashSet<(String, SystemTime)> = current
            .iter()
            .filter_map(|s| Some((s.volume_id.clone(), s.migration_started_at?)))
            .collect();
        reported.retain(|k| keys.contains(k));
        for s in current {
            report.timed_out_migrations.push(s.volume_id.clone());
            if let Some(start) = s.migration_started_at {
                if reported.insert((s.volume_id.clone(), start)) {
                    newly_timed_out.push(s);
                }
            }
        }
    }
    {
        let mut stats = lock(&shared.stats);
        stats.runs += 1;
        stats.cleared += report.cleared.len() as u64;
        stats.api_errors += api_errors;
        stats.timed_out_migrations += newly_timed_out.len() as u64;
    }
    if let Some(events) = &shared.events {
        for (volume, node) in &report.cleared {
            let message = format!(
                "attachment of volume {volume} to node {node} cleared: the node no longer exists"
            );
            events
                .publish_for_volume(
                    volume,
                    EventType::Warning,
                    REASON_STALE_ATTACHMENT_CLEARED,
                    &message,
                )
                .await;
        }
        for s in &newly_timed_out {
            let message = format!(
                "live migration of volume {} between nodes {} exceeded its timeout of {}s; \
                 both nodes still hold it",
                s.volume_id,
                s.node_ids().join(" and "),
                s.migration_timeout.as_secs()
            );
            events
                .publish_for_volume(
                    &s.volume_id,
                    EventType::Warning,
                    REASON_MIGRATION_TIMED_OUT,
                    &message,
                )
                .await;
        }
    }
    for s in &newly_timed_out {
        tracing::warn!(volume = %s.volume_id, nodes = ?s.node_ids(), "live migration timed out");
    }
    report
}
