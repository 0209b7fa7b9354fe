//! The `rds-csi` command line. Every flag can also be set from an `RDS_CSI_*` environment variable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::parse_duration;
use crate::kube::leader;
use crate::logging::{self, LogFormat};
use crate::metrics;
use crate::rds::ssh::HostKeySource;

/// The CSI driver name the earlier Go driver registered; existing PVs carry it.
pub const DEFAULT_DRIVER_NAME: &str = "rds.csi.srvlab.io";

#[derive(Debug, Parser)]
#[command(
    name = "rds-csi",
    version,
    about = "Kubernetes CSI driver for the MikroTik ROSE Data Server (RDS)",
    long_about = "Kubernetes CSI driver for the MikroTik ROSE Data Server (RDS).\n\n\
        The controller manages file-backed NVMe/TCP disks on the RDS by running RouterOS \
        commands over SSH; the node connects to them over NVMe/TCP, formats and mounts them."
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RDS_CSI_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax, e.g. `info` or `rds_csi=debug,info`.
    #[arg(long, global = true, default_value = "info", env = "RDS_CSI_LOG_LEVEL")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Serve the CSI gRPC services (Identity, and Controller and/or Node) on a Unix socket.
    Serve(ServeArgs),
    /// Report what the driver left on the RDS (files without disks, disks without files);
    /// with --delete, remove it.
    Orphans(OrphansArgs),
    /// Check that the driver can work with an RDS: host key, login, every read-only command it
    /// needs, capacity. Prints a pass/fail table with the fix for each failure.
    Doctor(ToolArgs),
    /// List the volumes and snapshots this driver manages on the RDS.
    Volumes(ToolArgs),
    /// Before replacing the earlier Go driver: read the cluster's PVs, VolumeSnapshotContents
    /// and StorageClasses of --driver-name and the RDS, and report which will work as they are
    /// and what needs action (exit status 1 when anything does). Changes nothing.
    MigrateCheck(MigrateCheckArgs),
    /// Settle, on a real RDS, the RouterOS behaviours the driver cannot know (wrapping, `print
    /// terse`, failure exit status and texts, session limits, clock, copies, directories, regex
    /// anchors, resizes, allowed hosts). Works only in a fresh scratch directory under the base
    /// path and removes everything it made, also after a failure or Ctrl-C. Exit status 1 when
    /// the RDS did something the driver does not handle, or something could not be removed.
    Validate(ValidateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub rds: RdsArgs,

    /// Write the raw output of every command here, in the layout of `fixtures/routeros/`
    /// (ready to be added as `fixtures/routeros/hardware/<routeros-version>/`).
    #[arg(long)]
    pub bundle: Option<PathBuf>,

    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ToolArgs {
    #[command(flatten)]
    pub rds: RdsArgs,

    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// How operator commands print their result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateCheckArgs {
    #[command(flatten)]
    pub rds: RdsArgs,

    /// Kubeconfig file of the cluster to check.
    #[arg(long, env = "RDS_CSI_KUBECONFIG")]
    pub kubeconfig: PathBuf,

    /// CSI driver name of the PVs, VolumeSnapshotContents and StorageClasses to check.
    #[arg(long, default_value = DEFAULT_DRIVER_NAME, env = "RDS_CSI_DRIVER_NAME")]
    pub driver_name: String,

    /// The node's `--managed-nqn-prefix` (the Go driver's `CSI_MANAGED_NQN_PREFIX` ended in
    /// `pvc-`; this driver's prefix does not).
    #[arg(
        long,
        default_value = crate::node::DEFAULT_MANAGED_NQN_PREFIX,
        env = "RDS_CSI_MANAGED_NQN_PREFIX"
    )]
    pub managed_nqn_prefix: String,

    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct OrphansArgs {
    #[command(flatten)]
    pub rds: RdsArgs,

    /// Remove the orphans found (default: only report them).
    #[arg(long)]
    pub delete: bool,

    /// Leave files younger than this alone (they may belong to a create in progress), e.g.
    /// `5m`, `1h`, `0s`. A file must be this old by the RDS's own clock and by ours (RouterOS
    /// prints local times; the offset comes from `/system clock print`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub grace_period: Duration,

    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Kubeconfig file: with it, volume disks that no PersistentVolume of `--driver-name`
    /// references are reported too, and files a PV or VolumeSnapshotContent references are not.
    #[arg(long, env = "RDS_CSI_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// CSI driver name of the PVs and VolumeSnapshotContents to compare with (with --kubeconfig).
    #[arg(long, default_value = DEFAULT_DRIVER_NAME, env = "RDS_CSI_DRIVER_NAME")]
    pub driver_name: String,
}

