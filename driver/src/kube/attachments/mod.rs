//! Which nodes hold each volume: the controller's source of truth for ControllerPublish.
//!
//! Rules:
//! - A volume is attached to one node. A publish to another node while it is held fails with
//!   FailedPrecondition naming the holder; the holder is never evicted (the Go driver's grace
//!   period branch evicted a live attachment, test-scenarios §6.4.5).
//! - A volume published MULTI_NODE_READER_ONLY (ReadOnlyMany) may be held by any number of
//!   nodes, all of them readers; a writer is refused while readers hold it, and a reader while a
//!   writer does.
//! - A block volume published MULTI_NODE (RWX block, KubeVirt live migration) may be held by two
//!   nodes at once. The second attach starts a migration with a timeout; a third node is always
//!   refused, and once the timeout has passed the refusal says so and `timed_out_migrations`
//!   reports it (the reconciler posts an event), so a stuck dual attach is visible.
//! - Every detach records a detach time per volume, which can be read and cleared; the
//!   attachment reconciler leaves volumes alone within the grace period after a detach.
//!
//! With Kubernetes, the state starts "not ready" and is rebuilt from VolumeAttachments before
//! any publish is admitted (`rebuild`), so a restart never forgets an attachment; before each
//! decision the controller brings the volume's entry up to date from them again (`sync`), so
//! what another replica attached or detached counts too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tonic::Status;

mod cluster;
pub use cluster::{
    rebuild, rebuild_until_ready, states_from, AttachmentSync, ClusterAttachments, RebuildReport,
};

/// Default time two nodes may hold an RWX block volume during a live migration.
pub const DEFAULT_MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);
/// The range a migration timeout is clamped to: shorter would mark a migration timed out
/// before any could finish (0 marks every one at once), longer would let two nodes hold a
/// volume indefinitely.
pub const MIN_MIGRATION_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_MIGRATION_TIMEOUT: Duration = Duration::from_secs(86_400);

/// `timeout` within [`MIN_MIGRATION_TIMEOUT`]`..=`[`MAX_MIGRATION_TIMEOUT`]. Inputs are checked
/// where they enter (flag, StorageClass); this covers what predates the check (old PVs).
pub fn clamp_migration_timeout(timeout: Duration) -> Duration {
    let clamped = timeout.clamp(MIN_MIGRATION_TIMEOUT, MAX_MIGRATION_TIMEOUT);
    // Only the warning hangs on this comparison: inverting it changes no result.
    if clamped != timeout {
        tracing::warn!(
            requested_seconds = timeout.as_secs(),
            used_seconds = clamped.as_secs(),
            "migration timeout out of range; clamped"
        );
    }
    clamped
}
/// How long a detach time is kept: it only matters within the attachment grace period, and
/// keeping every one would grow the table with each volume ever detached.
pub const DEFAULT_DETACH_RETENTION: Duration = Duration::from_secs(3600);
/// Volume context (and PV `csi.volumeAttributes`) key overriding the migration timeout.
pub const MIGRATION_TIMEOUT_KEY: &str = "migrationTimeoutSeconds";
/// Volume context (and PV `csi.volumeAttributes`) key saying the volume is fenced on the RDS.
pub const NVME_FENCING_KEY: &str = "nvmeFencing";
/// Volume context (and PV `csi.volumeAttributes`) key with the disk's NVMe/TCP port.
pub const NVME_PORT_KEY: &str = "nvmePort";

/// Time source; tests inject a [`ManualClock`] so expiry is tested without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self(Mutex::new(start))
    }
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The publish options a node holds a volume with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    pub readonly: bool,
    /// MULTI_NODE access on a block volume: a second node may attach for a live migration.
    pub multi_node_block: bool,
    /// MULTI_NODE_READER_ONLY: any number of nodes may attach, all read-only.
    pub multi_node_reader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAttachment {
    pub node: String,
    pub attached_at: SystemTime,
    /// None when rebuilt from a VolumeAttachment, which does not record them; the next publish
    /// to the same node adopts its options instead of failing with AlreadyExists.
    pub options: Option<AttachOptions>,
}

