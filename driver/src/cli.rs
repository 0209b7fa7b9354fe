//! The `rds-csi` command line. Every flag can also be set from an `RDS_CSI_*` environment variable.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::{self, LogFormat};

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

    /// Log filter: a level (error, warn or warning, info, debug, trace, off) or `tracing`
    /// directives such as `rds_csi=debug,info`. Default: `info` for `serve`, `warn` for the
    /// one-shot commands (their report is the output; the log is for what went wrong).
    #[arg(long, global = true, env = "RDS_CSI_LOG_LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The operator commands' exit statuses, in their `--help`.
const EXIT_STATUS_HELP: &str = "Exit status: 0 done, nothing needs action; 1 done, something \
    needs action; 2 bad flags; 3 could not do its work (RDS or cluster unreachable, silent or \
    refusing, a file it could not use, --timeout over); 130 interrupted.";

#[derive(Debug, Subcommand)]
// Parsed once per process; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Serve the CSI gRPC services (Identity, and Controller and/or Node) on a Unix socket.
    Serve(ServeArgs),
    /// Report what the driver left on the RDS (files without disks, disks without files);
    /// with --delete, remove it.
    #[command(after_help = EXIT_STATUS_HELP)]
    Orphans(OrphansArgs),
    /// Check that the driver can work with an RDS: host key, login, every read-only command it
    /// needs, capacity. Prints a pass/fail table with the fix for each failure.
    #[command(after_help = EXIT_STATUS_HELP)]
    Doctor(ToolArgs),
    /// List the volumes and snapshots this driver manages on the RDS.
    #[command(after_help = EXIT_STATUS_HELP)]
    Volumes(ToolArgs),
    /// Before replacing the earlier Go driver: read the cluster's PVs, VolumeSnapshotContents
    /// and StorageClasses of --driver-name and the RDS, and report which will work as they are
    /// and what needs action (exit status 1 when anything does). Changes nothing.
    #[command(after_help = EXIT_STATUS_HELP)]
    MigrateCheck(MigrateCheckArgs),
    /// Settle, on a real RDS, the RouterOS behaviours the driver cannot know (wrapping, `print
    /// terse`, failure exit status and texts, session limits, clock, copies, directories, regex
    /// anchors, resizes, allowed hosts). Works only in a fresh scratch directory under the base
    /// path and removes everything it made, also after a failure or Ctrl-C. Exit status 1 when
    /// the RDS did something the driver does not handle, or something could not be removed.
    #[command(after_help = EXIT_STATUS_HELP)]
    Validate(ValidateArgs),
}

mod config;
mod operator;
mod rds;
mod serve;

pub use operator::{MigrateCheckArgs, OrphansArgs, OutputArg, ToolArgs, ValidateArgs};
pub use rds::RdsArgs;
pub use serve::{ConnectorKind, KubeArgs, ServeArgs};

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let level = cli.log_level.as_deref().unwrap_or(default_level);
    if let Err(e) = logging::init(cli.log_format, level) {
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
        return ExitCode::from(crate::operator::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rds-csi: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Serve(args) => {
            let served =
                runtime.block_on(async move { crate::server::serve(args.config()?).await });
            return match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rds-csi serve: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        operator => runtime.block_on(run_operator_command(operator)),
    };
    if let Err(e) = &outcome {
        eprintln!("rds-csi {name}: {e:#}");
    }
    ExitCode::from(crate::operator::exit_status(&outcome))
}

async fn run_operator_command(command: Command) -> anyhow::Result<()> {
    use crate::operator::{doctor, migrate_check, orphans, validate, volumes};
    match command {
        Command::Serve(_) => unreachable!("serve is not an operator command"),
        // doctor prints its report when time runs out; validate still cleans up.
        Command::Doctor(args) => doctor::run(args.doctor_options()).await,
        Command::Validate(args) => validate::run(args.options()).await,
        Command::Orphans(args) => {
            let options = args.options();
            bounded(options.rds.timeout, orphans::run(options)).await
        }
        Command::Volumes(args) => {
            let options = args.volumes_options();
            bounded(options.rds.timeout, volumes::run(options)).await
        }
        Command::MigrateCheck(args) => {
            let options = args.options();
            bounded(options.rds.timeout, migrate_check::run(options)).await
        }
    }
}

/// `run` given `timeout` in all; a little more, so that a deadline inside it (which names what
/// was waited for) usually fires first.
async fn bounded(
    timeout: std::time::Duration,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let grace = std::time::Duration::from_secs(1);
    tokio::time::timeout(timeout + grace, run)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "gave up after {} (--timeout)",
                crate::duration::display(timeout)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube;
    use crate::node::ConnectorConfig;
    use crate::rds::ssh::HostKeySource;
    use clap::CommandFactory;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

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
    fn kubelet_registration_is_off_unless_asked_and_lands_in_the_plugin_registry() {
        let node = ["--node", "--node-id", "n1"];
        let config = |extra: &[&str]| {
            let args = serve_args(&[&node[..], extra].concat());
            args.validate()
                .map(|()| args.config().unwrap().kubelet_registration)
        };
        assert_eq!(config(&[]).unwrap(), None);
        let host_socket = "/var/lib/kubelet/plugins/rds.csi.srvlab.io/csi.sock";
        let registration = config(&["--kubelet-registration-path", host_socket])
            .unwrap()
            .unwrap();
        assert_eq!(
            registration.socket,
            Path::new("/var/lib/kubelet/plugins_registry/rds.csi.srvlab.io@reg.sock")
        );
        assert_eq!(registration.endpoint, Path::new(host_socket));
        let registration = config(&[
            "--kubelet-registration-path",
            host_socket,
            "--plugin-registration-dir",
            "/registration",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            registration.socket,
            Path::new("/registration/rds.csi.srvlab.io@reg.sock")
        );
        let refused = |extra: &[&str]| config(extra).unwrap_err();
        assert!(refused(&["--kubelet-registration-path", "csi.sock"])
            .contains("--kubelet-registration-path must be an absolute path"));
        assert!(refused(&[
            "--kubelet-registration-path",
            host_socket,
            "--plugin-registration-dir",
            "rel"
        ])
        .contains("--plugin-registration-dir must be an absolute path"));
        assert!(refused(&[
            "--kubelet-registration-path",
            host_socket,
            "--kubelet-dir",
            "",
            "--node-state-dir",
            "/s"
        ])
        .contains("--plugin-registration-dir is required"));
        let controller_only = serve_args(&[
            "--controller",
            "--rds-address",
            "10.0.0.1",
            "--kubelet-registration-path",
            host_socket,
        ]);
        assert!(controller_only
            .validate()
            .unwrap_err()
            .contains("--kubelet-registration-path needs --node"));
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
