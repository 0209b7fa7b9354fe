//! The command-line options of `rds-csi serve`: endpoint, roles, node and NVMe settings and
//! the Kubernetes flags, with the checks of flags that only make sense together.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{RdsArgs, DEFAULT_DRIVER_NAME};
use crate::duration::{parse_duration, parse_positive_duration, parse_seconds_or_duration};
use crate::kube::leader;
use crate::metrics;

/// How the node reaches a volume's block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectorKind {
    /// NVMe over TCP to the RDS (production).
    NvmeTcp,
    /// A loop device over the volume's backing file under `--loop-root` (development and CI,
    /// against mock-rds's data directory).
    Loop,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// CSI endpoint: `unix:///path/to/csi.sock` or a plain path.
    #[arg(
        long,
        default_value = "unix:///var/lib/kubelet/plugins/rds.csi.srvlab.io/csi.sock",
        env = "RDS_CSI_ENDPOINT"
    )]
    pub endpoint: String,

    /// CSI driver name reported by GetPluginInfo (must match the CSIDriver object).
    #[arg(long, default_value = DEFAULT_DRIVER_NAME, env = "RDS_CSI_DRIVER_NAME")]
    pub driver_name: String,

    /// This node's name (normally the Kubernetes node name). Required with `--node`.
    #[arg(long, env = "RDS_CSI_NODE_ID")]
    pub node_id: Option<String>,

    /// Serve the CSI Controller service (provisioning through the RDS).
    ///
    /// ControllerPublishVolume attaches only to nodes that exist (others are NotFound), at most
    /// as many volumes per node as the node reports. With Kubernetes, the Node object says
    /// whether a node exists and its CSINode the limit. Without Kubernetes, a process that also
    /// serves --node knows only its own --node-id, with its --max-volumes-per-node; a
    /// controller-only process without Kubernetes accepts any node ID, with no limit.
    #[arg(long, env = "RDS_CSI_CONTROLLER", value_parser = clap::builder::BoolishValueParser::new())]
    pub controller: bool,

    /// Serve the CSI Node service (attach, format and mount on this host).
    #[arg(long, env = "RDS_CSI_NODE", value_parser = clap::builder::BoolishValueParser::new())]
    pub node: bool,

    #[command(flatten)]
    pub rds: RdsArgs,

    /// Default NVMe/TCP address of the RDS storage network (defaults to `--rds-address`).
    #[arg(long, env = "RDS_CSI_NVME_ADDRESS")]
    pub nvme_address: Option<String>,

    /// Default NVMe/TCP port of the RDS.
    #[arg(long, default_value_t = 4420, env = "RDS_CSI_NVME_PORT")]
    pub nvme_port: u16,

    /// How the controller sends its changes (create, expand, delete, fences, snapshots) to the
    /// RDS: `auto` as one RouterOS script each (check, change and read back in one exec) when
    /// the RDS passes a read-only probe at start, else command by command; `off` always
    /// command by command.
    #[arg(long, value_enum, default_value_t = RdsScripting::Auto, env = "RDS_CSI_RDS_SCRIPTING")]
    pub rds_scripting: RdsScripting,

    /// Storage-side fencing (controller): volumes of StorageClasses with `nvmeFencing: "true"`
    /// let only the nodes they are published to connect, through the disk's
    /// `nvme-tcp-server-allow-host-name`. Off by default until confirmed on hardware.
    #[arg(long, env = "RDS_CSI_NVME_FENCING", value_parser = clap::builder::BoolishValueParser::new())]
    pub nvme_fencing: bool,

    /// The cluster's fence key (a key of the driver's Secret, at least 32 bytes), shared by
    /// the controller and every node: fenced volumes' host identities and their "closed" value
    /// are derived from it, so no host can compute them from node names. Required with
    /// --nvme-fencing; a node reads it when present and then stages fenced volumes.
    #[arg(
        long,
        default_value = "/etc/rds-csi/fence/key",
        env = "RDS_CSI_FENCE_KEY_FILE"
    )]
    pub fence_key_file: PathBuf,

    /// How the node attaches volumes.
    #[arg(long, value_enum, default_value_t = ConnectorKind::NvmeTcp, env = "RDS_CSI_CONNECTOR")]
    pub connector: ConnectorKind,

    /// With `--connector loop`: the directory that holds the RDS's files (mock-rds's `--data-dir`).
    #[arg(long, env = "RDS_CSI_LOOP_ROOT", required_if_eq("connector", "loop"))]
    pub loop_root: Option<PathBuf>,

    /// Kubelet's root directory. Paths sent by the CO must lie under it; an empty value lifts
    /// that restriction (tests).
    #[arg(long, default_value = "/var/lib/kubelet", env = "RDS_CSI_KUBELET_DIR")]
    pub kubelet_dir: String,

    /// Register with kubelet without node-driver-registrar: the CSI socket's path as kubelet
    /// sees it on the host (the registrar's flag of the same name). The node plugin then serves
    /// kubelet's plugin registration in --plugin-registration-dir and removes it on shutdown.
    #[arg(long, env = "RDS_CSI_KUBELET_REGISTRATION_PATH")]
    pub kubelet_registration_path: Option<PathBuf>,

    /// kubelet's plugin registry, for --kubelet-registration-path.
    /// Default: `<kubelet-dir>/plugins_registry`.
    #[arg(long, env = "RDS_CSI_PLUGIN_REGISTRATION_DIR")]
    pub plugin_registration_dir: Option<PathBuf>,

    /// Where the node keeps its per-volume records (must survive restarts of the driver pod).
    /// Default: `<kubelet-dir>/plugins/<driver-name>/volumes`.
    #[arg(long, env = "RDS_CSI_NODE_STATE_DIR")]
    pub node_state_dir: Option<PathBuf>,

    /// NQN prefix of the volumes this driver manages. The node connects and disconnects only
    /// NQNs made of this prefix and a volume ID (`[a-z0-9-]{1,64}`), never others.
    #[arg(
        long,
        default_value = "nqn.2000-02.com.mikrotik:",
        env = "RDS_CSI_MANAGED_NQN_PREFIX"
    )]
    pub managed_nqn_prefix: String,

    /// Maximum number of volumes on this node reported to Kubernetes (0: no limit).
    #[arg(long, default_value_t = 0, env = "RDS_CSI_MAX_VOLUMES_PER_NODE")]
    pub max_volumes_per_node: i64,

    /// Default NVMe `ctrl_loss_tmo` in seconds (-1: reconnect forever, 0: the kernel's
    /// default); the volume context key `ctrlLossTmo` overrides it.
    #[arg(
        long,
        default_value_t = crate::node::connector::nvme::DEFAULT_CTRL_LOSS_TMO,
        allow_negative_numbers = true,
        env = "RDS_CSI_NVME_CTRL_LOSS_TMO"
    )]
    pub nvme_ctrl_loss_tmo: i32,

    /// Default NVMe `reconnect_delay` in seconds (volume context `reconnectDelay`; 0: the
    /// kernel's default).
    #[arg(long, default_value_t = crate::node::connector::nvme::DEFAULT_RECONNECT_DELAY, env = "RDS_CSI_NVME_RECONNECT_DELAY")]
    pub nvme_reconnect_delay: u32,

    /// Default NVMe `keep_alive_tmo` in seconds (volume context `keepAliveTmo`; 0: the
    /// kernel's default).
    #[arg(long, default_value_t = crate::node::connector::nvme::DEFAULT_KEEP_ALIVE_TMO, env = "RDS_CSI_NVME_KEEP_ALIVE_TMO")]
    pub nvme_keep_alive_tmo: u32,

    /// The host's NVMe host NQN file (mount the host's `/etc/nvme`); when it is missing, a host
    /// NQN is derived from `--node-id`.
    #[arg(
        long,
        default_value = "/etc/nvme/hostnqn",
        env = "RDS_CSI_NVME_HOSTNQN_FILE"
    )]
    pub nvme_hostnqn_file: PathBuf,

    /// The nvme-cli executable.
    #[arg(long, default_value = "nvme", env = "RDS_CSI_NVME_CLI")]
    pub nvme_cli: PathBuf,

    /// Where sysfs is mounted.
    #[arg(long, default_value = "/sys", env = "RDS_CSI_SYSFS_ROOT")]
    pub sysfs_root: PathBuf,

    /// Upper bound of one node operation (connect and wait for the device, mkfs...): a
    /// duration (`2m`) or a number of seconds.
    #[arg(long, default_value = "120s", env = "RDS_CSI_NODE_OPERATION_TIMEOUT", value_parser = parse_seconds_or_duration)]
    pub node_operation_timeout: Duration,

    /// Kubernetes integration of the controller (attachments, reconcilers, leader election).
    #[command(flatten)]
    pub kube: KubeArgs,

    /// Address of the Prometheus metrics and health endpoint, e.g. `:9809` (this pod's IP, see
    /// --pod-ip, else loopback) or `0.0.0.0:9809`; empty disables it.
    #[arg(long, default_value = ":9809", env = "RDS_CSI_METRICS_ADDRESS")]
    pub metrics_address: String,

    /// This pod's IP (from the downward API, `status.podIP`): where `--metrics-address :PORT`
    /// listens, so a node plugin on the host network is not reachable on every interface.
    #[arg(long, env = "RDS_CSI_POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
}