/// How the node reaches a volume's block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectorKind {
    /// NVMe over TCP to the RDS (production).
    NvmeTcp,
    /// A loop device over the volume's backing file under `--loop-root` (development and CI,
    /// against mock-rds's data directory).
    Loop,
}

/// How to reach the RDS over SSH; shared by `serve` and the operator commands.
#[derive(Debug, Clone, Args)]
pub struct RdsArgs {
    /// RDS management address for SSH (host name or IP).
    #[arg(long, env = "RDS_CSI_RDS_ADDRESS")]
    pub rds_address: Option<String>,

    /// RDS SSH port.
    #[arg(long, default_value_t = 22, env = "RDS_CSI_RDS_PORT")]
    pub rds_port: u16,

    /// RDS SSH user.
    #[arg(long, default_value = "admin", env = "RDS_CSI_RDS_USER")]
    pub rds_user: String,

    /// SSH private key file (ed25519, RSA or ECDSA; OpenSSH or PEM; no passphrase).
    #[arg(
        long,
        default_value = "/etc/rds-csi/ssh-key/id_rsa",
        env = "RDS_CSI_RDS_KEY_FILE"
    )]
    pub rds_key_file: PathBuf,

    /// The RDS's SSH host key to pin: its SHA256 fingerprint (`SHA256:...`), its public key line
    /// (`ssh-ed25519 AAAA...`), or a file holding either (or a known_hosts line).
    #[arg(long, env = "RDS_CSI_RDS_HOST_KEY", group = "host_key_check", value_parser = HostKeySource::parse)]
    pub rds_host_key: Option<HostKeySource>,

    /// known_hosts file to verify the RDS's SSH host key against.
    #[arg(long, env = "RDS_CSI_RDS_KNOWN_HOSTS", group = "host_key_check")]
    pub rds_known_hosts: Option<PathBuf>,

    /// Accept any SSH host key. Insecure: anyone on the path can impersonate the RDS.
    #[arg(
        long,
        env = "RDS_CSI_RDS_INSECURE_SKIP_VERIFY",
        group = "host_key_check"
    )]
    pub rds_insecure_skip_verify: bool,

    /// Parallel SSH connections to the RDS.
    #[arg(long, default_value_t = 1, env = "RDS_CSI_RDS_CONNECTIONS", value_parser = clap::value_parser!(u16).range(1..=16))]
    pub rds_connections: u16,

    /// Most RouterOS commands in flight at once (RouterOS chokes on bursts of sessions).
    #[arg(long, default_value_t = 8, env = "RDS_CSI_RDS_MAX_CHANNELS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub rds_max_channels: u16,

    /// Deadline for SSH connect, handshake and login, in seconds.
    #[arg(long, default_value_t = 10, env = "RDS_CSI_RDS_CONNECT_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..=300))]
    pub rds_connect_timeout: u64,

    /// Directories on the RDS under which the driver's volume and snapshot files live,
    /// comma-separated or repeated; the first takes new volumes whose StorageClass names no
    /// `volumePath`. Name every directory an earlier Go driver StorageClass or
    /// VolumeSnapshotClass used (`rds-csi migrate-check` lists them).
    #[arg(
        long,
        default_value = "/storage-pool/metal-csi",
        value_delimiter = ',',
        env = "RDS_CSI_RDS_VOLUME_BASE_PATH"
    )]
    pub rds_volume_base_path: Vec<String>,
}

