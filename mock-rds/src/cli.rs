//! The `mock-rds` command line. Every flag can also be set from a `MOCK_RDS_*` environment variable.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::{Auth, Config, MockRds, OutputMode, Profile};

#[derive(Debug, Parser)]
#[command(
    name = "mock-rds",
    version,
    about = "A MikroTik RDS (RouterOS 7) simulator over SSH"
)]
pub struct Cli {
    /// Address to listen on; port 0 lets the OS choose (the ready line tells which).
    #[arg(long, default_value = "127.0.0.1:2222", env = "MOCK_RDS_LISTEN")]
    pub listen: SocketAddr,

    /// Directory for the persistent host key and the state file.
    #[arg(long, env = "MOCK_RDS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Directory where file-backed disks become real sparse files, at DIR/<file-path>.
    #[arg(long, env = "MOCK_RDS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// OpenSSH authorized_keys file of the public keys allowed to log in.
    #[arg(
        long,
        env = "MOCK_RDS_AUTHORIZED_KEYS",
        conflicts_with = "allow_any_key"
    )]
    pub authorized_keys: Option<PathBuf>,

    /// Accept any public key (local use only).
    #[arg(long, env = "MOCK_RDS_ALLOW_ANY_KEY")]
    pub allow_any_key: bool,

    /// Output shape of print commands.
    #[arg(long, value_enum, default_value_t = OutputMode::Routeros, env = "MOCK_RDS_OUTPUT")]
    pub output: OutputMode,

    /// Total size of the storage pool: bytes, or with a K/M/G/T (binary) suffix.
    #[arg(long, default_value = "7681574174720", value_parser = parse_size, env = "MOCK_RDS_POOL_SIZE")]
    pub pool_size: u64,

    /// Mount point (and slot) of the storage pool; file paths must be under /<MOUNT_POINT>/.
    #[arg(long, default_value = "storage-pool", env = "MOCK_RDS_MOUNT_POINT")]
    pub mount_point: String,

    /// Seed of the random generator behind latency faults.
    #[arg(long, default_value_t = 0, env = "MOCK_RDS_LATENCY_SEED")]
    pub latency_seed: u64,

    /// Exit status sent with error and failure texts.
    #[arg(long, default_value_t = 1, env = "MOCK_RDS_ERROR_EXIT_STATUS")]
    pub error_exit_status: u32,

    /// Name printed by /system identity print.
    #[arg(long, default_value = "RDS", env = "MOCK_RDS_IDENTITY")]
    pub identity: String,

    /// Behaviour variants of real RouterOS to play, comma-separated (`wrap-hyphen,exit-zero`), or a
    /// combined profile (`hardware-a`, `hardware-b`); `default` plays none. `/mock profile
    /// set=...` switches at run time; --list-profiles names them all.
    #[arg(long, default_value = "default", value_parser = Profile::parse, env = "MOCK_RDS_PROFILE")]
    pub profile: Profile,

    /// Serve every disk with `nvme-tcp-export=yes` through the Linux kernel's NVMe/TCP target
    /// (root; `modprobe nvmet-tcp`; needs --data-dir). Removed again at shutdown.
    #[arg(long, env = "MOCK_RDS_NVMET", requires = "data_dir")]
    pub nvmet: bool,

    /// With --nvmet: the address the target's TCP ports listen on (each disk's
    /// `nvme-tcp-server-port`).
    #[arg(long, default_value = "127.0.0.1", env = "MOCK_RDS_NVME_LISTEN")]
    pub nvme_listen: std::net::IpAddr,

    /// With --nvmet: the kernel target's configfs directory.
    #[arg(long, default_value = crate::nvmet::DEFAULT_CONFIGFS, env = "MOCK_RDS_NVMET_CONFIGFS")]
    pub nvmet_configfs: PathBuf,

    /// Print every variant and combined profile, one a line with its description, and exit.
    #[arg(long)]
    pub list_profiles: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::command::parse_size(s).ok_or_else(|| format!("not a size: {s:?}"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list_profiles {
        print!("{}", Profile::listing());
        return ExitCode::SUCCESS;
    }
    // Colour only for a person at a terminal: never into files, pipes or `kubectl logs`.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if cli.authorized_keys.is_none() && !cli.allow_any_key {
        eprintln!(
            "mock-rds: refusing to start without client authentication: \
             pass --authorized-keys FILE (or MOCK_RDS_AUTHORIZED_KEYS), \
             or --allow-any-key for local use"
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-rds: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-rds: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let auth = match &cli.authorized_keys {
        Some(path) => Auth::from_authorized_keys_file(path)?,
        None => Auth::AnyKey,
    };
    let config = Config {
        listen: cli.listen,
        state_dir: cli.state_dir,
        data_dir: cli.data_dir,
        auth,
        output: cli.output,
        latency_seed: cli.latency_seed,
        pool_size: cli.pool_size,
        mount_point: cli.mount_point,
        identity: cli.identity,
        error_exit_status: cli.error_exit_status,
        profile: cli.profile,
        nvmet: cli.nvmet.then_some(crate::nvmet::NvmetConfig {
            configfs: cli.nvmet_configfs,
            listen: cli.nvme_listen,
            record: None,
        }),
        ..Config::default()
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let rds = MockRds::start(config).await?;
    tracing::info!(host_key = %rds.host_public_key_openssh(), "host public key");
    {
        // The one line on stdout: scripts and tests wait for it and read the port from it.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "mock-rds listening on {} host-key {}",
            rds.addr(),
            rds.host_key_fingerprint()
        )?;
        out.flush()?;
    }
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); break }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT"); break }
            // The way out of a fault no new connection can undo (stall-handshake,
            // refuse-connections without for=).
            _ = hangup.recv() => {
                rds.clear_faults();
                tracing::info!("SIGHUP: every fault cleared");
            }
        }
    }
    rds.stop().await;
    tracing::info!("stopped");
    Ok(())
}