impl ServeArgs {
    /// Checks that flags which only make sense together were given together.
    pub fn validate(&self) -> Result<(), String> {
        if !self.controller && !self.node {
            return Err("nothing to serve: pass --controller, --node or both".into());
        }
        if !self.node && self.kubelet_registration_path.is_some() {
            return Err("--kubelet-registration-path needs --node".into());
        }
        if self.node && self.node_id.as_deref().is_none_or(str::is_empty) {
            return Err("--node-id is required with --node".into());
        }
        if self.controller {
            self.rds.validate()?;
        }
        if self.node {
            let p = &self.managed_nqn_prefix;
            if !p.starts_with("nqn.") || !p.contains(':') || p.len() > 200 {
                return Err(format!(
                    "--managed-nqn-prefix `{p}` must start with `nqn.` and contain `:`"
                ));
            }
            // The Go driver's CSI_MANAGED_NQN_PREFIX included the ID's `pvc-`; here the prefix
            // is followed by a whole volume ID, so that value would match no volume at all.
            if p.ends_with("pvc-") || p.ends_with("vol-") {
                return Err(format!(
                    "--managed-nqn-prefix `{p}` ends in a volume ID prefix (the Go driver's \
                     CSI_MANAGED_NQN_PREFIX did); it is followed by the whole volume ID here: use \
                     `{}`",
                    crate::node::DEFAULT_MANAGED_NQN_PREFIX
                ));
            }
            if !self.kubelet_dir.is_empty() && !self.kubelet_dir.starts_with('/') {
                return Err("--kubelet-dir must be an absolute path (or empty)".into());
            }
            if self.kubelet_dir.is_empty() && self.node_state_dir.is_none() {
                return Err("--node-state-dir is required when --kubelet-dir is empty".into());
            }
            if self
                .kubelet_registration_path
                .as_ref()
                .is_some_and(|p| !p.is_absolute())
            {
                return Err("--kubelet-registration-path must be an absolute path".into());
            }
            if self
                .plugin_registration_dir
                .as_ref()
                .is_some_and(|p| !p.is_absolute())
            {
                return Err("--plugin-registration-dir must be an absolute path".into());
            }
            if self.kubelet_registration_path.is_some()
                && self.kubelet_dir.is_empty()
                && self.plugin_registration_dir.is_none()
            {
                return Err(
                    "--plugin-registration-dir is required with --kubelet-registration-path when --kubelet-dir is empty"
                        .into(),
                );
            }
            if self.max_volumes_per_node < 0 {
                return Err("--max-volumes-per-node must not be negative".into());
            }
            if self.nvme_ctrl_loss_tmo < -1 {
                return Err("--nvme-ctrl-loss-tmo must be -1 or more".into());
            }
            if self.node_operation_timeout.is_zero() {
                return Err("--node-operation-timeout must be positive".into());
            }
        }
        if self.driver_name.is_empty() {
            return Err("--driver-name must not be empty".into());
        }
        if !self.metrics_address.is_empty() {
            metrics::parse_listen_address(&self.metrics_address, self.pod_ip)
                .map_err(|e| format!("--metrics-address: {e}"))?;
        }
        Ok(())
    }
}

