//! The CSI Node service: attach (NVMe/TCP or loop), format, mount, publish, stats, expand.
//!
//! Every RPC derives its truth from the host (`/proc/self/mountinfo`, sysfs), never from
//! memory; the only state kept is a small per-volume record on the host that lets unstage find
//! what to detach after a restart.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csi_proto::v1::node_server::Node;
use csi_proto::v1::node_service_capability::{rpc::Type as RpcType, Rpc, Type as CapType};
use csi_proto::v1::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, Topology,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

mod access;
mod cleanup;
pub mod connector;
pub mod context;
pub mod crypt;
mod encryption;
pub mod error;
mod exec;
pub mod guard;
pub mod mounts;
mod recovery;
pub mod state;
mod stats;

use access::{check_single_writer, publishes_of_staged, requested, Access};
use connector::Connector;
use context::{
    parse_stage_context, publish_readonly, validate_path, validate_volume_id, validate_volume_path,
    FsType, VolumeTarget,
};
use error::{NodeError, Result};
use guard::VolumeLocks;
use mounts::{device_numbers, Mounter, Probe};
use state::{AccessKind, StateStore, VolumeRecord};

pub use recovery::RecoveryReport;

/// The topology segment every node reports (one RDS, reachable from every node).
pub const TOPOLOGY_KEY: &str = "topology.rds.csi.srvlab.io/zone";
pub const TOPOLOGY_ZONE: &str = "default";
pub const DEFAULT_MANAGED_NQN_PREFIX: &str = "nqn.2000-02.com.mikrotik:";

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// When set, every path the CO sends must be under it. `None` lifts the restriction (tests).
    pub kubelet_dir: Option<PathBuf>,
    /// Where the per-volume records live (must survive driver restarts).
    pub state_dir: PathBuf,
    pub managed_nqn_prefix: String,
    /// 0: no limit reported.
    pub max_volumes_per_node: i64,
    /// Where sysfs is mounted (device sizes, device presence).
    pub sys_root: PathBuf,
    /// Upper bound of one RPC's work (connect, wait for the device, mkfs, ...).
    pub operation_timeout: Duration,
}

impl NodeConfig {
    pub fn new(node_id: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id: node_id.into(),
            kubelet_dir: None,
            state_dir: state_dir.into(),
            managed_nqn_prefix: DEFAULT_MANAGED_NQN_PREFIX.into(),
            max_volumes_per_node: 0,
            sys_root: PathBuf::from("/sys"),
            operation_timeout: Duration::from_secs(120),
        }
    }
}

/// Everything `serve --node` configures: the service, and how it attaches volumes.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: NodeConfig,
    pub connector: ConnectorConfig,
}

/// How the node reaches a volume's block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorConfig {
    /// A loop device over the volume's backing file under `root` (development and CI, against
    /// mock-rds's data directory).
    Loop { root: PathBuf },
    /// NVMe over TCP to the RDS (production).
    NvmeTcp(NvmeTcpConfig),
}

/// The NVMe/TCP connector's settings; the host NQN is resolved when the service is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeTcpConfig {
    /// The host's NQN file; when it is missing, a host NQN is derived from the node ID.
    pub hostnqn_file: PathBuf,
    /// The nvme-cli executable.
    pub nvme_cli: PathBuf,
    /// -1: reconnect forever.
    pub ctrl_loss_tmo: i32,
    pub reconnect_delay: u32,
    pub keep_alive_tmo: u32,
    /// The RDS's NVMe/TCP address when the volume context names none.
    pub default_address: Option<std::net::IpAddr>,
    pub default_port: u16,
    /// The cluster's fence key, for fenced volumes.
    pub fence_key: Option<crate::fence_key::FenceKey>,
}

#[derive(Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NodeConfig,
    connector: Arc<dyn Connector>,
    mounter: Mounter,
    state: StateStore,
    locks: VolumeLocks,
    cryptsetup: crypt::Cryptsetup,
}

/// A deadline for clean-up work after the operation's own deadline may have passed.
fn cleanup_deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn exists(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(NodeError::io(path.display(), e)),
    }
}

