//! The mock RDS under test: the SSH identities, the `mock-rds` process and what tests read off
//! its state and history.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::{binary, ChildGuard, READY_TIMEOUT};
/// The SSH identities a test run uses: the driver's client key, and the mock's fixed host key.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub client_key: PathBuf,
    pub authorized_keys: PathBuf,
    pub host_key_pub: PathBuf,
    /// Where the mock's state dir must hold its host key before it starts.
    host_key_private: String,
}

impl Keys {
    pub fn generate() -> anyhow::Result<Self> {
        use russh::keys::ssh_key::LineEnding;
        use russh::keys::{Algorithm, PrivateKey};
        let dir = tempfile::tempdir()?;
        let client = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        let host = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        let client_key = dir.path().join("id_ed25519");
        write_private(&client_key, client.to_openssh(LineEnding::LF)?.as_bytes())?;
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::write(
            &authorized_keys,
            format!("{}\n", client.public_key().to_openssh()?),
        )?;
        let host_key_pub = dir.path().join("rds_host_key.pub");
        std::fs::write(
            &host_key_pub,
            format!("{}\n", host.public_key().to_openssh()?),
        )?;
        Ok(Self {
            client_key,
            authorized_keys,
            host_key_pub,
            host_key_private: host.to_openssh(LineEnding::LF)?.to_string(),
            dir,
        })
    }
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    Ok(())
}

/// A running `mock-rds` binary on an OS-chosen port, with its own state and data directories.
pub struct Mock {
    pub process: ChildGuard,
    /// The mock-rds behaviour profile (`default`, `hardware-a`, ...), kept across restarts.
    pub profile: String,
    /// Further flags (`--nvmet`, ...), kept across restarts.
    pub extra_args: Vec<String>,
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The mock's stderr, across restarts.
    pub log: PathBuf,
    _dirs: tempfile::TempDir,
}

impl Mock {
    pub async fn start(keys: &Keys) -> anyhow::Result<Self> {
        Self::start_profile(keys, "default").await
    }

    /// A mock playing the RouterOS behaviour variants of `profile` (see `mock-rds --list-profiles`).
    pub async fn start_profile(keys: &Keys, profile: &str) -> anyhow::Result<Self> {
        Self::start_with(keys, profile, &[]).await
    }

    /// Like [`Mock::start_profile`], with further `mock-rds` flags.
    pub async fn start_with(keys: &Keys, profile: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let dirs = tempfile::tempdir()?;
        let state_dir = dirs.path().join("state");
        let data_dir = dirs.path().join("data");
        std::fs::create_dir_all(&state_dir)?;
        std::fs::create_dir_all(&data_dir)?;
        write_private(
            &state_dir.join("ssh_host_ed25519_key"),
            keys.host_key_private.as_bytes(),
        )?;
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_on(
            keys,
            "127.0.0.1:0",
            state_dir,
            data_dir,
            dirs,
            profile,
            extra,
        )
        .await
    }

    /// Starts again on the same address and state (an "RDS reboot").
    pub async fn restart(mut self, keys: &Keys) -> anyhow::Result<Self> {
        self.stop().await?;
        self.resume(keys).await?;
        Ok(self)
    }

    /// Stops the mock with SIGTERM (its state stays on disk); `resume` starts it again.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.process.signal(nix::sys::signal::Signal::SIGTERM)?;
        self.process.wait_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// Starts a stopped mock again on the same address, state and data.
    pub async fn resume(&mut self, keys: &Keys) -> anyhow::Result<()> {
        let (process, addr, fingerprint) = spawn_mock(
            keys,
            &self.addr.to_string(),
            &self.state_dir,
            &self.data_dir,
            &self.log,
            &self.profile,
            &self.extra_args,
        )
        .await?;
        anyhow::ensure!(
            addr == self.addr,
            "mock came back on {addr}, not {}",
            self.addr
        );
        self.process = process;
        self.fingerprint = fingerprint;
        Ok(())
    }