/// One volume's attachments; `nodes[0]` is the primary (the migration source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentState {
    pub volume_id: String,
    pub nodes: Vec<NodeAttachment>,
    pub multi_node_block: bool,
    /// Held by readers only (ReadOnlyMany); never a migration, however many nodes.
    pub multi_node_reader: bool,
    /// When the second node attached.
    pub migration_started_at: Option<SystemTime>,
    pub migration_timeout: Duration,
    /// The volume is fenced on the RDS (`nvmeFencing` in its volume context or PV attributes):
    /// how a fenced disk open to any host during a migration is still known as fenced.
    pub fenced: bool,
    /// The NVMe/TCP port its nodes connect to: the one the last publish handed out, or the one
    /// its PV records. A disk exported on another port strands them.
    pub nvme_port: Option<u16>,
}

impl AttachmentState {
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node.clone()).collect()
    }
    pub fn is_attached_to(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n.node == node)
    }
    pub fn is_migrating(&self) -> bool {
        // Every writer of `migration_started_at` sets it only with a second holder and clears
        // it below two, so `> 1` and `>= 1` agree (an equivalent mutant); kept as the rule.
        self.nodes.len() > 1 && self.migration_started_at.is_some()
    }
    /// True once a dual attach has lasted longer than its timeout.
    pub fn is_migration_timed_out(&self, now: SystemTime) -> bool {
        match (self.is_migrating(), self.migration_started_at) {
            (true, Some(start)) => now
                .duration_since(start)
                .is_ok_and(|age| age > self.migration_timeout),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("attachment state is not yet rebuilt from VolumeAttachments; retry shortly")]
    NotReady,
    #[error("volume {volume} is already published to {node} with different options")]
    OptionsMismatch { volume: String, node: String },
    #[error(
        "volume {volume} is already attached to node {holder}; it can be attached to one node at a \
         time (use RWX with block volumes for live migration). It is released when {holder} \
         unpublishes it, or when node {holder} no longer exists"
    )]
    Held { volume: String, holder: String },
    #[error(
        "volume {volume} is attached {} to nodes {}: a ReadOnlyMany volume is shared by readers \
         only, so readers and a writer cannot hold it at the same time",
        if *holders_read_only { "read-only" } else { "read-write" }, holders.join(", ")
    )]
    ReaderWriterConflict {
        volume: String,
        holders: Vec<String>,
        holders_read_only: bool,
    },
    #[error(
        "volume {volume} is already attached to nodes {}: migration limit of two nodes reached",
        holders.join(", ")
    )]
    MigrationLimit {
        volume: String,
        holders: Vec<String>,
    },
    #[error(
        "volume {volume} is attached to nodes {} and its live migration timeout ({}s) was exceeded; \
         a node must unpublish it first",
        holders.join(", "), timeout.as_secs()
    )]
    MigrationTimedOut {
        volume: String,
        holders: Vec<String>,
        timeout: Duration,
    },
    #[error(
        "node {node} already holds {limit} volumes, its limit (--max-volumes-per-node); \
         volume {volume} can be published there once another volume is unpublished"
    )]
    NodeFull {
        volume: String,
        node: String,
        limit: usize,
    },
}

