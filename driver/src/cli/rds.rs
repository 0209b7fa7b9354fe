//! The SSH flags for reaching the RDS, shared by `serve` and the operator commands.

use std::path::PathBuf;

use clap::Args;

use crate::rds::ssh::HostKeySource;

/// How to reach the RDS over SSH; shared by `serve` and the operator commands.
#[derive(Debug, Clone, Args)]
pub struct RdsArgs {
    /// RDS management address for SSH (host name or IP).
    #[arg(long, env = "RDS_CSI_RDS_ADDRESS")]
    pub rds_address: Option<String>,

    /// RDS SSH port.
    #[arg(long, default_value_t = 22, env = "RDS_CSI_RDS_PORT", value_parser = clap::value_parser!(u16).range(1..))]
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
        value_parser = clap::builder::BoolishValueParser::new(),
        group = "host_key_check"
    )]
    pub rds_insecure_skip_verify: bool,

    /// Parallel SSH connections to the RDS.
    #[arg(long, default_value_t = 1, env = "RDS_CSI_RDS_CONNECTIONS", value_parser = clap::value_parser!(u16).range(1..=16))]
    pub rds_connections: u16,

    /// Most RouterOS commands in flight at once (RouterOS chokes on bursts of sessions).
    #[arg(long, default_value_t = 8, env = "RDS_CSI_RDS_MAX_CHANNELS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub rds_max_channels: u16,

    /// Deadline for SSH connect, handshake and login: a duration (`10s`, `1m`) or a number of
    /// seconds; 1s to 5m.
    #[arg(long, default_value = "10s", env = "RDS_CSI_RDS_CONNECT_TIMEOUT", value_parser = parse_connect_timeout)]
    pub rds_connect_timeout: std::time::Duration,

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
            return Err(format!(
                "the RDS host key must be verified: pass --rds-host-key SHA256:FINGERPRINT \
                 (or a public key line, or a file holding either) or --rds-known-hosts FILE \
                 (or, insecurely, --rds-insecure-skip-verify). To read the fingerprint from a \
                 network you trust: ssh-keyscan -p {} {} | ssh-keygen -lf -",
                self.rds_port,
                self.rds_address.as_deref().unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// `--rds-connect-timeout`: 1 s to 5 min.
fn parse_connect_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = crate::duration::parse_seconds_or_duration(s)?;
    if !(1..=300).contains(&d.as_secs()) {
        return Err(format!("`{s}` is out of range (1s..=5m)"));
    }
    Ok(d)
}
