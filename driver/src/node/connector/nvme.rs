//! The `nvme-tcp` connector: `nvme connect`/`disconnect` by NQN, with the block device found
//! through sysfs (`/sys/class/nvme-subsystem/*/subsysnqn`), never through cached names, since
//! controllers and namespaces renumber after a reconnect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Attached, Attachment, Connector};
use crate::node::context::{is_managed_nqn, VolumeTarget};
use crate::node::error::{NodeError, Result};
use crate::node::exec::{poll_until, run, run_ok};

/// Reconnect forever: a controller given up on turns the filesystem read-only, and the Go
/// driver settled on -1 after its hardware tests (see README, "NVMe/TCP timeouts").
pub const DEFAULT_CTRL_LOSS_TMO: i32 = -1;
pub const DEFAULT_RECONNECT_DELAY: u32 = 5;
pub const DEFAULT_KEEP_ALIVE_TMO: u32 = 5;

#[derive(Debug, Clone)]
pub struct NvmeConfig {
    /// The `nvme` executable (nvme-cli 1.x or 2.x).
    pub nvme_bin: PathBuf,
    /// Where sysfs is mounted; tests point it at a fixture tree.
    pub sys_root: PathBuf,
    /// Where device nodes appear.
    pub dev_root: PathBuf,
    pub host_nqn: String,
    /// Passed as `--hostid` when the host NQN was derived (nvme-cli would otherwise pair it with
    /// an unrelated `/etc/nvme/hostid`).
    pub host_id: Option<String>,
    /// The identity fenced volumes are connected with: derived from the cluster's fence key and
    /// the node ID, the only one the controller can name without seeing the node. The pair is
    /// fixed, as the kernel wants one host ID per host NQN. None: no fence key on this node.
    pub fenced_identity: Option<crate::fence_key::HostIdentity>,
    /// Only NQNs with this prefix and a volume-ID suffix are ever connected or disconnected.
    pub managed_prefix: String,
    pub ctrl_loss_tmo: i32,
    pub reconnect_delay: u32,
    pub keep_alive_tmo: u32,
    /// Used when neither the volume context nor the publish context names an address/port.
    pub default_address: Option<std::net::IpAddr>,
    pub default_port: Option<u16>,
    pub poll_interval: Duration,
}

impl NvmeConfig {
    pub fn new(host_nqn: impl Into<String>, managed_prefix: impl Into<String>) -> Self {
        Self {
            nvme_bin: PathBuf::from("nvme"),
            sys_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
            host_nqn: host_nqn.into(),
            host_id: None,
            fenced_identity: None,
            managed_prefix: managed_prefix.into(),
            ctrl_loss_tmo: DEFAULT_CTRL_LOSS_TMO,
            reconnect_delay: DEFAULT_RECONNECT_DELAY,
            keep_alive_tmo: DEFAULT_KEEP_ALIVE_TMO,
            default_address: None,
            default_port: None,
            // The namespace shows in sysfs tens of milliseconds after `nvme connect` returns,
            // and a look costs a few reads of sysfs.
            poll_interval: Duration::from_millis(20),
        }
    }
}

/// A host NQN of the form `nqn.2014-08.org.nvmexpress:uuid:<uuid>` and its host ID, derived
/// deterministically from the node ID, so each node has its own and keeps it across restarts.
pub fn derived_host_nqn(node_id: &str) -> (String, String) {
    // A fixed namespace for this driver, so the UUID depends on the node ID alone.
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x5f1c_8d2e_93a4_4b6f_8e1d_2c7a_90b3_e4d1);
    let id = uuid::Uuid::new_v5(&NS, format!("rds-csi-node:{node_id}").as_bytes());
    (
        format!("nqn.2014-08.org.nvmexpress:uuid:{id}"),
        id.to_string(),
    )
}

/// The host's NQN from `hostnqn_file` (the host's `/etc/nvme/hostnqn`, mounted into the pod),
/// else one derived from the node ID. Never an NQN baked into the image.
pub fn resolve_host_nqn(hostnqn_file: &Path, node_id: &str) -> (String, Option<String>) {
    if let Ok(s) = std::fs::read_to_string(hostnqn_file) {
        let nqn = s.trim();
        if nqn.starts_with("nqn.") && nqn.len() <= 223 && !nqn.contains(char::is_whitespace) {
            return (nqn.to_string(), None);
        }
        tracing::warn!(file = %hostnqn_file.display(), "ignoring an invalid host NQN file");
    }
    let (nqn, id) = derived_host_nqn(node_id);
    (nqn, Some(id))
}

