//! The command-line options of the operator commands (`doctor`, `volumes`, `orphans`,
//! `migrate-check`, `validate`) and their output format, turned into each command's own options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{RdsArgs, DEFAULT_DRIVER_NAME};
use crate::duration::{parse_duration, parse_positive_duration};
use crate::operator::doctor::DoctorOptions;
use crate::operator::migrate_check::MigrateCheckOptions;
use crate::operator::orphans::OrphansOptions;
use crate::operator::validate::ValidateOptions;
use crate::operator::volumes::VolumesOptions;
use crate::operator::OutputFormat;

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub rds: RdsArgs,

    /// Write the raw output of every command here, in the layout of `fixtures/routeros/`
    /// (ready to be added as `fixtures/routeros/hardware/<routeros-version>/`).
    #[arg(long)]
    pub bundle: Option<PathBuf>,

    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ToolArgs {
    #[command(flatten)]
    pub rds: RdsArgs,

    #[command(flatten)]
    pub report: ReportArgs,
}

/// How an operator command reports, and how long it may take.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Report format (`-o json`, as kubectl).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputArg::Text)]
    pub output: OutputArg,

    /// Give up after this long in all, retries included (`30s`, `2m`, `1h`). Default: 30s for
    /// doctor, 2m for volumes, orphans and migrate-check, 15m for validate (which still removes
    /// what it made after the time is up).
    #[arg(long, env = "RDS_CSI_TIMEOUT", value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,
}

impl ReportArgs {
    fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default)
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// How operator commands print their result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
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

    #[command(flatten)]
    pub report: ReportArgs,
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

    #[command(flatten)]
    pub report: ReportArgs,

    /// Kubeconfig file: with it, volume disks that no PersistentVolume of `--driver-name`
    /// references are reported too, and files a PV or VolumeSnapshotContent references are not.
    #[arg(long, env = "RDS_CSI_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// CSI driver name of the PVs and VolumeSnapshotContents to compare with (with --kubeconfig).
    #[arg(long, default_value = DEFAULT_DRIVER_NAME, env = "RDS_CSI_DRIVER_NAME")]
    pub driver_name: String,
}

impl From<OutputArg> for OutputFormat {
    fn from(arg: OutputArg) -> Self {
        match arg {
            OutputArg::Text => Self::Text,
            OutputArg::Json => Self::Json,
        }
    }
}

impl ValidateArgs {
    pub fn options(self) -> ValidateOptions {
        ValidateOptions {
            rds: self.rds.target(self.report.timeout_or(15 * MINUTE)),
            bundle: self.bundle,
            output: self.report.output.into(),
        }
    }
}

impl ToolArgs {
    pub fn doctor_options(self) -> DoctorOptions {
        DoctorOptions {
            rds: self.rds.target(self.report.timeout_or(MINUTE / 2)),
            output: self.report.output.into(),
        }
    }

    pub fn volumes_options(self) -> VolumesOptions {
        VolumesOptions {
            rds: self.rds.target(self.report.timeout_or(2 * MINUTE)),
            output: self.report.output.into(),
        }
    }
}

impl MigrateCheckArgs {
    pub fn options(self) -> MigrateCheckOptions {
        MigrateCheckOptions {
            rds: self.rds.target(self.report.timeout_or(2 * MINUTE)),
            kubeconfig: self.kubeconfig,
            driver_name: self.driver_name,
            managed_nqn_prefix: self.managed_nqn_prefix,
            output: self.report.output.into(),
        }
    }
}

impl OrphansArgs {
    pub fn options(self) -> OrphansOptions {
        OrphansOptions {
            rds: self.rds.target(self.report.timeout_or(2 * MINUTE)),
            delete: self.delete,
            grace_period: self.grace_period,
            output: self.report.output.into(),
            kubeconfig: self.kubeconfig,
            driver_name: self.driver_name,
        }
    }
}