/// Kubernetes flags of `rds-csi serve` (names as the Go driver's).
#[derive(Debug, Clone, Args)]
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
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration, env = "RDS_CSI_ATTACHMENT_RECONCILE_INTERVAL")]
    pub attachment_reconcile_interval: Duration,

    /// How long two nodes may hold an RWX block volume during a live migration; the volume
    /// context key `migrationTimeoutSeconds` overrides it.
    #[arg(long, default_value = "5m", value_parser = parse_migration_timeout, env = "RDS_CSI_MIGRATION_TIMEOUT")]
    pub migration_timeout: Duration,

    /// Periodically compare the RDS with the cluster's PVs and VolumeSnapshotContents.
    #[arg(long, env = "RDS_CSI_ENABLE_ORPHAN_RECONCILER", value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_orphan_reconciler: bool,

    #[arg(long, default_value = "1h", value_parser = parse_positive_duration, env = "RDS_CSI_ORPHAN_CHECK_INTERVAL")]
    pub orphan_check_interval: Duration,

    /// Files and volumes younger than this are never orphans.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "RDS_CSI_ORPHAN_GRACE_PERIOD")]
    pub orphan_grace_period: Duration,

    /// Only report orphans; `--orphan-dry-run=false` deletes them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", env = "RDS_CSI_ORPHAN_DRY_RUN",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub orphan_dry_run: bool,

    /// Run the reconcilers only on the replica holding the Lease.
    #[arg(long, env = "RDS_CSI_LEADER_ELECTION", value_parser = clap::builder::BoolishValueParser::new())]
    pub leader_election: bool,

    /// Namespace of the Lease (default: the pod's namespace / the kubeconfig's).
    #[arg(long, env = "RDS_CSI_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    #[arg(long, default_value = leader::DEFAULT_LEASE_NAME, env = "RDS_CSI_LEADER_ELECTION_LEASE_NAME")]
    pub leader_election_lease_name: String,
}

/// `--migration-timeout`: a duration within the attachment table's range.
fn parse_migration_timeout(s: &str) -> Result<Duration, String> {
    use crate::kube::attachments::{MAX_MIGRATION_TIMEOUT, MIN_MIGRATION_TIMEOUT};
    let timeout = parse_duration(s)?;
    if (MIN_MIGRATION_TIMEOUT..=MAX_MIGRATION_TIMEOUT).contains(&timeout) {
        Ok(timeout)
    } else {
        Err(format!(
            "`{s}` is out of range ({}s..={}s)",
            MIN_MIGRATION_TIMEOUT.as_secs(),
            MAX_MIGRATION_TIMEOUT.as_secs()
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RdsScripting {
    Auto,
    Off,
}