impl RdsArgs {
    /// Checks the flags every command that talks to the RDS needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.rds_address.as_deref().is_none_or(str::is_empty) {
            return Err("--rds-address is required".into());
        }
        if self.rds_host_key.is_none()
            && self.rds_known_hosts.is_none()
            && !self.rds_insecure_skip_verify
        {
            return Err(
                "the RDS host key must be verified: pass --rds-host-key SHA256:FINGERPRINT \
                 (or a public key line, or a file holding either) or --rds-known-hosts FILE \
                 (or, insecurely, --rds-insecure-skip-verify)"
                    .into(),
            );
        }
        Ok(())
    }
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
    #[arg(long, env = "RDS_CSI_CONTROLLER")]
    pub controller: bool,

    /// Serve the CSI Node service (attach, format and mount on this host).
    #[arg(long, env = "RDS_CSI_NODE")]
    pub node: bool,

    #[command(flatten)]
    pub rds: RdsArgs,

    /// Default NVMe/TCP address of the RDS storage network (defaults to `--rds-address`).
    #[arg(long, env = "RDS_CSI_NVME_ADDRESS")]
    pub nvme_address: Option<String>,

    /// Default NVMe/TCP port of the RDS.
    #[arg(long, default_value_t = 4420, env = "RDS_CSI_NVME_PORT")]
    pub nvme_port: u16,

    /// Storage-side fencing (controller): volumes of StorageClasses with `nvmeFencing: "true"`
    /// let only the nodes they are published to connect, through the disk's
    /// `nvme-tcp-server-allow-host-name`. Off by default until confirmed on hardware.
    #[arg(long, env = "RDS_CSI_NVME_FENCING")]
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

    /// Upper bound in seconds of one node operation (connect and wait for the device, mkfs...).
    #[arg(long, default_value_t = 120, env = "RDS_CSI_NODE_OPERATION_TIMEOUT")]
    pub node_operation_timeout: u64,

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
            if self.max_volumes_per_node < 0 {
                return Err("--max-volumes-per-node must not be negative".into());
            }
            if self.nvme_ctrl_loss_tmo < -1 {
                return Err("--nvme-ctrl-loss-tmo must be -1 or more".into());
            }
            if self.node_operation_timeout == 0 {
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
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "RDS_CSI_ATTACHMENT_RECONCILE_INTERVAL")]
    pub attachment_reconcile_interval: Duration,

    /// How long two nodes may hold an RWX block volume during a live migration; the volume
    /// context key `migrationTimeoutSeconds` overrides it.
    #[arg(long, default_value = "5m", value_parser = parse_migration_timeout, env = "RDS_CSI_MIGRATION_TIMEOUT")]
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

