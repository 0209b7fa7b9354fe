//! The one place the parsed command line becomes the services' configurations: no service
//! reads flags.

use std::path::PathBuf;

use anyhow::Context;

use super::{ConnectorKind, KubeArgs, RdsArgs, ServeArgs};
use crate::controller::params::ParamDefaults;
use crate::controller::publish::KnownNodes;
use crate::controller::ControllerConfig;
use crate::fence_key::FenceKey;
use crate::node::{ConnectorConfig, NodeConfig, NvmeTcpConfig};
use crate::rds::ssh::load_private_key;
use crate::rds::{HostKeyPolicy, Port, RdsPath, SshConfig};
use crate::server::ControllerRole;
use crate::{endpoint, kube, metrics, node, server};

impl RdsArgs {
    /// How to reach the RDS, with the private key loaded and the host key pin resolved.
    pub fn ssh_config(&self) -> anyhow::Result<SshConfig> {
        let host = self
            .rds_address
            .clone()
            .context("--rds-address is required")?;
        let key = load_private_key(&self.rds_key_file).context("--rds-key-file")?;
        let policy = if let Some(pin) = &self.rds_host_key {
            pin.policy().context("--rds-host-key")?
        } else if let Some(path) = &self.rds_known_hosts {
            std::fs::metadata(path)
                .with_context(|| format!("--rds-known-hosts {}", path.display()))?;
            HostKeyPolicy::KnownHosts(path.clone())
        } else {
            tracing::warn!("--rds-insecure-skip-verify: the RDS host key will NOT be verified");
            HostKeyPolicy::InsecureSkipVerify
        };
        let mut config = SshConfig::new(host, self.rds_port, self.rds_user.clone(), key, policy);
        config.connections = usize::from(self.rds_connections);
        config.max_channels = usize::from(self.rds_max_channels);
        config.connect_timeout = self.rds_connect_timeout;
        Ok(config)
    }

