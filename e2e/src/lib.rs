//! Harness for the black-box tests: builds and starts the real binaries, and talks CSI to them
//! over their Unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
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
    child: Option<Child>,
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