/// A subsystem as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subsystem {
    pub name: String,
    pub nqn: String,
    /// Controllers (`nvmeN`) with their `state` (`live`, `connecting`, ...).
    pub controllers: Vec<(String, String)>,
    /// Namespace block devices (`nvmeXnY`), sorted, with their sysfs directories.
    pub namespaces: Vec<Namespace>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub dir: PathBuf,
}

fn is_ctrl_name(s: &str) -> bool {
    s.strip_prefix("nvme")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `nvmeXnY`, but not the hidden per-path `nvmeXcYnZ` devices of native multipath.
fn is_namespace_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("nvme") else {
        return false;
    };
    let Some((x, y)) = rest.split_once('n') else {
        return false;
    };
    !x.is_empty()
        && !y.is_empty()
        && x.bytes().all(|b| b.is_ascii_digit())
        && y.bytes().all(|b| b.is_ascii_digit())
}

/// A sysfs attribute, trimmed; None when it cannot be read.
pub(crate) fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The entries of a sysfs directory, in natural order; none when it cannot be read.
pub(crate) fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|a| natural_key(a));
    v
}

/// Sorts `nvme2n1` before `nvme10n1`.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((std::mem::take(&mut text), num.parse().unwrap_or(u64::MAX)));
                num.clear();
            }
            text.push(c);
        }
    }
    out.push((text, num.parse().unwrap_or(0)));
    out
}

/// Reads every NVMe subsystem from `<sys_root>/class/nvme-subsystem`.
pub fn scan_subsystems(sys_root: &Path) -> Result<Vec<Subsystem>> {
    let class = sys_root.join("class/nvme-subsystem");
    let mut out = Vec::new();
    for name in dir_names(&class) {
        let dir = class.join(&name);
        // A subsystem that vanishes while we scan is simply skipped.
        let Some(nqn) = read_trim(&dir.join("subsysnqn")) else {
            continue;
        };
        let entries = dir_names(&dir);
        let controllers: Vec<(String, String)> = entries
            .iter()
            .filter(|e| is_ctrl_name(e))
            .map(|c| {
                let state = read_trim(&dir.join(c).join("state")).unwrap_or_default();
                (c.clone(), state)
            })
            .collect();
        // multipath=Y: the namespace head `nvmeXnY` sits in the subsystem directory.
        let mut namespaces: Vec<Namespace> = entries
            .iter()
            .filter(|e| is_namespace_name(e))
            .map(|n| Namespace {
                name: n.clone(),
                dir: dir.join(n),
            })
            .collect();
        if namespaces.is_empty() {
            // multipath=N: each controller carries its namespaces.
            for (c, _) in &controllers {
                let cdir = dir.join(c);
                namespaces.extend(
                    dir_names(&cdir)
                        .into_iter()
                        .filter(|e| is_namespace_name(e))
                        .map(|n| Namespace {
                            dir: cdir.join(&n),
                            name: n,
                        }),
                );
            }
        }
        namespaces.sort_by_key(|a| natural_key(&a.name));
        namespaces.dedup_by(|a, b| a.name == b.name);
        out.push(Subsystem {
            name,
            nqn,
            controllers,
            namespaces,
        });
    }
    Ok(out)
}

/// A subsystem as `nvme list-subsys -o json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListedSubsystem {
    pub name: String,
    pub nqn: String,
    pub paths: Vec<ListedPath>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListedPath {
    pub name: String,
    pub transport: String,
    pub address: String,
    pub state: String,
}