    async fn start_on(
        keys: &Keys,
        listen: &str,
        state_dir: PathBuf,
        data_dir: PathBuf,
        dirs: tempfile::TempDir,
        profile: &str,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let log = dirs.path().join("mock.log");
        let (process, addr, fingerprint) = spawn_mock(
            keys,
            listen,
            &state_dir,
            &data_dir,
            &log,
            profile,
            &extra_args,
        )
        .await?;
        Ok(Self {
            process,
            profile: profile.to_string(),
            extra_args,
            addr,
            fingerprint,
            state_dir,
            data_dir,
            log,
            _dirs: dirs,
        })
    }

    /// The mock's persisted state (`state.json`), read as JSON.
    pub fn state(&self) -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir.join("state.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Runs one command on the mock over SSH and returns its stdout.
    pub async fn exec(&self, keys: &Keys, command: &str) -> anyhow::Result<String> {
        ssh_exec(self.addr, keys, command).await
    }

    /// Runs one command and fails unless it worked: exit 0 and, for a command that changes
    /// something, no output at all (some RouterOS variants print failures with exit 0).
    pub async fn exec_ok(&self, keys: &Keys, command: &str) -> anyhow::Result<String> {
        let (out, status) = ssh_exec_status(self.addr, keys, command).await?;
        anyhow::ensure!(status == Some(0), "`{command}` exited {status:?}: {out}");
        let silent_on_success = !command.contains(" print") && !command.starts_with("/mock");
        anyhow::ensure!(
            !silent_on_success || out.trim().is_empty(),
            "`{command}` failed: {out}"
        );
        Ok(out)
    }

    /// The disks in `state.json` (empty before the first change).
    pub fn disks(&self) -> anyhow::Result<Vec<MockDisk>> {
        let state = self.state_or_empty()?;
        let list = state["disks"].as_array().cloned().unwrap_or_default();
        list.iter()
            .map(|d| {
                Ok(MockDisk {
                    slot: d["slot"].as_str().context("disk slot")?.to_string(),
                    file_path: d["file_path"].as_str().context("file_path")?.to_string(),
                    file_size: d["file_size"].as_u64().context("file_size")?,
                    exported: d["nvme_tcp_export"].as_bool().unwrap_or(false),
                    copied_from: d["copied_from"].as_str().map(str::to_string),
                    allowed_host: d["nvme_tcp_server_allow_host_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                })
            })
            .collect()
    }

    /// The regular files (not directories) in `state.json`.
    pub fn files(&self) -> anyhow::Result<Vec<MockFile>> {
        let state = self.state_or_empty()?;
        let list = state["files"].as_array().cloned().unwrap_or_default();
        Ok(list
            .iter()
            .filter(|f| f["kind"] == "File")
            .filter_map(|f| {
                Some(MockFile {
                    path: f["path"].as_str()?.to_string(),
                    size: f["size"].as_u64()?,
                })
            })
            .collect())
    }

    fn state_or_empty(&self) -> anyhow::Result<serde_json::Value> {
        if self.state_dir.join("state.json").exists() {
            self.state()
        } else {
            Ok(serde_json::json!({"disks": [], "files": []}))
        }
    }

    /// `/mock history`, parsed; the `/mock` commands themselves are left out.
    pub async fn history(&self, keys: &Keys) -> anyhow::Result<Vec<HistoryEntry>> {
        let text = self.exec_ok(keys, "/mock history").await?;
        Ok(text
            .lines()
            .filter_map(HistoryEntry::parse)
            .filter(|h| !h.command.starts_with("/mock"))
            .collect())
    }
}

/// One disk of the mock's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockDisk {
    pub slot: String,
    pub file_path: String,
    pub file_size: u64,
    pub exported: bool,
    pub copied_from: Option<String>,
    /// `nvme-tcp-server-allow-host-name`; empty: any host.
    pub allowed_host: String,
}

/// One regular file of the mock's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockFile {
    pub path: String,
    pub size: u64,
}

/// One line of `/mock history`: `YYYY-MM-DD HH:MM:SS exit=N Disposition command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub exit: Option<u32>,
    /// `Answered`, `Failed`, `Hung` or `Dropped`.
    pub disposition: String,
    pub command: String,
}

impl HistoryEntry {
    fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\r', '\n']);
        let mut parts = line.splitn(5, ' ');
        let (_date, _time) = (parts.next()?, parts.next()?);
        let exit = parts.next()?.strip_prefix("exit=")?;
        let disposition = parts.next()?.to_string();
        let command = parts.next()?.to_string();
        Some(Self {
            exit: exit.parse().ok(),
            disposition,
            command,
        })
    }

