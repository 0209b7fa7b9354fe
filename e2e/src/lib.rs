//! Harness for the black-box tests: builds and starts the real binaries, and talks CSI to them
//! over their Unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{self, access_mode, AccessMode};
use csi_proto::v1::{
    CapacityRange, CreateVolumeRequest, DeleteSnapshotRequest, DeleteVolumeRequest,
    ListSnapshotsRequest, ListVolumesRequest, ProbeRequest, Snapshot, Volume, VolumeCapability,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod k8s;
mod mock;
pub mod staged;
pub mod vm;
pub use mock::*;

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
    // Tests run from target/<profile>/deps/, the demo from target/<profile>/; the binaries
    // live in target/<profile>/.
    let exe = std::env::current_exe()?;
    let mut profile_dir = exe
        .parent()
        .context("unexpected executable location")?
        .to_path_buf();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
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
    /// On drop, SIGTERM first and a few seconds to exit, so the process can undo what it set up
    /// (mock-rds `--nvmet` removes its kernel target entries).
    pub graceful: bool,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Self {
            child: Some(child),
            graceful: false,
        })
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
            if self.graceful {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if !matches!(child.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `rds-csi serve` on a socket in a private temporary directory.
pub struct Driver {
    pub process: ChildGuard,
    pub socket: PathBuf,
    /// The driver's stderr (logs), kept out of the test output; printed when a test fails.
    pub log: PathBuf,
    pub channel: Channel,
    _dir: tempfile::TempDir,
}

impl Driver {
    /// Starts `rds-csi serve` with `extra_args` after the endpoint, and waits until Probe answers.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("csi.sock");
        let log = dir.path().join("driver.log");
        let mut cmd = Command::new(binary("rds-csi"));
        cmd.stderr(std::fs::File::create(&log)?);
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
            log,
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
/// with it, so cleanup can find them all. It starts with `pvc-`, as the external-provisioner's
/// names do, so names made from it are their own volume IDs.
pub fn run_id(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("pvc-e2e-{}-{nanos:08x}-{test}", std::process::id())
}

/// Volume base path the driver uses by default (the mock's pool is `/storage-pool`).
pub const BASE_PATH: &str = "/storage-pool/metal-csi";
/// The node ID the combined controller+node driver runs with.
pub const NODE_ID: &str = "e2e-node";

/// Whether the tests run as root (needed for loop devices, mkfs and mount).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loop devices (`/dev/loopN`) whose backing file is under `data_dir` (canonical).
pub fn loop_devices_over(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
        if Path::new(backing).starts_with(data_dir) {
            out.push(PathBuf::from("/dev").join(name));
        }
    }
    out.sort();
    out
}

/// Undoes what a failing test may leave on the host: on drop, unmounts everything under its
/// work dir and detaches loop devices backed by files under the mock's data dir.
pub struct HostGuard {
    work_dir: PathBuf,
    data_dir: PathBuf,
}

impl HostGuard {
    pub fn new(work_dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            work_dir: std::fs::canonicalize(work_dir)?,
            data_dir: std::fs::canonicalize(data_dir)?,
        })
    }

    /// Mount points under the work dir, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut out: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape_mountinfo(p)))
            .filter(|p| p.starts_with(&self.work_dir))
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        out
    }

    /// Loop devices (`/dev/loopN`) whose backing file is under the data dir.
    pub fn loop_devices(&self) -> Vec<PathBuf> {
        loop_devices_over(&self.data_dir)
    }

    /// What the driver left on the host, described; empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .mounts()
            .iter()
            .map(|m| format!("mount {}", m.display()))
            .collect();
        out.extend(
            self.loop_devices()
                .iter()
                .map(|d| format!("loop device {}", d.display())),
        );
        out
    }

    fn clean(&self) {
        for m in self.mounts() {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("e2e clean-up: unmounting {}: {e}", m.display());
            }
        }
        for dev in self.loop_devices() {
            // A loop device keeps its read-only flag for its next user.
            let _ = Command::new("blockdev").arg("--setrw").arg(&dev).status();
            let ok = Command::new("losetup")
                .arg("-d")
                .arg(&dev)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("e2e clean-up: could not detach {}", dev.display());
            }
        }
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        if is_root() {
            self.clean();
        }
    }
}