mod config;

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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        eprintln!("rds-csi: {e}");
        return ExitCode::from(2);
    }
    let (name, checked) = match &cli.command {
        Command::Serve(args) => ("serve", args.validate()),
        Command::Orphans(args) => ("orphans", args.rds.validate()),
        Command::Doctor(args) => ("doctor", args.rds.validate()),
        Command::Volumes(args) => ("volumes", args.rds.validate()),
        Command::MigrateCheck(args) => ("migrate-check", args.rds.validate()),
        Command::Validate(args) => ("validate", args.rds.validate()),
    };
    if let Err(e) = checked {
        eprintln!("rds-csi {name}: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rds-csi: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => crate::server::serve(args.config()?).await,
            Command::Orphans(args) => crate::tools::orphans(args).await,
            Command::Doctor(args) => crate::tools::doctor(args).await,
            Command::Volumes(args) => crate::tools::volumes(args).await,
            Command::MigrateCheck(args) => crate::migrate::run(args).await,
            Command::Validate(args) => crate::tools::validate(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rds-csi {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube;
    use crate::node::ConnectorConfig;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn several_base_paths_comma_separated_or_repeated() {
        let bases = |extra: &[&str]| {
            let mut argv = vec!["rds-csi", "volumes", "--rds-address", "x"];
            argv.extend_from_slice(extra);
            let Command::Volumes(args) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!()
            };
            args.rds
                .volume_base_paths()
                .map(|b| b.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(bases(&[]).unwrap(), ["/storage-pool/metal-csi"]);
        let two = ["/storage-pool/metal-csi", "/storage-pool/kubevirt"];
        assert_eq!(
            bases(&[
                "--rds-volume-base-path",
                "/storage-pool/metal-csi,/storage-pool/kubevirt"
            ])
            .unwrap(),
            two
        );
        assert_eq!(
            bases(&[
                "--rds-volume-base-path",
                "/storage-pool/metal-csi",
                "--rds-volume-base-path",
                "/storage-pool/kubevirt"
            ])
            .unwrap(),
            two
        );
        let e = bases(&["--rds-volume-base-path", "/ok,relative"]).unwrap_err();
        assert!(format!("{e:#}").contains("relative"), "{e:#}");
    }

    /// The Go driver's Secret (`rds-private-key`, `rds-host-key`) works as it is: its host key
    /// value, a bare `ssh-... AAAA...` line, is a pin `--rds-host-key` takes from a file.
    #[test]
    fn the_go_driver_secret_host_key_is_accepted() {
        let path = format!(
            "{}/../fixtures/go-driver/node-daemonset.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let secret: serde_yaml::Value =
            serde_yaml::from_str(text.split("\n---").next().unwrap()).unwrap();
        assert_eq!(secret["metadata"]["name"], "rds-csi-secret");
        let host_key = secret["stringData"]["rds-host-key"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rds-host-key");
        std::fs::write(&file, host_key).unwrap();
        let pin = HostKeySource::parse(file.to_str().unwrap()).unwrap();
        pin.policy().unwrap();
        assert!(secret["stringData"]["rds-private-key"].is_string());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn host_key_options_are_mutually_exclusive() {
        let err = Cli::try_parse_from([
            "rds-csi",
            "serve",
            "--controller",
            "--rds-host-key",
            "/k",
            "--rds-insecure-skip-verify",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_host_key_of_no_known_form_is_refused_naming_the_flag_and_the_forms() {
        let err = Cli::try_parse_from([
            "rds-csi",
            "doctor",
            "--rds-host-key",
            "AAAAC3NzaC1lZDI1NTE5",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let text = err.to_string();
        assert!(text.contains("--rds-host-key"), "{text}");
        assert!(
            text.contains("SHA256:") && text.contains("public key line"),
            "{text}"
        );
        assert!(!text.contains("No such file"), "{text}");
    }

    #[test]
    fn node_requires_node_id() {
        let cli = Cli::try_parse_from(["rds-csi", "serve", "--node"]).unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(
            args.validate().unwrap_err(),
            "--node-id is required with --node"
        );
    }

    #[test]
    fn node_flags_parse_and_validate() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["rds-csi", "serve", "--node", "--node-id", "n1"];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!()
            };
            args
        };
        let args = parse(&[]);
        assert_eq!(args.kubelet_dir, "/var/lib/kubelet");
        assert_eq!(args.managed_nqn_prefix, "nqn.2000-02.com.mikrotik:");
        // Reconnect forever, as the Go driver settled on after hardware tests (README).
        assert_eq!(args.nvme_ctrl_loss_tmo, -1);
        args.validate().unwrap();
        // The Go driver's node prefix, carried over, is refused with the fix.
        let e = parse(&["--managed-nqn-prefix", "nqn.2000-02.com.mikrotik:pvc-"])
            .validate()
            .unwrap_err();
        assert!(e.contains("`nqn.2000-02.com.mikrotik:`"), "{e}");
        let args = parse(&["--nvme-ctrl-loss-tmo", "0", "--kubelet-dir", ""]);
        assert_eq!(args.nvme_ctrl_loss_tmo, 0);
        assert!(args.validate().unwrap_err().contains("--node-state-dir"));
        parse(&["--kubelet-dir", "", "--node-state-dir", "/s"])
            .validate()
            .unwrap();
        assert!(parse(&["--managed-nqn-prefix", "pvc-"])
            .validate()
            .unwrap_err()
            .contains("--managed-nqn-prefix"));
        assert!(parse(&["--kubelet-dir", "rel"]).validate().is_err());
    }

    fn serve_args(extra: &[&str]) -> ServeArgs {
        let argv = ["rds-csi", "serve"].iter().chain(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        args
    }

    #[test]
    fn kube_flags_default_to_the_go_drivers_values() {
        let k = serve_args(&[]).kube;
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
        assert_eq!(
            k.config(),
            kube::Config::default(),
            "the flag defaults and kube::Config's agree"
        );

        let k = serve_args(&[
            "--orphan-dry-run=false",
            "--migration-timeout",
            "90s",
            "--enable-orphan-reconciler",
            "--leader-election",
            "--leader-election-namespace",
            "csi",
        ])
        .kube
        .config();
        assert!(!k.orphan_dry_run);
        assert_eq!(k.migration_timeout, Duration::from_secs(90));
        assert!(k.enable_orphan_reconciler && k.leader_election);
        assert_eq!(k.leader_election_namespace.as_deref(), Some("csi"));
        assert!(serve_args(&["--orphan-dry-run"]).kube.orphan_dry_run);
        assert!(Cli::try_parse_from(["t", "serve", "--orphan-grace-period", "5x"]).is_err());
        // 0 would mark every migration timed out at once.
        for bad in ["0s", "29s", "25h"] {
            assert!(
                Cli::try_parse_from(["t", "serve", "--migration-timeout", bad]).is_err(),
                "--migration-timeout {bad}"
            );
        }
    }

    #[test]
    fn node_flags_build_the_node_config() {
        let args = serve_args(&[
            "--node",
            "--node-id",
            "n1",
            "--rds-address",
            "10.0.0.1",
            "--nvme-ctrl-loss-tmo",
            "-1",
        ]);
        let config = args.node_config().unwrap();
        assert_eq!(config.service.node_id, "n1");
        assert_eq!(
            config.service.state_dir,
            Path::new("/var/lib/kubelet/plugins/rds.csi.srvlab.io/volumes")
        );
        let ConnectorConfig::NvmeTcp(nvme) = config.connector else {
            panic!("nvme-tcp is the default connector")
        };
        assert_eq!(nvme.ctrl_loss_tmo, -1);
        assert_eq!(nvme.default_address, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(nvme.default_port, 4420);

        let args = serve_args(&[
            "--node",
            "--node-id",
            "n1",
            "--connector",
            "loop",
            "--loop-root",
            "/data",
            "--kubelet-dir",
            "",
            "--node-state-dir",
            "/s",
        ]);
        let config = args.node_config().unwrap();
        assert_eq!(config.service.kubelet_dir, None);
        assert_eq!(config.service.state_dir, Path::new("/s"));
        assert_eq!(
            config.connector,
            ConnectorConfig::Loop {
                root: PathBuf::from("/data")
            }
        );
    }

    #[test]
    fn metrics_address_builds_the_metrics_config() {
        let listen = |extra: &[&str]| serve_args(extra).metrics_config().unwrap().listen;
        // `:PORT` is the pod's IP (the node plugin is on the host network), else loopback:
        // never every interface unless asked for.
        assert_eq!(listen(&[]), Some("127.0.0.1:9809".parse().unwrap()));
        assert_eq!(
            listen(&["--pod-ip", "10.1.2.3"]),
            Some("10.1.2.3:9809".parse().unwrap())
        );
        assert_eq!(
            listen(&["--pod-ip", "fd00::7", "--metrics-address", ":9810"]),
            Some("[fd00::7]:9810".parse().unwrap())
        );
        assert_eq!(
            listen(&["--pod-ip", "10.1.2.3", "--metrics-address", "0.0.0.0:9809"]),
            Some("0.0.0.0:9809".parse().unwrap())
        );
        assert_eq!(listen(&["--metrics-address", ""]), None);
        let err = serve_args(&["--metrics-address", "9809"])
            .metrics_config()
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("--metrics-address: "),
            "{err:#}"
        );
    }

    #[test]
    fn without_kubernetes_the_controller_knows_the_node_it_serves() {
        use crate::controller::publish::KnownNodes;
        let both = serve_args(&[
            "--controller",
            "--node",
            "--node-id",
            "n1",
            "--max-volumes-per-node",
            "3",
        ]);
        assert_eq!(
            both.known_nodes(),
            KnownNodes::Local {
                node_id: "n1".into(),
                max_volumes: 3
            }
        );
        let controller_only = serve_args(&["--controller", "--node-id", "n1"]);
        assert_eq!(controller_only.known_nodes(), KnownNodes::Any);
        // --help says what a controller without Kubernetes accepts.
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for phrase in [
            "only its own --node-id",
            "--max-volumes-per-node",
            "a controller-only process without Kubernetes accepts any node ID",
        ] {
            assert!(
                help.contains(phrase),
                "`{phrase}` not in serve --help:\n{help}"
            );
        }
    }

    #[test]
    fn loop_connector_requires_root() {
        let err =
            Cli::try_parse_from(["rds-csi", "serve", "--node", "--connector", "loop"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