fn paths_of(v: &Value) -> Vec<ListedPath> {
    let s = |p: &Value, k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    v.get("Paths")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| ListedPath {
                    name: s(p, "Name"),
                    transport: s(p, "Transport"),
                    address: s(p, "Address"),
                    state: s(p, "State"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Parses `nvme list-subsys -o json` of nvme-cli 1.x (an object whose `Subsystems` array holds
/// a `{Name, NQN}` entry followed by a separate `{Paths}` entry) and 2.x (an array of hosts,
/// each with `Subsystems` of `{Name, NQN, Paths}`).
pub fn parse_list_subsys(json: &str) -> Result<Vec<ListedSubsystem>> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| NodeError::Internal(format!("nvme list-subsys: invalid JSON: {e}")))?;
    let hosts: Vec<&Value> = match &v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut out: Vec<ListedSubsystem> = Vec::new();
    for host in hosts {
        let Some(subs) = host.get("Subsystems").and_then(Value::as_array) else {
            continue;
        };
        for entry in subs {
            match entry.get("NQN").and_then(Value::as_str) {
                Some(nqn) => out.push(ListedSubsystem {
                    name: entry
                        .get("Name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    nqn: nqn.to_string(),
                    paths: paths_of(entry),
                }),
                // 1.x: the paths of the subsystem listed just before.
                None => {
                    if let Some(last) = out.last_mut() {
                        last.paths.extend(paths_of(entry));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// How long undoing a failed attach may take, after the operation's own deadline passed.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct NvmeTcpConnector {
    cfg: NvmeConfig,
    /// Kernel connect/disconnect are serialised: concurrent fabrics operations on one host
    /// have raced in other drivers.
    lock: Mutex<()>,
    /// Since when this process has seen each NQN without a live controller: sysfs keeps no
    /// time, and an operator wants to know how long I/O has been waiting.
    down_since: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl NvmeTcpConnector {
    pub fn new(cfg: NvmeConfig) -> Self {
        Self {
            cfg,
            lock: Mutex::new(()),
            down_since: Default::default(),
        }
    }

    pub fn config(&self) -> &NvmeConfig {
        &self.cfg
    }

    fn nqn<'a>(&self, target: &'a VolumeTarget) -> Result<&'a str> {
        let nqn = target.nqn.as_deref().ok_or_else(|| {
            NodeError::InvalidArgument(
                "volume_context.nqn is required by the nvme-tcp connector".into(),
            )
        })?;
        if !is_managed_nqn(nqn, &self.cfg.managed_prefix) {
            return Err(NodeError::InvalidArgument(format!(
                "NQN {nqn} is not managed by this driver (prefix {})",
                self.cfg.managed_prefix
            )));
        }
        Ok(nqn)
    }

    /// Subsystems whose NQN equals `nqn` exactly (normally at most one).
    fn subsystems_for(&self, nqn: &str) -> Result<Vec<Subsystem>> {
        Ok(scan_subsystems(&self.cfg.sys_root)?
            .into_iter()
            .filter(|s| s.nqn == nqn)
            .collect())
    }

    /// The first namespace of the subsystem that has a non-zero size and a device node.
    fn ready_device(&self, nqn: &str) -> Result<Option<PathBuf>> {
        Ok(self.ready_in(&self.subsystems_for(nqn)?))
    }

    /// [`Self::ready_device`] among subsystems already scanned.
    fn ready_in(&self, subsystems: &[Subsystem]) -> Option<PathBuf> {
        for sub in subsystems {
            for ns in &sub.namespaces {
                let size = read_trim(&ns.dir.join("size"));
                let dev = self.cfg.dev_root.join(&ns.name);
                if size.as_deref().is_some_and(|s| s != "0") && dev.exists() {
                    return Some(dev);
                }
            }
        }
        None
    }

    pub async fn list_subsys(&self, deadline: Instant) -> Result<Vec<ListedSubsystem>> {
        let out = run_ok(&self.cfg.nvme_bin, &["list-subsys", "-o", "json"], deadline).await?;
        if out.stdout.trim().is_empty() {
            return Ok(Vec::new());
        }
        parse_list_subsys(&out.stdout)
    }

    fn connect_args(&self, target: &VolumeTarget, nqn: &str) -> Result<Vec<String>> {
        let addr = target.address.or(self.cfg.default_address).ok_or_else(|| {
            NodeError::InvalidArgument(
                "volume_context.nvmeAddress is required by the nvme-tcp connector".into(),
            )
        })?;
        let port = target.port.or(self.cfg.default_port).ok_or_else(|| {
            NodeError::InvalidArgument(
                "volume_context.nvmePort is required by the nvme-tcp connector".into(),
            )
        })?;
        let mut args: Vec<String> = vec![
            "connect".into(),
            "-t".into(),
            "tcp".into(),
            "-a".into(),
            addr.to_string(),
            "-s".into(),
            port.to_string(),
            "-n".into(),
            nqn.into(),
            "--hostnqn".into(),
        ];
        if target.fenced {
            let Some(identity) = &self.cfg.fenced_identity else {
                return Err(NodeError::FailedPrecondition(
                    "the volume is fenced (nvmeFencing) and this node has no fence key: give it \
                     the cluster's key with --fence-key-file (the `fence-key` of the driver's \
                     Secret)"
                        .into(),
                ));
            };
            args.extend([
                identity.nqn.clone(),
                "--hostid".into(),
                identity.host_id.clone(),
            ]);
        } else {
            args.push(self.cfg.host_nqn.clone());
            if let Some(id) = &self.cfg.host_id {
                args.extend(["--hostid".into(), id.clone()]);
            }
        }
        // 0 leaves the option to the kernel's default, as the Go driver's volume contexts mean
        // it (its PVs carry `keepAliveTmo: "0"`); -1 (ctrl_loss_tmo only) is "forever".
        let options = [
            (
                "--ctrl-loss-tmo",
                i64::from(target.ctrl_loss_tmo.unwrap_or(self.cfg.ctrl_loss_tmo)),
            ),
            (
                "--reconnect-delay",
                i64::from(target.reconnect_delay.unwrap_or(self.cfg.reconnect_delay)),
            ),
            (
                "--keep-alive-tmo",
                i64::from(target.keep_alive_tmo.unwrap_or(self.cfg.keep_alive_tmo)),
            ),
        ];
        for (flag, value) in options.into_iter().filter(|(_, v)| *v != 0) {
            args.extend([flag.to_string(), value.to_string()]);
        }
        Ok(args)
    }

    async fn ns_rescan(&self, sub: &Subsystem, deadline: Instant) -> Result<()> {
        for (ctrl, _) in &sub.controllers {
            let dev = self.cfg.dev_root.join(ctrl);
            run_ok(
                &self.cfg.nvme_bin,
                &["ns-rescan".as_ref(), dev.as_os_str()],
                deadline,
            )
            .await?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Connector for NvmeTcpConnector {
    fn name(&self) -> &'static str {
        "nvme-tcp"
    }

    fn check_target(&self, target: &VolumeTarget) -> Result<()> {
        let nqn = self.nqn(target)?;
        self.connect_args(target, nqn).map(|_| ())
    }

    async fn attach(&self, target: &VolumeTarget, deadline: Instant) -> Result<Attachment> {
        let nqn = self.nqn(target)?;
        let args = self.connect_args(target, nqn)?;
        // Serialise only the kernel operation, not the wait for the device below, so one
        // slow volume does not hold up the others.
        let serial = self.lock.lock().await;
        let existing = self.subsystems_for(nqn)?;
        if let Some(device) = self.ready_in(&existing) {
            tracing::debug!(nqn, device = %device.display(), "already connected");
            return Ok(Attachment {
                device,
                made_now: false,
            });
        }
        let mut made_now = false;
        if existing.is_empty() {
            let out = run(&self.cfg.nvme_bin, &args, deadline).await?;
            // A connect racing the kernel (or another tool) reports "already connected": that
            // connection is not this call's.
            if !out.success() && !out.stderr.contains("already connected") {
                return Err(NodeError::Internal(format!(
                    "nvme connect to {nqn} failed (exit {:?}): {}",
                    out.code,
                    out.stderr.trim()
                )));
            }
            made_now = out.success();
            tracing::info!(nqn, "nvme connected");
        } else {
            // Connected but no usable namespace yet: ask the controllers to rescan.
            for sub in &existing {
                self.ns_rescan(sub, deadline).await?;
            }
        }
        drop(serial);
        let found = poll_until(deadline, self.cfg.poll_interval, || self.ready_device(nqn)).await;
        let error = match found {
            Ok(Some(device)) => return Ok(Attachment { device, made_now }),
            Ok(None) => NodeError::DeadlineExceeded(format!(
                "no block device appeared for {nqn} before the deadline"
            )),
            Err(e) => e,
        };
        if made_now {
            // This call's own connection, without a device nothing can use: undo it.
            let cleanup = Instant::now() + CLEANUP_TIMEOUT;
            if let Err(e) = self.detach(target, cleanup).await {
                tracing::warn!(nqn, error = %e, "could not disconnect after no device appeared");
            }
        }
        Err(error)
    }

    async fn find_device(&self, target: &VolumeTarget) -> Result<Option<PathBuf>> {
        let nqn = self.nqn(target)?;
        self.ready_device(nqn)
    }

    async fn attachment_problem(&self, target: &VolumeTarget) -> Result<Option<String>> {
        let nqn = self.nqn(target)?;
        let controllers: Vec<(String, String)> = self
            .subsystems_for(nqn)?
            .into_iter()
            .flat_map(|s| s.controllers)
            .collect();
        let mut down_since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        // No controller at all is no attachment, which the device lookup reports.
        if controllers.is_empty() || controllers.iter().any(|(_, state)| state == "live") {
            down_since.remove(nqn);
            return Ok(None);
        }
        let since = *down_since
            .entry(nqn.to_string())
            .or_insert_with(std::time::Instant::now);
        let states: Vec<String> = controllers
            .iter()
            .map(|(c, state)| {
                format!(
                    "{c} is {}",
                    if state.is_empty() {
                        "in no state"
                    } else {
                        state
                    }
                )
            })
            .collect();
        let endpoint = match (&target.address, target.port) {
            (Some(a), Some(p)) => format!(" to {a}:{p}"),
            _ => String::new(),
        };
        Ok(Some(format!(
            "the NVMe/TCP connection{endpoint} is down: {} (for {}s seen from this node); I/O \
             to the volume waits until it reconnects",
            states.join(", "),
            since.elapsed().as_secs()
        )))
    }

    async fn detach(&self, target: &VolumeTarget, deadline: Instant) -> Result<()> {
        let nqn = self.nqn(target)?;
        // An unstaged volume's outage is no longer this node's to report.
        self.down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(nqn);
        let _serial = self.lock.lock().await;
        if self.subsystems_for(nqn)?.is_empty() {
            return Ok(());
        }
        let out = run(&self.cfg.nvme_bin, &["disconnect", "-n", nqn], deadline).await?;
        // Only what is logged depends on nvme-cli's status (`!` deleted is an equivalent
        // mutant): sysfs decides below.
        if !out.success() {
            tracing::warn!(nqn, code = ?out.code, stderr = %out.stderr.trim(), "nvme disconnect failed; checking sysfs");
        }
        // Success is what sysfs says, not what nvme-cli printed.
        let gone = poll_until(deadline, self.cfg.poll_interval, || {
            Ok(self.subsystems_for(nqn)?.is_empty().then_some(()))
        })
        .await?;
        if gone.is_none() {
            return Err(NodeError::Internal(format!(
                "{nqn} is still connected after nvme disconnect: {}",
                out.stderr.trim()
            )));
        }
        tracing::info!(nqn, "nvme disconnected");
        Ok(())
    }

    async fn rescan(&self, target: &VolumeTarget, _device: &Path, deadline: Instant) -> Result<()> {
        let nqn = self.nqn(target)?;
        for sub in self.subsystems_for(nqn)? {
            self.ns_rescan(&sub, deadline).await?;
        }
        Ok(())
    }

    async fn target_for_device(&self, major: u32, minor: u32) -> Result<Option<VolumeTarget>> {
        let uevent = self
            .cfg
            .sys_root
            .join(format!("dev/block/{major}:{minor}/uevent"));
        let Some(text) = read_trim(&uevent) else {
            return Ok(None);
        };
        let Some(name) = text.lines().find_map(|l| l.strip_prefix("DEVNAME=")) else {
            return Ok(None);
        };
        for sub in scan_subsystems(&self.cfg.sys_root)? {
            if sub.namespaces.iter().any(|n| n.name == name)
                && is_managed_nqn(&sub.nqn, &self.cfg.managed_prefix)
            {
                let id = sub.nqn[self.cfg.managed_prefix.len()..].to_string();
                return Ok(Some(VolumeTarget {
                    volume_id: id,
                    nqn: Some(sub.nqn),
                    ..Default::default()
                }));
            }
        }
        Ok(None)
    }

    async fn attached(&self) -> Result<Vec<Attached>> {
        let prefix = &self.cfg.managed_prefix;
        let class = self.cfg.sys_root.join("class/nvme-subsystem");
        let nqns: Vec<String> = if class.exists() {
            scan_subsystems(&self.cfg.sys_root)?
                .into_iter()
                .map(|s| s.nqn)
                .collect()
        } else {
            // No sysfs class view (unusual container set-up): ask nvme-cli.
            let deadline = Instant::now() + Duration::from_secs(30);
            self.list_subsys(deadline)
                .await?
                .into_iter()
                .map(|s| s.nqn)
                .collect()
        };
        let mut out = Vec::new();
        for nqn in nqns {
            if !is_managed_nqn(&nqn, prefix) {
                continue;
            }
            let device = self.ready_device(&nqn)?;
            out.push(Attached {
                target: VolumeTarget {
                    volume_id: nqn[prefix.len()..].to_string(),
                    nqn: Some(nqn),
                    ..Default::default()
                },
                device,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree with one subsystem of `nqn` whose controllers have the given states.
    fn sysfs_with(nqn: &str, states: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let sub = root.path().join("class/nvme-subsystem/nvme-subsys0");
        std::fs::create_dir_all(sub.join("nvme0n1")).unwrap();
        std::fs::write(sub.join("subsysnqn"), format!("{nqn}\n")).unwrap();
        std::fs::write(sub.join("nvme0n1/size"), "2048\n").unwrap();
        for (i, state) in states.iter().enumerate() {
            std::fs::create_dir_all(sub.join(format!("nvme{i}"))).unwrap();
            std::fs::write(sub.join(format!("nvme{i}/state")), format!("{state}\n")).unwrap();
        }
        root
    }

    #[tokio::test]
    async fn a_controller_that_is_not_live_is_a_problem_until_one_is() {
        let nqn = "nqn.2000-02.com.mikrotik:pvc-1";
        let target = VolumeTarget {
            volume_id: "pvc-1".into(),
            nqn: Some(nqn.into()),
            address: Some("10.0.0.1".parse().unwrap()),
            port: Some(4420),
            ..Default::default()
        };
        let connector = |root: &Path| {
            let mut cfg = NvmeConfig::new("nqn.host", "nqn.2000-02.com.mikrotik:");
            cfg.sys_root = root.to_path_buf();
            NvmeTcpConnector::new(cfg)
        };
        let live = sysfs_with(nqn, &["live"]);
        assert_eq!(
            connector(live.path())
                .attachment_problem(&target)
                .await
                .unwrap(),
            None
        );

        let down = sysfs_with(nqn, &["connecting"]);
        let c = connector(down.path());
        let problem = c.attachment_problem(&target).await.unwrap().unwrap();
        assert!(problem.contains("nvme0 is connecting"), "{problem}");
        assert!(problem.contains("10.0.0.1:4420"), "{problem}");
        assert!(problem.contains("for 0s"), "{problem}");
        // Either path live (multipath) is enough; back to live clears it.
        std::fs::write(
            down.path()
                .join("class/nvme-subsystem/nvme-subsys0/nvme0/state"),
            "live\n",
        )
        .unwrap();
        assert_eq!(c.attachment_problem(&target).await.unwrap(), None);
        let two = sysfs_with(nqn, &["resetting", "live"]);
        assert_eq!(
            connector(two.path())
                .attachment_problem(&target)
                .await
                .unwrap(),
            None
        );
        // Detached while down: the outage is forgotten with the volume.
        let again = sysfs_with(nqn, &["connecting"]);
        let c = connector(again.path());
        assert!(c.attachment_problem(&target).await.unwrap().is_some());
        std::fs::remove_dir_all(again.path().join("class/nvme-subsystem")).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        c.detach(&target, deadline).await.unwrap();
        assert!(c.down_since.lock().unwrap().is_empty());
        // No subsystem at all is no attachment: the device lookup reports that.
        let none = tempfile::tempdir().unwrap();
        assert_eq!(
            connector(none.path())
                .attachment_problem(&target)
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn namespace_names_exclude_hidden_paths() {
        assert!(is_namespace_name("nvme0n1"));
        assert!(is_namespace_name("nvme12n3"));
        assert!(!is_namespace_name("nvme0c1n1"));
        assert!(!is_namespace_name("nvme0"));
        assert!(!is_namespace_name("nvme0n1p1"));
        assert!(is_ctrl_name("nvme3"));
        assert!(!is_ctrl_name("nvme-subsys3"));
    }

    #[test]
    fn derived_host_nqn_is_stable_and_per_node() {
        let (a, ida) = derived_host_nqn("node-a");
        assert_eq!(derived_host_nqn("node-a").0, a);
        assert_ne!(derived_host_nqn("node-b").0, a);
        assert!(a.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        assert!(a.ends_with(&ida));
    }

    #[test]
    fn natural_sort() {
        let mut v = vec!["nvme10n1", "nvme2n1", "nvme1n2", "nvme1n10"];
        v.sort_by_key(|a| natural_key(a));
        assert_eq!(v, vec!["nvme1n2", "nvme1n10", "nvme2n1", "nvme10n1"]);
    }
}