/// Prints the last lines of the logs when the test is failing, before they are deleted.
struct LogsOnPanic(Vec<PathBuf>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for path in &self.0 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("---- {} (last {} lines)", path.display(), tail.len());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One test's world: a mock RDS, a controller+node driver with the loop connector on it, a work
/// dir for staging and target paths, and a run ID that prefixes every name the test makes.
/// Fields drop in order: host clean-up first, while the paths it inspects still exist.
pub struct Env {
    _logs: LogsOnPanic,
    /// The flags the driver was started with, for [`Env::restart_driver`].
    pub driver_args: Vec<String>,
    pub host: HostGuard,
    pub driver: Driver,
    pub mock: Mock,
    pub keys: Keys,
    pub work: tempfile::TempDir,
    pub run_id: String,
}

/// How [`Env::start_with`] sets the world up.
pub struct EnvOptions<'a> {
    /// The mock-rds behaviour profile.
    pub profile: &'a str,
    /// Further `mock-rds` flags (`--nvmet`).
    pub mock_args: &'a [&'a str],
    /// Further driver flags, after the mock's; [`WORK_DIR`] in them stands for the work dir.
    pub driver_args: &'a [&'a str],
}

/// In [`EnvOptions::driver_args`], replaced by the test's work dir.
pub const WORK_DIR: &str = "{work}";

impl Default for EnvOptions<'_> {
    fn default() -> Self {
        Self {
            profile: "default",
            mock_args: &[],
            driver_args: &["--connector", "loop"],
        }
    }
}

impl Env {
    /// Starts the mock and the driver for the test named `test` (lowercase, short).
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        Self::start_profile(test, "default").await
    }

    /// Like [`Env::start`], with the mock playing `profile`. The run ID carries the profile, so
    /// the same scenario under two profiles never shares a name.
    pub async fn start_profile(test: &str, profile: &str) -> anyhow::Result<Self> {
        Self::start_with(
            test,
            EnvOptions {
                profile,
                ..EnvOptions::default()
            },
        )
        .await
    }

    /// Starts the mock and the driver with the options given.
    pub async fn start_with(test: &str, opts: EnvOptions<'_>) -> anyhow::Result<Self> {
        let keys = Keys::generate()?;
        let mock = Mock::start_with(&keys, opts.profile, opts.mock_args).await?;
        let work = tempfile::tempdir()?;
        let host = HostGuard::new(work.path(), &mock.data_dir)?;
        let state = work.path().join("node-state");
        let mut args: Vec<String> = [
            "--controller",
            "--node",
            "--node-id",
            NODE_ID,
            "--kubelet-dir",
            "",
            "--node-state-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(state.display().to_string());
        args.extend(mock.driver_args(&keys));
        args.extend(
            opts.driver_args
                .iter()
                .map(|a| a.replace(WORK_DIR, &work.path().display().to_string())),
        );
        let driver_args = args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let driver = Driver::start(&args).await?;
        let run_id = match opts.profile {
            "default" => run_id(test),
            other => run_id(&format!("{test}-{}", other.replace("hardware-", "hw"))),
        };
        Ok(Self {
            _logs: LogsOnPanic(vec![driver.log.clone(), mock.log.clone()]),
            driver_args,
            host,
            driver,
            mock,
            keys,
            work,
            run_id,
        })
    }

    /// Stops the driver (SIGTERM) and starts it again with the same flags and node state, as a
    /// pod restart would.
    pub async fn restart_driver(&mut self) -> anyhow::Result<()> {
        self.driver
            .process
            .signal(nix::sys::signal::Signal::SIGTERM)?;
        self.driver
            .process
            .wait_exit(Duration::from_secs(30))
            .await?;
        let args: Vec<&str> = self.driver_args.iter().map(String::as_str).collect();
        self.driver = Driver::start(&args).await?;
        self._logs.0.push(self.driver.log.clone());
        Ok(())
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.driver.channel.clone())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.driver.channel.clone())
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.driver.channel.clone())
    }

    /// `<run id>-<suffix>`: a volume name that is also its volume ID.
    pub fn name(&self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.run_id);
        assert!(
            name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "test name {name:?} would not be its own volume ID"
        );
        name
    }

    /// A path in the test's work dir (for staging and target paths).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    pub async fn exec(&self, command: &str) -> anyhow::Result<String> {
        self.mock.exec(&self.keys, command).await
    }

    pub async fn exec_ok(&self, command: &str) -> anyhow::Result<String> {
        self.mock.exec_ok(&self.keys, command).await
    }

    /// The `/disk` and `/file` commands the mock received so far.
    pub async fn rds_commands(&self) -> anyhow::Result<Vec<HistoryEntry>> {
        Ok(self
            .mock
            .history(&self.keys)
            .await?
            .into_iter()
            .filter(|h| h.command.starts_with("/disk") || h.command.starts_with("/file"))
            .collect())
    }

    /// `/disk add` commands for `slot` that took effect on the mock.
    pub async fn disk_adds(&self, slot: &str) -> anyhow::Result<usize> {
        let needle = format!("slot=\"{slot}\"");
        let bare = format!("slot={slot} ");
        Ok(self
            .mock
            .history(&self.keys)
            .await?
            .iter()
            .filter(|h| {
                h.command.starts_with("/disk add")
                    && (h.command.contains(&needle) || format!("{} ", h.command).contains(&bare))
                    && h.took_effect()
            })
            .count())
    }

    /// Deletes, through CSI, every volume whose ID starts with the run ID and every snapshot of
    /// such a volume; then checks that the mock holds no disk or file of this run. Returns the
    /// number of volumes and snapshots deleted.
    pub async fn cleanup_run(&self) -> anyhow::Result<(usize, usize)> {
        let mut ctl = self.controller();
        let snaps: Vec<String> = list_snapshots(&mut ctl)
            .await?
            .into_iter()
            .filter(|s| s.source_volume_id.starts_with(&self.run_id))
            .map(|s| s.snapshot_id)
            .collect();
        for id in &snaps {
            ctl.delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("deleting snapshot {id}"))?;
        }
        let vols: Vec<String> = list_volumes(&mut ctl)
            .await?
            .into_iter()
            .map(|v| v.volume_id)
            .filter(|id| id.starts_with(&self.run_id))
            .collect();
        for id in &vols {
            ctl.delete_volume(DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("deleting volume {id}"))?;
        }
        let disks: Vec<MockDisk> = self
            .mock
            .disks()?
            .into_iter()
            .filter(|d| d.slot.contains(&self.run_id) || d.file_path.contains(&self.run_id))
            .collect();
        let files: Vec<MockFile> = self
            .mock
            .files()?
            .into_iter()
            .filter(|f| f.path.contains(&self.run_id))
            .collect();
        anyhow::ensure!(
            disks.is_empty() && files.is_empty(),
            "after clean-up the mock still holds disks {disks:?} and files {files:?}"
        );
        Ok((vols.len(), snaps.len()))
    }
}

