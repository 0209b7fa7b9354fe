//! mock-rds: an SSH server that answers RouterOS 7 `/disk` and `/file` commands like a MikroTik
//! RDS, for tests and for people at a shell.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let rds = mock_rds::MockRds::start(mock_rds::Config::default()).await?;
//! println!("ssh -p {} admin@127.0.0.1 '/disk print detail'", rds.addr().port());
//! rds.stop().await;
//! # Ok(()) }
//! ```

mod background;
pub mod cli;
pub mod command;
mod console;
pub mod engine;
pub mod fault;
pub mod format;
pub mod nvmet;
pub mod profile;
mod server;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use background::CopyShort;
pub use engine::{Ending, Reply};
pub use fault::{Disposition, Fault, HistoryEntry};
pub use format::OutputMode;
pub use profile::{Profile, Variant};
pub use state::{Disk, FileEntry, FileKind};

/// Default pool size: the 7.15 TB RAID seen on hardware (`size=7 681 574 174 720`).
pub const DEFAULT_POOL_SIZE: u64 = 7_681_574_174_720;

/// Who may log in.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// Any public key, and also the `none` method (local use and tests that do not care).
    #[default]
    AnyKey,
    /// Only these public keys (compared by key data; comments are ignored).
    AuthorizedKeys(Vec<PublicKey>),
}

impl Auth {
    /// Reads an OpenSSH `authorized_keys` file. Blank lines and `#` comments are skipped; a line
    /// with an options prefix (`from="..." ssh-ed25519 AAAA...`) is accepted.
    pub fn from_authorized_keys_file(path: &Path) -> anyhow::Result<Auth> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading authorized keys {}", path.display()))?;
        if text.contains("PRIVATE KEY-----") {
            anyhow::bail!(
                "{} holds a private key; --authorized-keys takes public key lines \
                 (`ssh-ed25519 AAAA...`, as in the `.pub` file)",
                path.display()
            );
        }
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line).or_else(|e| {
                // Options come first and end at the first space outside quotes; try each suffix.
                line.match_indices(' ')
                    .find_map(|(i, _)| PublicKey::from_openssh(line[i + 1..].trim()).ok())
                    .ok_or(e)
            });
            keys.push(
                key.with_context(|| format!("{}:{}: not a public key", path.display(), n + 1))?,
            );
        }
        if keys.is_empty() {
            anyhow::bail!("{}: no public keys", path.display());
        }
        Ok(Auth::AuthorizedKeys(keys))
    }
}

/// Server settings. `Default` listens on 127.0.0.1:0, accepts any key, prints routeros output and
/// keeps everything in memory.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Holds `ssh_host_ed25519_key` and `state.json`; state survives restarts when set.
    pub state_dir: Option<PathBuf>,
    /// Backing files of file disks become real sparse files at `DIR/<file-path>`.
    pub data_dir: Option<PathBuf>,
    pub auth: Auth,
    pub output: OutputMode,
    /// A fixed host key; otherwise loaded from (or created in) the state dir, or ephemeral.
    pub host_key: Option<PrivateKey>,
    /// Seed of the RNG behind [`Fault::Latency`].
    pub latency_seed: u64,
    /// Total bytes of the storage pool.
    pub pool_size: u64,
    /// Mount point (and slot) of the storage pool disk; file paths must be under `/<mount_point>/`.
    pub mount_point: String,
    /// `/system identity` name.
    pub identity: String,
    /// Exit status sent with RouterOS error texts (real RouterOS's is not known; 0 and 1 both make
    /// sense to test).
    pub error_exit_status: u32,
    /// Pins every `last-modified` to this Unix time, for byte-exact fixtures.
    pub fixed_time: Option<u64>,
    /// How many commands [`MockRds::history`] keeps.
    pub history_depth: usize,
    /// Behaviour variants of real RouterOS to play (`default`: none).
    pub profile: Profile,
    /// Serve exported disks through the kernel's NVMe/TCP target (needs `data_dir`). The record
    /// of what the mock created goes to the state dir when there is one.
    pub nvmet: Option<nvmet::NvmetConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: None,
            data_dir: None,
            auth: Auth::AnyKey,
            output: OutputMode::Routeros,
            host_key: None,
            latency_seed: 0,
            pool_size: DEFAULT_POOL_SIZE,
            mount_point: "storage-pool".into(),
            identity: "RDS".into(),
            error_exit_status: 1,
            fixed_time: None,
            history_depth: 10_000,
            profile: Profile::default(),
            nvmet: None,
        }
    }
}