impl NodeService {
    pub fn new(cfg: NodeConfig, connector: Arc<dyn Connector>) -> Self {
        let state = StateStore::new(cfg.state_dir.clone());
        Self {
            inner: Arc::new(Inner {
                cfg,
                connector,
                mounter: Mounter::default(),
                state,
                locks: VolumeLocks::default(),
                cryptsetup: crypt::Cryptsetup::default(),
            }),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// Builds the service and the connector its configuration names.
    pub fn from_config(config: Config) -> Self {
        let service = config.service;
        let connector: Arc<dyn Connector> = match config.connector {
            ConnectorConfig::Loop { root } => Arc::new(connector::LoopConnector::new(root)),
            ConnectorConfig::NvmeTcp(nvme) => {
                let (host_nqn, host_id) =
                    connector::nvme::resolve_host_nqn(&nvme.hostnqn_file, &service.node_id);
                tracing::info!(host_nqn = %host_nqn, derived = host_id.is_some(), "NVMe host NQN");
                let mut cfg =
                    connector::NvmeConfig::new(host_nqn, service.managed_nqn_prefix.clone());
                cfg.host_id = host_id;
                cfg.fenced_identity = nvme
                    .fence_key
                    .as_ref()
                    .map(|key| key.host_identity(&service.node_id));
                cfg.nvme_bin = nvme.nvme_cli;
                cfg.sys_root = service.sys_root.clone();
                cfg.ctrl_loss_tmo = nvme.ctrl_loss_tmo;
                cfg.reconnect_delay = nvme.reconnect_delay;
                cfg.keep_alive_tmo = nvme.keep_alive_tmo;
                cfg.default_address = nvme.default_address;
                cfg.default_port = Some(nvme.default_port);
                Arc::new(connector::NvmeTcpConnector::new(cfg))
            }
        };
        Self::new(service, connector)
    }

    fn path(&self, field: &str, p: &str) -> Result<PathBuf> {
        validate_path(field, p, self.inner.cfg.kubelet_dir.as_deref())
    }

    /// Where stats and expand look for the volume; see `validate_volume_path`.
    fn volume_path(&self, volume_id: &str, p: &str) -> Result<PathBuf> {
        validate_volume_path(
            "volume_path",
            p,
            volume_id,
            self.inner.cfg.kubelet_dir.as_deref(),
        )
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.cfg.operation_timeout
    }

    /// Detaches a volume, clearing its device's read-only flag first: a loop device keeps the
    /// flag for whichever volume uses it next.
    async fn detach(&self, target: &VolumeTarget, deadline: Instant) -> Result<()> {
        let i = &self.inner;
        let device = i.connector.find_device(target).await?;
        if let Some(device) = device.filter(|d| mounts::is_read_only_device(&i.cfg.sys_root, d)) {
            if let Err(e) = mounts::set_read_only(&device, false, deadline).await {
                tracing::warn!(device = %device.display(), error = %e,
                    "could not clear the read-only flag before detaching");
            }
        }
        i.connector.detach(target, deadline).await
    }

    async fn stage(&self, req: NodeStageVolumeRequest) -> Result<()> {
        let i = &self.inner;
        validate_volume_id(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let requested = requested(req.volume_capability.as_ref())?;
        let ctx = parse_stage_context(
            &req.volume_id,
            &req.volume_context,
            &req.publish_context,
            &i.cfg.managed_nqn_prefix,
        )?;
        i.connector.check_target(&ctx.target)?;
        let passphrase = match ctx.encrypted {
            true => {
                crypt::check_volume_id(&req.volume_id)?;
                Some(crypt::Passphrase::from_secrets(&req.secrets)?)
            }
            false => None,
        };
        let reader_only = requested.is_reader_only();
        let (kind, fs, mut flags) = match requested.access {
            Access::Block => (AccessKind::Block, None, Vec::new()),
            Access::Mount { fs_type, flags } => (
                AccessKind::Mount,
                Some(fs_type.or(ctx.fs_type).unwrap_or(FsType::Ext4)),
                flags,
            ),
        };
        let mkfs_args = match fs {
            Some(fs) => ctx.mkfs_args(fs)?,
            None => Vec::new(),
        };
        let _guard = i.locks.try_lock(&req.volume_id)?;
        let deadline = self.deadline();
        let read_only = ctx.read_only || reader_only;
        let target = ctx.target;
        if read_only && kind == AccessKind::Mount && !flags.iter().any(|f| f == "ro") {
            flags.push("ro".into());
        }
        let mount_read_only = flags.iter().any(|f| f == "ro");
        let rec = VolumeRecord {
            volume_id: req.volume_id.clone(),
            connector: i.connector.name().into(),
            target: target.clone(),
            access: kind,
            fs_type: fs,
            staging_path: staging.clone(),
            read_only,
            encrypted: ctx.encrypted,
        };

        // Already staged (kubelet restarted, or a retry): accept only the same device.
        if let Some(m) = i.mounter.mount_at(&staging)? {
            let dev = self
                .data_device(&req.volume_id, &target, ctx.encrypted)
                .await?;
            if let (AccessKind::Mount, Some(d)) = (kind, &dev) {
                if device_numbers(d)? == (m.major, m.minor) {
                    if m.is_read_only() != mount_read_only {
                        return Err(NodeError::AlreadyExists(format!(
                            "volume {} is already staged at {} {}",
                            req.volume_id,
                            staging.display(),
                            if m.is_read_only() {
                                "read-only"
                            } else {
                                "read-write"
                            }
                        )));
                    }
                    i.state.save(&rec)?;
                    return Ok(());
                }
            }
            return Err(NodeError::AlreadyExists(format!(
                "{} is already mounted from {} ({}:{}), not from volume {}",
                staging.display(),
                m.source,
                m.major,
                m.minor,
                req.volume_id
            )));
        }

        // One staging per volume and node: staged elsewhere and still attached, a second
        // staging would leave the first one's unstage disconnecting a volume in use here.
        if let Some(old) = i.state.load(&req.volume_id)? {
            if old.staging_path != staging && i.connector.find_device(&target).await?.is_some() {
                return Err(NodeError::FailedPrecondition(format!(
                    "volume {} is staged at {}; unstage it there before staging it at {}",
                    req.volume_id,
                    old.staging_path.display(),
                    staging.display()
                )));
            }
        }

        // Record the intent before attaching, so that after a crash unstage still knows
        // what to detach.
        i.state.save(&rec)?;
        let mut attached = None;
        let mut unlocked_now = false;
        let result = async {
            let attachment = i.connector.attach(&target, deadline).await?;
            let mut device = attachment.device.clone();
            attached = Some(attachment);
            if read_only {
                // Before mounting: a read-only device cannot even replay a journal.
                mounts::set_read_only(&device, true, deadline).await?;
            }
            if let Some(passphrase) = &passphrase {
                let unlocked = self
                    .unlock(&req.volume_id, &device, passphrase, read_only, deadline)
                    .await?;
                unlocked_now = unlocked.opened_now;
                device = unlocked.device;
            }
            if let Some(fs) = fs {
                // A read-only volume is never formatted.
                let mkfs = (!read_only).then_some(mkfs_args.as_slice());
                self.format_and_mount(&device, &staging, fs, mkfs, &flags, deadline)
                    .await?;
            }
            Ok::<_, NodeError>(device)
        }
        .await;
        match result {
            Ok(device) => {
                tracing::info!(volume_id = %req.volume_id, device = %device.display(), staging = %staging.display(), "staged");
                Ok(())
            }
            Err(e) => {
                // Undo only what this call attached, so a failed stage leaves nothing of its own
                // behind and never takes away what another user has.
                self.undo_failed_stage(&req.volume_id, &target, attached.as_ref(), unlocked_now)
                    .await?;
                Err(e)
            }
        }
    }

    /// Mounts the filesystem on `device`, formatting a blank device first with `mkfs_options`
    /// (None: the volume is read-only, and a blank one is refused instead of formatted).
    async fn format_and_mount(
        &self,
        device: &Path,
        staging: &Path,
        fs: FsType,
        mkfs_options: Option<&[String]>,
        flags: &[String],
        deadline: Instant,
    ) -> Result<()> {
        std::fs::create_dir_all(staging)
            .map_err(|e| NodeError::io(format!("creating {}", staging.display()), e))?;
        match mounts::probe(device, deadline).await? {
            Probe::Empty => {
                let Some(mkfs_options) = mkfs_options else {
                    return Err(NodeError::FailedPrecondition(format!(
                        "{} is blank and the volume is published read-only, so it is not \
                         formatted; publish it read-write once to create its filesystem",
                        device.display()
                    )));
                };
                tracing::info!(device = %device.display(), fs = fs.as_str(), "formatting a blank device");
                mounts::format(device, fs, mkfs_options, deadline).await?;
            }
            Probe::Filesystem(t) if t == fs.as_str() => {}
            Probe::Filesystem(t) => {
                return Err(NodeError::FailedPrecondition(format!(
                    "{} already holds a {t} filesystem, not {}; refusing to reformat",
                    device.display(),
                    fs.as_str()
                )))
            }
            Probe::Other(what) => {
                return Err(NodeError::FailedPrecondition(format!(
                    "{} holds {what}; refusing to format it",
                    device.display()
                )))
            }
        }
        self.inner
            .mounter
            .mount(device, staging, Some(fs.as_str()), flags, deadline)
            .await
    }

    /// The attachment of a volume of the driver's ID grammar that has no record on this node
    /// (staged by the Go driver, which kept none); None when it is not attached.
    async fn unrecorded_target(&self, volume_id: &str) -> Result<Option<VolumeTarget>> {
        if !context::is_volume_suffix(volume_id) {
            return Ok(None);
        }
        let found = self.inner.connector.target_for_volume(volume_id).await?;
        if let Some(t) = &found {
            tracing::info!(volume_id, nqn = ?t.nqn, file = ?t.file_path,
                "volume attached without a record on this node (staged by the Go driver?)");
        }
        Ok(found)
    }

    async fn unstage(&self, req: NodeUnstageVolumeRequest) -> Result<()> {
        let i = &self.inner;
        validate_volume_id(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let _guard = i.locks.try_lock(&req.volume_id)?;
        let deadline = self.deadline();
        let mut target = i.state.load(&req.volume_id)?.map(|r| r.target);
        if let Some(m) = i.mounter.mount_at(&staging)? {
            if target.is_none() {
                // The record is lost: find the volume from the mounted device instead.
                target = self
                    .target_for_device(&req.volume_id, (m.major, m.minor))
                    .await?;
            }
            i.mounter.unmount(&staging, deadline).await?;
        }
        if let Some(mapping) = self.lock(&req.volume_id, deadline).await? {
            if let (None, Some(&(major, minor))) = (&target, mapping.backing.first()) {
                target = i.connector.target_for_device(major, minor).await?;
            }
        }
        if target.is_none() {
            // Nothing recorded or mounted: a block volume the Go driver staged, found by its ID.
            target = self.unrecorded_target(&req.volume_id).await?;
        }
        if let Some(t) = &target {
            if let Some(dev) = i.connector.find_device(t).await? {
                let users = self.mounts_of_device(&dev)?;
                if !users.is_empty() {
                    let at: Vec<String> = users.iter().map(|m| m.display().to_string()).collect();
                    return Err(NodeError::FailedPrecondition(format!(
                        "{} is still mounted at {}; not detaching volume {}",
                        dev.display(),
                        at.join(", "),
                        req.volume_id
                    )));
                }
                let holders = crypt::holders(&i.cfg.sys_root, device_numbers(&dev)?);
                if !holders.is_empty() {
                    return Err(NodeError::FailedPrecondition(format!(
                        "{} is held by {} (device-mapper or md); not detaching volume {}",
                        dev.display(),
                        holders.join(", "),
                        req.volume_id
                    )));
                }
            }
            // Verified detach: an error here fails the unstage, and kubelet retries.
            self.detach(t, deadline).await?;
        }
        i.state.remove(&req.volume_id)?;
        tracing::info!(volume_id = %req.volume_id, staging = %staging.display(), "unstaged");
        Ok(())
    }

    async fn publish(&self, req: NodePublishVolumeRequest) -> Result<()> {
        let i = &self.inner;
        validate_volume_id(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let target = self.path("target_path", &req.target_path)?;
        let requested = requested(req.volume_capability.as_ref())?;
        let published_read_only = publish_readonly(&req.publish_context)?;
        let _guard = i.locks.try_lock(&req.volume_id)?;
        let deadline = self.deadline();
        let record = i.state.load(&req.volume_id)?;
        // Read-only when the pod asks, and always when the volume is published or staged so.
        let ro = req.readonly
            || published_read_only
            || requested.is_reader_only()
            || record.as_ref().is_some_and(|r| r.read_only);
        match requested.access {
            Access::Mount { .. } => {
                let sm = i.mounter.mount_at(&staging)?.ok_or_else(|| {
                    NodeError::FailedPrecondition(format!(
                        "staging_target_path {} is not mounted; NodeStageVolume first",
                        staging.display()
                    ))
                })?;
                if let Some(tm) = i.mounter.mount_at(&target)? {
                    if (tm.major, tm.minor, &tm.root) == (sm.major, sm.minor, &sm.root)
                        && tm.is_read_only() == ro
                    {
                        return Ok(());
                    }
                    return Err(NodeError::AlreadyExists(format!(
                        "{} is already mounted, from another volume or with another read-only setting",
                        target.display()
                    )));
                }
                if requested.is_single_writer() {
                    let others = publishes_of_staged(&i.mounter, &sm)?;
                    check_single_writer(&req.volume_id, &target, &others)?;
                }
                std::fs::create_dir_all(&target)
                    .map_err(|e| NodeError::io(format!("creating {}", target.display()), e))?;
                i.mounter.bind(&staging, &target, ro, deadline).await?;
            }
            Access::Block => {
                let encrypted = record.as_ref().is_some_and(|r| r.encrypted)
                    || context::is_encrypted(&req.volume_context)?;
                let staged = match record {
                    Some(rec) => Some(rec.target),
                    None => self.unrecorded_target(&req.volume_id).await?,
                };
                let staged = staged.ok_or_else(|| {
                    NodeError::FailedPrecondition(format!(
                        "volume {} is not staged on this node",
                        req.volume_id
                    ))
                })?;
                let dev = self
                    .data_device(&req.volume_id, &staged, encrypted)
                    .await?
                    .ok_or_else(|| {
                        NodeError::FailedPrecondition(format!(
                            "the device of volume {} is not {}",
                            req.volume_id,
                            if encrypted {
                                "open (its dm-crypt mapping is missing)"
                            } else {
                                "attached"
                            }
                        ))
                    })?;
                let numbers = device_numbers(&dev)?;
                if let Some(tm) = i.mounter.mount_at(&target)? {
                    let same = std::fs::metadata(&target).is_ok_and(|m| {
                        m.file_type().is_block_device()
                            && (
                                nix::sys::stat::major(m.rdev()) as u32,
                                nix::sys::stat::minor(m.rdev()) as u32,
                            ) == numbers
                    });
                    if same && tm.is_read_only() == ro {
                        return Ok(());
                    }
                    return Err(NodeError::AlreadyExists(format!(
                        "{} is already mounted, from another device or with another read-only setting",
                        target.display()
                    )));
                }
                if requested.is_single_writer() {
                    let name = dev.file_name().unwrap_or_default().to_string_lossy();
                    let others = i.mounter.users_of_device(numbers.0, numbers.1, &name)?;
                    check_single_writer(&req.volume_id, &target, &others)?;
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| NodeError::io(format!("creating {}", parent.display()), e))?;
                }
                // The bind mount of the device node needs a file to sit on.
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map_err(|e| NodeError::io(format!("creating {}", target.display()), e))?;
                i.mounter.bind(&dev, &target, ro, deadline).await?;
            }
        }
        tracing::info!(volume_id = %req.volume_id, target = %target.display(), readonly = ro, "published");
        Ok(())
    }

    async fn unpublish(&self, req: NodeUnpublishVolumeRequest) -> Result<()> {
        let i = &self.inner;
        validate_volume_id(&req.volume_id)?;
        let target = self.path("target_path", &req.target_path)?;
        let _guard = i.locks.try_lock(&req.volume_id)?;
        if !exists(&target)? {
            return Ok(());
        }
        i.mounter.unmount(&target, self.deadline()).await?;
        let meta =
            std::fs::symlink_metadata(&target).map_err(|e| NodeError::io(target.display(), e))?;
        // remove_dir (not remove_dir_all): a non-empty directory here would be data written
        // to the node's disk while unmounted, which is not ours to delete.
        let removed = if meta.is_dir() {
            std::fs::remove_dir(&target)
        } else {
            std::fs::remove_file(&target)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(format!("removing {}", target.display()), e)),
        }
        tracing::info!(volume_id = %req.volume_id, target = %target.display(), "unpublished");
        Ok(())
    }
}

fn log_err<T>(op: &str, volume_id: &str, r: Result<T>) -> Result<T, Status> {
    r.map_err(|e| {
        tracing::warn!(op, volume_id, error = %e, "node operation failed");
        Status::from(e)
    })
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        log_err("NodeStageVolume", &id, self.stage(req).await)?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        log_err("NodeUnstageVolume", &id, self.unstage(req).await)?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        log_err("NodePublishVolume", &id, self.publish(req).await)?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        log_err("NodeUnpublishVolume", &id, self.unpublish(req).await)?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        Ok(Response::new(log_err(
            "NodeGetVolumeStats",
            &id,
            self.stats(req).await,
        )?))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = req.volume_id.clone();
        let capacity_bytes = log_err("NodeExpandVolume", &id, self.expand(req).await)?;
        Ok(Response::new(NodeExpandVolumeResponse { capacity_bytes }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            RpcType::StageUnstageVolume,
            RpcType::ExpandVolume,
            RpcType::GetVolumeStats,
            RpcType::VolumeCondition,
            RpcType::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let cfg = &self.inner.cfg;
        Ok(Response::new(NodeGetInfoResponse {
            node_id: cfg.node_id.clone(),
            max_volumes_per_node: cfg.max_volumes_per_node,
            accessible_topology: Some(Topology {
                segments: [(TOPOLOGY_KEY.to_string(), TOPOLOGY_ZONE.to_string())].into(),
            }),
        }))
    }
}