/// Every volume, following pagination.
pub async fn list_volumes(ctl: &mut ControllerClient<Channel>) -> anyhow::Result<Vec<Volume>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = ctl
            .list_volumes(ListVolumesRequest {
                max_entries: 100,
                starting_token: token,
            })
            .await?
            .into_inner();
        out.extend(page.entries.into_iter().filter_map(|e| e.volume));
        if page.next_token.is_empty() {
            return Ok(out);
        }
        token = page.next_token;
    }
}

/// Every snapshot, following pagination.
pub async fn list_snapshots(ctl: &mut ControllerClient<Channel>) -> anyhow::Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = ctl
            .list_snapshots(ListSnapshotsRequest {
                max_entries: 100,
                starting_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.entries.into_iter().filter_map(|e| e.snapshot));
        if page.next_token.is_empty() {
            return Ok(out);
        }
        token = page.next_token;
    }
}

fn access_mode(mode: access_mode::Mode) -> Option<AccessMode> {
    Some(AccessMode { mode: mode as i32 })
}

/// A single-node-writer filesystem capability (`fs` empty: the driver's default).
pub fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_mode: access_mode(access_mode::Mode::SingleNodeWriter),
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs.to_string(),
                ..Default::default()
            },
        )),
    }
}

/// A single-node-writer raw block capability.
pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: access_mode(access_mode::Mode::SingleNodeWriter),
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
    }
}

/// A CreateVolume request for `bytes` with one capability and no parameters.
pub fn create_request(name: &str, bytes: i64, cap: VolumeCapability) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        ..Default::default()
    }
}

pub const MIB: i64 = 1 << 20;
pub const GIB: i64 = 1 << 30;