    /// The base paths, the first one first; at least one.
    pub fn volume_base_paths(&self) -> anyhow::Result<Vec<RdsPath>> {
        let bases = self
            .rds_volume_base_path
            .iter()
            .map(|p| {
                RdsPath::new(p.as_str()).with_context(|| format!("--rds-volume-base-path {p}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!bases.is_empty(), "--rds-volume-base-path is required");
        Ok(bases)
    }

    /// The first base path: where new volumes go by default.
    pub fn volume_base_path(&self) -> anyhow::Result<RdsPath> {
        Ok(self.volume_base_paths()?.remove(0))
    }

    /// The RDS for an operator command, bad flags kept as errors for it to report.
    pub fn target(&self, timeout: std::time::Duration) -> crate::operator::RdsTarget {
        crate::operator::RdsTarget {
            timeout,
            ssh: self.ssh_config().map_err(|e| format!("{e:#}")),
            base_paths: self.volume_base_paths().map_err(|e| format!("{e:#}")),
            key_file: self.rds_key_file.clone(),
        }
    }
}

impl KubeArgs {
    pub fn config(&self) -> kube::Config {
        kube::Config {
            kubeconfig: self.kubeconfig.clone(),
            attachment_grace_period: self.attachment_grace_period,
            attachment_reconcile_interval: self.attachment_reconcile_interval,
            migration_timeout: self.migration_timeout,
            enable_orphan_reconciler: self.enable_orphan_reconciler,
            orphan_check_interval: self.orphan_check_interval,
            orphan_grace_period: self.orphan_grace_period,
            orphan_dry_run: self.orphan_dry_run,
            leader_election: self.leader_election,
            leader_election_namespace: self.leader_election_namespace.clone(),
            leader_election_lease_name: self.leader_election_lease_name.clone(),
            identity: None,
        }
    }
}

impl ServeArgs {
    /// What `serve` runs. Call `validate` first: this reads the SSH key files.
    pub fn config(&self) -> anyhow::Result<server::Config> {
        Ok(server::Config {
            socket: endpoint::socket_path(&self.endpoint)?,
            driver_name: self.driver_name.clone(),
            controller: self
                .controller
                .then(|| self.controller_role())
                .transpose()?,
            node: self.node.then(|| self.node_config()).transpose()?,
            kubelet_registration: self.kubelet_registration(),
            metrics: self.metrics_config()?,
        })
    }

    fn controller_role(&self) -> anyhow::Result<ControllerRole> {
        let nvme_address = match &self.nvme_address {
            Some(a) => Some(
                a.parse::<std::net::IpAddr>()
                    .context("--nvme-address must be an IP address")?
                    .to_string(),
            ),
            None => self
                .rds
                .rds_address
                .as_ref()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .map(|ip| ip.to_string()),
        };
        let defaults = ParamDefaults {
            base_paths: self.rds.volume_base_paths()?,
            nvme_address,
            nvme_port: Port::new(u32::from(self.nvme_port)).context("--nvme-port")?,
        };
        let mut service = ControllerConfig::new(defaults);
        service.known_nodes = self.known_nodes();
        if self.nvme_fencing {
            service.fencing = Some(
                FenceKey::from_file(&self.fence_key_file)
                    .context("--nvme-fencing needs the cluster's fence key (--fence-key-file)")?,
            );
        }
        Ok(ControllerRole {
            rds: self.rds.ssh_config()?,
            rds_scripts: self.rds_scripting == super::serve::RdsScripting::Auto,
            service,
            kube: self.kube.config(),
        })
    }

    /// Where the controller may publish when Kubernetes does not say: the node this process
    /// serves too, with its limit; for a controller-only process, any node.
    pub(super) fn known_nodes(&self) -> KnownNodes {
        match (&self.node_id, self.node) {
            (Some(node_id), true) => KnownNodes::Local {
                node_id: node_id.clone(),
                // Validated non-negative for --node.
                max_volumes: usize::try_from(self.max_volumes_per_node).unwrap_or_default(),
            },
            _ => KnownNodes::Any,
        }
    }

    /// `--kubelet-registration-path`: the registration socket in kubelet's plugin registry.
    fn kubelet_registration(&self) -> Option<crate::registration::Config> {
        let endpoint = self.kubelet_registration_path.clone()?;
        let registry = self
            .plugin_registration_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&self.kubelet_dir).join("plugins_registry"));
        Some(crate::registration::Config::new(
            &registry,
            &self.driver_name,
            endpoint,
        ))
    }

    pub fn node_config(&self) -> anyhow::Result<node::Config> {
        let node_id = self.node_id.clone().context("--node-id is required")?;
        let kubelet_dir = (!self.kubelet_dir.is_empty()).then(|| PathBuf::from(&self.kubelet_dir));
        let state_dir = match (&self.node_state_dir, &kubelet_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(k)) => k.join("plugins").join(&self.driver_name).join("volumes"),
            (None, None) => {
                anyhow::bail!("--node-state-dir is required when --kubelet-dir is empty")
            }
        };
        let connector = match self.connector {
            ConnectorKind::Loop => ConnectorConfig::Loop {
                root: self
                    .loop_root
                    .clone()
                    .context("--loop-root is required with --connector loop")?,
            },
            ConnectorKind::NvmeTcp => ConnectorConfig::NvmeTcp(NvmeTcpConfig {
                hostnqn_file: self.nvme_hostnqn_file.clone(),
                nvme_cli: self.nvme_cli.clone(),
                ctrl_loss_tmo: self.nvme_ctrl_loss_tmo,
                reconnect_delay: self.nvme_reconnect_delay,
                keep_alive_tmo: self.nvme_keep_alive_tmo,
                default_address: self
                    .nvme_address
                    .as_deref()
                    .or(self.rds.rds_address.as_deref())
                    .and_then(|a| a.parse().ok()),
                default_port: self.nvme_port,
                fence_key: self.node_fence_key()?,
            }),
        };
        Ok(node::Config {
            service: NodeConfig {
                node_id,
                kubelet_dir,
                state_dir,
                managed_nqn_prefix: self.managed_nqn_prefix.clone(),
                max_volumes_per_node: self.max_volumes_per_node,
                sys_root: self.sysfs_root.clone(),
                operation_timeout: self.node_operation_timeout,
            },
            connector,
        })
    }

    /// The fence key, for a node: absent is fine (fenced volumes then fail to stage, naming
    /// the file), present but unusable is an error at start.
    fn node_fence_key(&self) -> anyhow::Result<Option<FenceKey>> {
        if !self.fence_key_file.exists() {
            return Ok(None);
        }
        FenceKey::from_file(&self.fence_key_file)
            .map(Some)
            .context("--fence-key-file")
    }

    pub(super) fn metrics_config(&self) -> anyhow::Result<metrics::Config> {
        let listen = if self.metrics_address.is_empty() {
            None
        } else {
            Some(
                metrics::parse_listen_address(&self.metrics_address, self.pod_ip)
                    .map_err(anyhow::Error::msg)
                    .context("--metrics-address")?,
            )
        };
        Ok(metrics::Config { listen })
    }
}