    /// A command that ran and succeeded on the mock (its effect happened), answered or not.
    pub fn took_effect(&self) -> bool {
        self.exit == Some(0)
            && matches!(
                self.disposition.as_str(),
                "Answered" | "Dropped" | "Scripted"
            )
    }
}

impl Mock {
    /// The driver flags that point the controller at this mock.
    pub fn driver_args(&self, keys: &Keys) -> Vec<String> {
        let mut args = self.rds_args(keys);
        args.extend([
            "--nvme-address".into(),
            "127.0.0.1".into(),
            "--loop-root".into(),
            self.data_dir.display().to_string(),
        ]);
        args
    }

    /// The `--rds-*` flags alone, shared by `serve` and the operator commands.
    pub fn rds_args(&self, keys: &Keys) -> Vec<String> {
        vec![
            "--rds-address".into(),
            self.addr.ip().to_string(),
            "--rds-port".into(),
            self.addr.port().to_string(),
            "--rds-user".into(),
            "admin".into(),
            "--rds-key-file".into(),
            keys.client_key.display().to_string(),
            // Pinned by the fingerprint the mock printed when ready, as a user would.
            "--rds-host-key".into(),
            self.fingerprint.clone(),
        ]
    }
}

/// Spawns `mock-rds` and reads its ready line: the process, its address and host-key fingerprint.
async fn spawn_mock(
    keys: &Keys,
    listen: &str,
    state_dir: &Path,
    data_dir: &Path,
    log: &Path,
    profile: &str,
    extra_args: &[String],
) -> anyhow::Result<(ChildGuard, SocketAddr, String)> {
    let mut cmd = Command::new(binary("mock-rds"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    cmd.stderr(log);
    cmd.arg("--listen")
        .arg(listen)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--authorized-keys")
        .arg(&keys.authorized_keys)
        .arg("--profile")
        .arg(profile)
        .args(extra_args)
        .stdout(Stdio::piped());
    let mut process = ChildGuard::spawn(cmd)?;
    process.graceful = true;
    let stdout = process
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("no stdout")?;
    // The ready line is the first line on stdout; read it off the async runtime.
    let line = tokio::time::timeout(
        READY_TIMEOUT,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .context("mock-rds did not print its ready line in time")???;
    let rest = line
        .trim()
        .strip_prefix("mock-rds listening on ")
        .with_context(|| format!("unexpected ready line {line:?}"))?;
    let (addr, fingerprint) = rest
        .split_once(" host-key ")
        .with_context(|| format!("unexpected ready line {line:?}"))?;
    Ok((process, addr.parse()?, fingerprint.to_string()))
}

struct AcceptPinned(russh::keys::PublicKey);

impl russh::client::Handler for AcceptPinned {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()),
        )
    }
}

/// A minimal SSH exec, for test set-up and assertions on the mock.
pub async fn ssh_exec(addr: SocketAddr, keys: &Keys, command: &str) -> anyhow::Result<String> {
    Ok(ssh_exec_status(addr, keys, command).await?.0)
}

/// Like [`ssh_exec`], with the exit status (`None` if the server sent none).
pub async fn ssh_exec_status(
    addr: SocketAddr,
    keys: &Keys,
    command: &str,
) -> anyhow::Result<(String, Option<u32>)> {
    let host = russh::keys::load_public_key(&keys.host_key_pub)?;
    let key = russh::keys::load_secret_key(&keys.client_key, None)?;
    let mut handle = russh::client::connect(
        Arc::new(russh::client::Config::default()),
        addr,
        AcceptPinned(host),
    )
    .await?;
    let auth = handle
        .authenticate_publickey(
            "admin",
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await?;
    anyhow::ensure!(auth.success(), "mock refused the test key");
    let mut channel = handle.channel_open_session().await?;
    channel.exec(true, command).await?;
    let mut out = Vec::new();
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), status))
}
