//! Harness for the black-box tests: builds and starts the real binaries, and talks CSI to them
//! over their Unix socket.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::ProbeRequest;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a started process gets to become ready before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a workspace binary (`rds-csi`, `mock-rds`), built on first use so that
/// `cargo test -p e2e` alone always tests the current sources.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .as_ref()
        .unwrap_or_else(|e| panic!("building the binaries under test failed: {e}"));
    dir.join(name)
}

fn build_binaries() -> anyhow::Result<PathBuf> {
    // Tests run from target/<profile>/deps/; the binaries live in target/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test executable location")?
        .to_path_buf();
    if std::env::var_os("E2E_SKIP_BUILD").is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "-p", "rds-csi", "-p", "mock-rds"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of rds-csi and mock-rds failed: {status}");
        }
    }
    Ok(profile_dir)
}

/// A gRPC channel over a Unix socket; the URI is required by tonic but not used.
pub async fn connect_unix(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::1]:1")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(channel)
}

/// A child process that is killed (and reaped) if the test ends without stopping it.
pub struct ChildGuard {
    pub child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Self { child: Some(child) })
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.id())?);
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// Waits for the process to exit, failing after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("process {} did not exit within {timeout:?}", child.id());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `rds-csi serve` on a socket in a private temporary directory.
pub struct Driver {
    pub process: ChildGuard,
    pub socket: PathBuf,
    pub channel: Channel,
    _dir: tempfile::TempDir,
}

impl Driver {
    /// Starts `rds-csi serve` with `extra_args` after the endpoint, and waits until Probe answers.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("csi.sock");
        let mut cmd = Command::new(binary("rds-csi"));
        cmd.arg("serve")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--metrics-address")
            .arg("")
            .args(extra_args);
        let mut process = ChildGuard::spawn(cmd)?;
        let channel = wait_ready(&mut process, &socket).await?;
        Ok(Self {
            process,
            socket,
            channel,
            _dir: dir,
        })
    }
}

/// Polls Probe over the socket until it answers ready, the process dies, or the deadline passes.
async fn wait_ready(process: &mut ChildGuard, socket: &Path) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_error = String::from("socket never appeared");
    loop {
        if let Some(status) = process.try_status()? {
            bail!("rds-csi exited before becoming ready: {status}");
        }
        if socket.exists() {
            match connect_unix(socket).await {
                Ok(channel) => {
                    match IdentityClient::new(channel.clone())
                        .probe(ProbeRequest {})
                        .await
                    {
                        Ok(r) if r.get_ref().ready == Some(true) => return Ok(channel),
                        Ok(r) => last_error = format!("probe answered {:?}", r.get_ref()),
                        Err(e) => last_error = format!("probe failed: {e}"),
                    }
                }
                Err(e) => last_error = format!("connect failed: {e}"),
            }
        }
        if Instant::now() >= deadline {
            bail!("rds-csi not ready within {READY_TIMEOUT:?}: {last_error}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh identifier for one test run; every volume and snapshot name a test makes starts
/// with it, so cleanup can find them all.
pub fn run_id(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("e2e-{}-{nanos:08x}-{test}", std::process::id())
}

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
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    _dirs: tempfile::TempDir,
}

impl Mock {
    pub async fn start(keys: &Keys) -> anyhow::Result<Self> {
        let dirs = tempfile::tempdir()?;
        let state_dir = dirs.path().join("state");
        let data_dir = dirs.path().join("data");
        std::fs::create_dir_all(&state_dir)?;
        std::fs::create_dir_all(&data_dir)?;
        write_private(
            &state_dir.join("ssh_host_ed25519_key"),
            keys.host_key_private.as_bytes(),
        )?;
        Self::start_on(keys, "127.0.0.1:0", state_dir, data_dir, dirs).await
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
        )
        .await?;
        anyhow::ensure!(addr == self.addr, "mock came back on {addr}, not {}", self.addr);
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
    ) -> anyhow::Result<Self> {
        let (process, addr, fingerprint) = spawn_mock(keys, listen, &state_dir, &data_dir).await?;
        Ok(Self {
            process,
            addr,
            fingerprint,
            state_dir,
            data_dir,
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

    /// The driver flags that point the controller at this mock.
    pub fn driver_args(&self, keys: &Keys) -> Vec<String> {
        vec![
            "--rds-address".into(),
            self.addr.ip().to_string(),
            "--rds-port".into(),
            self.addr.port().to_string(),
            "--rds-user".into(),
            "admin".into(),
            "--rds-key-file".into(),
            keys.client_key.display().to_string(),
            "--rds-host-key".into(),
            keys.host_key_pub.display().to_string(),
            "--nvme-address".into(),
            "127.0.0.1".into(),
            "--loop-root".into(),
            self.data_dir.display().to_string(),
        ]
    }
}

/// Spawns `mock-rds` and reads its ready line: the process, its address and host-key fingerprint.
async fn spawn_mock(
    keys: &Keys,
    listen: &str,
    state_dir: &Path,
    data_dir: &Path,
) -> anyhow::Result<(ChildGuard, SocketAddr, String)> {
    let mut cmd = Command::new(binary("mock-rds"));
    cmd.arg("--listen")
        .arg(listen)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--authorized-keys")
        .arg(&keys.authorized_keys)
        .stdout(Stdio::piped());
    let mut process = ChildGuard::spawn(cmd)?;
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
    while let Some(msg) = channel.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