impl From<AttachError> for Status {
    fn from(e: AttachError) -> Self {
        let message = e.to_string();
        match e {
            AttachError::NotReady => Status::unavailable(message),
            AttachError::OptionsMismatch { .. } => Status::already_exists(message),
            AttachError::NodeFull { .. } => Status::resource_exhausted(message),
            AttachError::Held { .. }
            | AttachError::ReaderWriterConflict { .. }
            | AttachError::MigrationLimit { .. }
            | AttachError::MigrationTimedOut { .. } => Status::failed_precondition(message),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    volumes: HashMap<String, AttachmentState>,
    detached_at: HashMap<String, SystemTime>,
    /// (volume, node) attachments the reconciler cleared because the node is gone, while
    /// their VolumeAttachments linger: a sync does not bring them back.
    cleared: HashSet<(String, String)>,
}

type Hook = Arc<dyn Fn() + Send + Sync>;

/// The attachment table. Callers serialise operations per volume (the controller's keyed
/// locks); the inner mutex only keeps the table consistent.
pub struct AttachmentManager {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    migration_timeout: Duration,
    detach_retention: Duration,
    ready: AtomicBool,
    on_conflict: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for AttachmentManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentManager")
            .field("ready", &self.is_ready())
            .field("migration_timeout", &self.migration_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for AttachmentManager {
    fn default() -> Self {
        Self::new()
    }
}

impl AttachmentManager {
    /// An in-memory table, ready at once (no Kubernetes: nothing to rebuild from).
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            clock: Arc::new(SystemClock),
            migration_timeout: DEFAULT_MIGRATION_TIMEOUT,
            detach_retention: DEFAULT_DETACH_RETENTION,
            ready: AtomicBool::new(true),
            on_conflict: Mutex::default(),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The migration timeout of volumes whose context does not set `migrationTimeoutSeconds`.
    pub fn with_migration_timeout(mut self, timeout: Duration) -> Self {
        self.migration_timeout = clamp_migration_timeout(timeout);
        self
    }

    /// How long detach times are kept; at least the grace period they are read with.
    pub fn with_detach_retention(mut self, retention: Duration) -> Self {
        self.detach_retention = retention;
        self
    }

    /// Refuses publishes until `set_ready(true)`; for a table rebuilt from Kubernetes.
    pub fn not_ready(self) -> Self {
        self.ready.store(false, Ordering::SeqCst);
        self
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    pub fn default_migration_timeout(&self) -> Duration {
        self.migration_timeout
    }

    /// Called (outside the lock) whenever a publish is refused because another node holds the
    /// volume; the reconciler uses it to check at once whether that node still exists.
    pub fn set_conflict_hook(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.on_conflict.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The migration timeout for a volume context: `migrationTimeoutSeconds` or the default.
    pub fn migration_timeout_for(&self, context: &HashMap<String, String>) -> Duration {
        context
            .get(MIGRATION_TIMEOUT_KEY)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(self.migration_timeout, |secs| {
                clamp_migration_timeout(Duration::from_secs(secs))
            })
    }

    /// Records that `node` holds `volume`. Ok(true) for a new attachment, Ok(false) when the
    /// node already held it (idempotent retry).
    pub fn attach(
        &self,
        volume: &str,
        node: &str,
        options: AttachOptions,
        migration_timeout: Option<Duration>,
    ) -> Result<bool, AttachError> {
        self.attach_within_limit(volume, node, options, migration_timeout, None)
    }

    /// `attach`, refusing a new attachment once `node` holds `node_limit` volumes. The count and
    /// the insert happen under one lock, so concurrent publishes of different volumes cannot
    /// pass the limit together.
    pub fn attach_within_limit(
        &self,
        volume: &str,
        node: &str,
        options: AttachOptions,
        migration_timeout: Option<Duration>,
        node_limit: Option<usize>,
    ) -> Result<bool, AttachError> {
        let result = self.attach_locked(volume, node, options, migration_timeout, node_limit);
        if matches!(
            result,
            Err(AttachError::Held { .. }
                | AttachError::ReaderWriterConflict { .. }
                | AttachError::MigrationLimit { .. }
                | AttachError::MigrationTimedOut { .. })
        ) {
            let hook = self
                .on_conflict
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        result
    }

    fn attach_locked(
        &self,
        volume: &str,
        node: &str,
        options: AttachOptions,
        migration_timeout: Option<Duration>,
        node_limit: Option<usize>,
    ) -> Result<bool, AttachError> {
        if !self.is_ready() {
            return Err(AttachError::NotReady);
        }
        let now = self.clock.now();
        let mut state = self.lock();
        let already_held = state
            .volumes
            .get(volume)
            .is_some_and(|held| held.is_attached_to(node));
        if let Some(limit) = node_limit.filter(|_| !already_held) {
            let on_node = state
                .volumes
                .values()
                .filter(|held| held.is_attached_to(node))
                .count();
            if on_node >= limit {
                return Err(AttachError::NodeFull {
                    volume: volume.to_string(),
                    node: node.to_string(),
                    limit,
                });
            }
        }
        let entry = NodeAttachment {
            node: node.to_string(),
            attached_at: now,
            options: Some(options),
        };
        let Some(held) = state.volumes.get_mut(volume) else {
            state.volumes.insert(
                volume.to_string(),
                AttachmentState {
                    volume_id: volume.to_string(),
                    nodes: vec![entry],
                    multi_node_block: options.multi_node_block,
                    multi_node_reader: options.multi_node_reader,
                    migration_started_at: None,
                    migration_timeout: migration_timeout.unwrap_or(self.migration_timeout),
                    fenced: false,
                    nvme_port: None,
                },
            );
            return Ok(true);
        };
        if let Some(existing) = held.nodes.iter_mut().find(|n| n.node == node) {
            return match existing.options {
                Some(o) if o != options => Err(AttachError::OptionsMismatch {
                    volume: volume.to_string(),
                    node: node.to_string(),
                }),
                Some(_) => Ok(false),
                None => {
                    existing.options = Some(options);
                    held.multi_node_block = options.multi_node_block;
                    held.multi_node_reader = options.multi_node_reader;
                    Ok(false)
                }
            };
        }
        let holders = held.node_ids();
        // Holders whose options are unknown (rebuilt) count by the PV's access mode.
        let holders_read_only = held.nodes.iter().all(|n| {
            n.options
                .map_or(held.multi_node_reader, |o| o.multi_node_reader)
        });
        match (options.multi_node_reader, holders_read_only) {
            (true, true) => {
                held.nodes.push(entry);
                return Ok(true);
            }
            (true, false) | (false, true) => {
                return Err(AttachError::ReaderWriterConflict {
                    volume: volume.to_string(),
                    holders,
                    holders_read_only,
                })
            }
            (false, false) => {}
        }
        if held.nodes.len() >= 2 {
            return Err(if held.is_migration_timed_out(now) {
                AttachError::MigrationTimedOut {
                    volume: volume.to_string(),
                    holders,
                    timeout: held.migration_timeout,
                }
            } else {
                AttachError::MigrationLimit {
                    volume: volume.to_string(),
                    holders,
                }
            });
        }
        // Both sides must ask for RWX block; a holder whose options are unknown (rebuilt) counts
        // by the PV's access mode.
        let holder_multi = held.nodes[0]
            .options
            .map_or(held.multi_node_block, |o| o.multi_node_block);
        if !(options.multi_node_block && holder_multi) {
            return Err(AttachError::Held {
                volume: volume.to_string(),
                holder: holders.join(", "),
            });
        }
        held.nodes.push(entry);
        held.migration_started_at = Some(now);
        held.migration_timeout = migration_timeout.unwrap_or(self.migration_timeout);
        Ok(true)
    }

    /// Removes `node`'s attachment (every node's when `node` is empty) and records the detach
    /// time. Returns true when the volume is no longer attached anywhere.
    pub fn detach(&self, volume: &str, node: &str) -> bool {
        let now = self.clock.now();
        let mut state = self.lock();
        let Some(held) = state.volumes.get_mut(volume) else {
            return true;
        };
        let before = held.nodes.len();
        held.nodes.retain(|n| !node.is_empty() && n.node != node);
        if held.nodes.len() < 2 {
            held.migration_started_at = None;
        }
        let removed = held.nodes.len() != before;
        let empty = held.nodes.is_empty();
        if empty {
            state.volumes.remove(volume);
        }
        if removed {
            let retention = self.detach_retention;
            state
                .detached_at
                .retain(|_, at| now.duration_since(*at).unwrap_or_default() < retention);
            state.detached_at.insert(volume.to_string(), now);
        }
        empty
    }

    /// Records that `volume`, which a node holds, is fenced (its volume context says so).
    pub fn set_fenced(&self, volume: &str) {
        if let Some(held) = self.lock().volumes.get_mut(volume) {
            held.fenced = true;
        }
    }

    /// Records the NVMe/TCP port the nodes holding `volume` were told to connect to.
    pub fn set_port(&self, volume: &str, port: u16) {
        if let Some(held) = self.lock().volumes.get_mut(volume) {
            held.nvme_port = Some(port);
        }
    }

    /// Whether the table knows `volume` as fenced (only while a node holds it).
    pub fn is_fenced(&self, volume: &str) -> bool {
        self.lock().volumes.get(volume).is_some_and(|s| s.fenced)
    }

    pub fn get(&self, volume: &str) -> Option<AttachmentState> {
        self.lock().volumes.get(volume).cloned()
    }

    pub fn nodes(&self, volume: &str) -> Vec<String> {
        self.get(volume).map(|s| s.node_ids()).unwrap_or_default()
    }

    /// A copy of the table.
    pub fn list(&self) -> BTreeMap<String, AttachmentState> {
        self.lock()
            .volumes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Volumes whose dual attach has outlived its migration timeout.
    pub fn timed_out_migrations(&self) -> Vec<AttachmentState> {
        let now = self.clock.now();
        self.lock()
            .volumes
            .values()
            .filter(|s| s.is_migration_timed_out(now))
            .cloned()
            .collect()
    }

    pub fn detach_time(&self, volume: &str) -> Option<SystemTime> {
        self.lock().detached_at.get(volume).copied()
    }

    pub fn clear_detach_time(&self, volume: &str) {
        self.lock().detached_at.remove(volume);
    }

    /// True iff the volume was detached less than `period` ago.
    pub fn is_within_grace_period(&self, volume: &str, period: Duration) -> bool {
        let now = self.clock.now();
        self.detach_time(volume)
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() < period)
    }

    /// Clears the attachment of a node that no longer exists (the reconciler's verdict), and
    /// keeps it cleared while its VolumeAttachment lingers.
    pub fn clear_gone_node(&self, volume: &str, node: &str) -> bool {
        self.lock()
            .cleared
            .insert((volume.to_string(), node.to_string()));
        self.detach(volume, node)
    }

    /// Brings `volume` (every volume: None) in line with the cluster as just read. A node
    /// without a VolumeAttachment for the volume any more was detached, by this replica or
    /// another, and leaves the table; the node of an attached VolumeAttachment joins it (at
    /// most two nodes, as in a rebuild), unless the reconciler cleared it.
    pub fn sync(&self, volume: Option<&str>, cluster: &ClusterAttachments) {
        let in_scope = |v: &str| volume.is_none_or(|one| one == v);
        let has_attachment = |v: &str, node: &str| {
            cluster
                .with_attachment
                .get(v)
                .is_some_and(|nodes| nodes.contains(node))
        };
        let (gone, cleared) = {
            let mut state = self.lock();
            state
                .cleared
                .retain(|(v, n)| !in_scope(v) || has_attachment(v, n));
            let gone: Vec<(String, String)> = state
                .volumes
                .iter()
                .filter(|(v, _)| in_scope(v))
                .flat_map(|(v, held)| {
                    held.nodes
                        .iter()
                        .filter(|n| !has_attachment(v, &n.node))
                        .map(|n| (v.clone(), n.node.clone()))
                })
                .collect();
            (gone, state.cleared.clone())
        };
        for (v, node) in &gone {
            tracing::info!(volume = %v, node = %node,
                "attachment gone from the cluster (detached by another replica?); dropped");
            self.detach(v, node);
        }
        let joining = cluster
            .states
            .iter()
            .filter(|s| in_scope(&s.volume_id))
            .filter_map(|s| {
                let mut s = s.clone();
                let id = s.volume_id.clone();
                s.nodes
                    .retain(|n| !cleared.contains(&(id.clone(), n.node.clone())));
                // A cleared node may leave one holder. Its start would never be read (see
                // `is_migrating`) and a second holder sets its own, so never clearing it (`<`
                // made `>`) is an equivalent mutant; cleared anyway, as every writer does.
                if s.nodes.len() < 2 {
                    s.migration_started_at = None;
                }
                (!s.nodes.is_empty()).then_some(s)
            })
            .collect();
        self.merge(joining);
    }

    /// Adds rebuilt attachments without removing anything already known (a publish may have
    /// landed before its VolumeAttachment was marked attached). A volume never gets more than
    /// two nodes this way.
    pub fn merge(&self, rebuilt: Vec<AttachmentState>) {
        let mut state = self.lock();
        for r in rebuilt {
            match state.volumes.get_mut(&r.volume_id) {
                None => {
                    state.volumes.insert(r.volume_id.clone(), r);
                }
                Some(held) => {
                    held.fenced |= r.fenced;
                    held.nvme_port = held.nvme_port.or(r.nvme_port);
                    for n in r.nodes {
                        if held.is_attached_to(&n.node) {
                            continue;
                        }
                        if held.multi_node_reader && r.multi_node_reader {
                            held.nodes.push(n);
                            continue;
                        }
                        if held.nodes.len() >= 2 {
                            tracing::warn!(volume = %held.volume_id, node = %n.node,
                                "VolumeAttachment for a third node ignored");
                            continue;
                        }
                        held.migration_started_at =
                            Some(n.attached_at.max(held.nodes[0].attached_at));
                        held.nodes.push(n);
                    }
                }
            }
        }
    }
}