struct Inner {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    host_public: String,
    fingerprint: String,
    shutdown: watch::Sender<bool>,
    accept: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// The state directory's lock, held until `stop`.
    state_lock: std::sync::Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
}

impl Drop for Inner {
    // Dropping the last handle without `stop` still shuts the server down.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.shared.stop();
        self.shared.engine.teardown_target();
    }
}

/// A running mock RDS. Cheap to clone; all clones control the same server.
#[derive(Clone)]
pub struct MockRds {
    inner: Arc<Inner>,
}

const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
const STATE_FILE: &str = "state.json";
const NVMET_RECORD: &str = "nvmet.json";
const LOCK_FILE: &str = "lock";

/// Takes the state directory for this process: two mock-rds on one directory would each
/// overwrite the other's disks. The lock file holds the holder's pid, for the refusal.
fn lock_state_dir(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    {
        Ok(lock) => lock,
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "state dir {} is in use by another mock-rds (pid {}); give each mock-rds its \
                 own --state-dir",
                dir.display(),
                holder.trim()
            );
        }
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}

/// Fails at start, naming the directory, when the disks' files cannot be written there.
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".mock-rds-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("data dir {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Loads `DIR/ssh_host_ed25519_key`, creating it (OpenSSH format, mode 0600) on first start.
fn load_or_create_host_key(dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = dir.join(HOST_KEY_FILE);
    if path.exists() {
        return PrivateKey::read_openssh_file(&path)
            .with_context(|| format!("reading host key {}", path.display()));
    }
    let key =
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).context("generating host key")?;
    // Write then rename, so a crash never leaves a truncated key behind.
    let tmp = dir.join(format!("{HOST_KEY_FILE}.tmp"));
    key.write_openssh_file(&tmp, LineEnding::LF)
        .with_context(|| format!("writing host key {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    let public = PublicKey::new(key.public_key().key_data().clone(), "mock-rds");
    if let Ok(line) = public.to_openssh() {
        let _ = std::fs::write(dir.join(format!("{HOST_KEY_FILE}.pub")), line + "\n");
    }
    Ok(key)
}

impl MockRds {
    /// Binds, loads or creates the host key and state, and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<MockRds> {
        let state_lock = match &config.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("creating state dir {}", d.display()))?;
                Some(lock_state_dir(d)?)
            }
            None => None,
        };
        if let Some(d) = &config.data_dir {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating data dir {}", d.display()))?;
            check_writable(d)?;
        }
        let host_key = match (&config.host_key, &config.state_dir) {
            (Some(k), _) => k.clone(),
            (None, Some(d)) => load_or_create_host_key(d)?,
            (None, None) => PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
                .context("generating host key")?,
        };
        let state_file = config.state_dir.as_ref().map(|d| d.join(STATE_FILE));
        let state = match &state_file {
            Some(p) => state::load(p)?,
            None => state::State::default(),
        };
        let target = match &config.nvmet {
            None => None,
            Some(n) => {
                anyhow::ensure!(
                    config.data_dir.is_some(),
                    "--nvmet needs --data-dir: the kernel target serves the disks' files"
                );
                let mut n = n.clone();
                if n.record.is_none() {
                    n.record = config.state_dir.as_ref().map(|d| d.join(NVMET_RECORD));
                }
                Some(nvmet::Target::open(n)?)
            }
        };
        let engine = engine::Engine::new(
            engine::EngineConfig {
                output: config.output,
                mount_point: config.mount_point.clone(),
                pool_size: config.pool_size,
                state_file,
                data_dir: config.data_dir.clone().map(|root| state::DataDir { root }),
                identity: config.identity.clone(),
                error_exit_status: config.error_exit_status,
                fixed_time: config.fixed_time,
                latency_seed: config.latency_seed,
                history_depth: config.history_depth,
                profile: config.profile.clone(),
            },
            state,
        );
        let engine = Arc::new(match target {
            Some(t) => engine.with_target(t),
            None => engine,
        });

        let public = PublicKey::new(host_key.public_key().key_data().clone(), "");
        let host_public = public
            .to_openssh()
            .context("encoding host public key")?
            .trim()
            .to_string();
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();

        let mut methods = russh::MethodSet::empty();
        if matches!(config.auth, Auth::AnyKey) {
            methods.push(russh::MethodKind::None);
        }
        methods.push(russh::MethodKind::PublicKey);
        let ssh_config = Arc::new(russh::server::Config {
            // What RouterOS announces.
            server_id: russh::SshId::Standard("SSH-2.0-ROSSSH".into()),
            methods,
            auth_rejection_time: Duration::from_millis(100),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            // The driver holds one long-lived connection; never time it out.
            inactivity_timeout: None,
            keepalive_interval: None,
            nodelay: true,
            ..Default::default()
        });

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(server::Shared::new(engine, config.auth.clone()));
        let (shutdown, rx) = watch::channel(false);
        let accept = tokio::spawn(server::accept_loop(
            listener,
            shared.clone(),
            ssh_config,
            rx,
        ));
        tracing::info!(%addr, host_key = %fingerprint, "mock-rds started");
        Ok(MockRds {
            inner: Arc::new(Inner {
                shared,
                addr,
                host_public,
                fingerprint,
                shutdown,
                accept: tokio::sync::Mutex::new(Some(accept)),
                state_lock: std::sync::Mutex::new(state_lock),
            }),
        })
    }

    fn engine(&self) -> &engine::Engine {
        &self.inner.shared.engine
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `ssh-ed25519 AAAA...` (no comment).
    pub fn host_public_key_openssh(&self) -> String {
        self.inner.host_public.clone()
    }

    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        self.inner.fingerprint.clone()
    }

    /// A `known_hosts` line for this server: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[{}]:{} {}",
            self.addr().ip(),
            self.addr().port(),
            self.host_public_key_openssh()
        )
    }

    /// File disks (volumes and snapshots) in creation order. The pool disk is not included.
    pub fn disks(&self) -> Vec<Disk> {
        let mut d = self.engine().state().disks;
        d.sort_by_key(|d| d.id);
        d
    }

    pub fn disk(&self, slot: &str) -> Option<Disk> {
        self.engine().state().disk(slot).cloned()
    }

    /// `/file` entries (files and directories) in creation order.
    pub fn files(&self) -> Vec<FileEntry> {
        let mut f = self.engine().state().files;
        f.sort_by_key(|f| f.id);
        f
    }

    /// The `/file` entry at an absolute path (`/storage-pool/...`).
    pub fn file(&self, path: &str) -> Option<FileEntry> {
        self.engine().state().file(path).cloned()
    }

    /// Free bytes in the pool, as the capacity entry reports them.
    pub fn free_bytes(&self) -> u64 {
        let used = self.engine().state().used(&self.engine().cfg.mount_point);
        self.engine().cfg.pool_size.saturating_sub(used)
    }

    /// Adds a file with no disk. Panics on a path that is not `/a/b...` of `[A-Za-z0-9._+:@,-]`
    /// (a test bug, not an input error).
    pub fn add_orphan_file(&self, path: &str, size: u64) {
        if let Err(e) = self.engine().add_orphan_file(path, size) {
            panic!("mock-rds: add_orphan_file({path:?}): {e}");
        }
    }

    /// Adds an exported disk (port 4420, default NQN) with no backing file. Panics on a bad path
    /// or a duplicate slot.
    pub fn add_orphan_disk(&self, slot: &str, file_path: &str, size: u64) {
        if let Err(e) = self.engine().add_orphan_disk(slot, file_path, size) {
            panic!("mock-rds: add_orphan_disk({slot:?}): {e}");
        }
    }

    /// Removes a `/file` entry (and its backing file) only, leaving any disk that uses it.
    pub fn remove_file(&self, path: &str) {
        self.engine().remove_file(path);
    }

    /// Makes the next `copy-from` stop `short.by` bytes before its end (like `/mock copy-short`):
    /// at once, or under `copy-async` at the end of its run, resuming after `short.resume` if set.
    pub fn stop_next_copy_short(&self, short: CopyShort) {
        self.engine().arm_copy_short(short);
    }

    /// The behaviour variants in force.
    pub fn profile(&self) -> Profile {
        self.engine().profile()
    }

    /// Switches the behaviour variants at run time (like `/mock profile set=...`).
    pub fn set_profile(&self, profile: Profile) {
        self.engine().set_profile(profile);
    }

    /// Adds a fault. An invalid regex is matched literally instead (and logged).
    pub fn inject(&self, fault: Fault) {
        if let Err(e) = self.try_inject(fault.clone()) {
            tracing::warn!(error = %e, "invalid fault pattern; matching it literally");
            let lit = |p: String| regex::escape(&p);
            let fault = match fault {
                Fault::Fail {
                    pattern,
                    times,
                    message,
                    exit_status,
                } => Fault::Fail {
                    pattern: lit(pattern),
                    times,
                    message,
                    exit_status,
                },
                Fault::Hang { pattern, times } => Fault::Hang {
                    pattern: lit(pattern),
                    times,
                },
                Fault::DropAfterRun { pattern, times } => Fault::DropAfterRun {
                    pattern: lit(pattern),
                    times,
                },
                Fault::Latency { pattern, min, max } => Fault::Latency {
                    pattern: lit(pattern),
                    min,
                    max,
                },
                other => other,
            };
            let _ = self.try_inject(fault);
        }
    }

    /// Adds a fault, failing on an invalid regex.
    pub fn try_inject(&self, fault: Fault) -> anyhow::Result<()> {
        self.engine()
            .add_fault(fault)
            .context("invalid fault pattern")
    }

    pub fn clear_faults(&self) {
        self.engine().clear_faults();
    }

    /// Empties the disks and files (removing backing files), faults and history.
    pub fn reset(&self) {
        self.engine().reset();
    }

    /// Every command received, oldest first (bounded by [`Config::history_depth`]).
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.engine().history()
    }

    pub fn clear_history(&self) {
        self.engine().clear_history();
    }

    /// Runs a command in-process, without SSH and without faults (not recorded in history).
    pub fn execute(&self, line: &str) -> Reply {
        self.engine().execute(line)
    }

    /// Cuts every live connection at the TCP level (like a network failure or a reboot).
    pub fn drop_all_connections(&self) {
        self.inner.shared.kill_all();
    }

    /// Live TCP connections (including ones still in the handshake).
    pub fn connection_count(&self) -> usize {
        self.inner.shared.connection_count()
    }

    /// Stops listening and cuts every connection. Idempotent; when it returns, the port is free
    /// and a new server may be started on the same state dir.
    pub async fn stop(&self) {
        let _ = self.inner.shutdown.send(true);
        let task = self.inner.accept.lock().await.take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.shared.stop();
        self.engine().teardown_target();
        // The state is saved: another mock-rds may take the directory now.
        drop(
            self.inner
                .state_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    /// The kernel NVMe/TCP target, with `--nvmet`.
    pub fn target(&self) -> Option<&nvmet::Target> {
        self.engine().target()
    }
}
