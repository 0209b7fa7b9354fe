//! A real node: kubelet (built with the other components) on containerd, runc and the CNI
//! plugins from Debian, as host processes. No registry: the two images pods use (a pause image
//! and busybox) are made here from Debian's static busybox and imported with `ctr`.
//!
//! Each node keeps to its own corner of the host, so two run side by side and all of it can be
//! removed: kubelet's root directory, containerd's state and the CNI's address store under the
//! node's directory; a cgroup of its own (`cgroupRoot`, containerd and its shims in it too); a
//! bridge of its own. [`KubeletNode::teardown`] kills whatever runs in the cgroup, unmounts
//! everything under the directory, detaches the loop devices over the RDS's files and removes
//! the cgroup and the bridge; [`clean_all`] does the same for every node still up, for a run
//! ended by its deadline.
//!
//! Facts of this sandbox the set-up answers (a Firecracker VM): cgroup v1 without systemd
//! (`cgroupDriver: cgroupfs`, `failCgroupV1: false`), no swap accounting (`failSwapOn: false`),
//! no CAP_SYS_RESOURCE (kubelet and containerd keep their OOM score: `oomScoreAdj: 0`,
//! `restrict_oom_score_adj`), and a shared disk whose free space is no sign of this node's
//! pressure (eviction only at the last MiB; image GC never, as the images cannot be pulled).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{kubeconfig, ApiServer, Procs, STARTUP_TIMEOUT};
use crate::{poll_until, HostGuard};

/// The pods' images, as imported on every node.
pub const BUSYBOX_IMAGE: &str = "rds-csi.test/busybox:1";
const PAUSE_IMAGE: &str = "rds-csi.test/pause:1";
/// Set on every kubelet node, for selectors that keep pods off the nodes without a kubelet (or on).
pub const KUBELET_LABEL: &str = "rds-csi.test/kubelet";

/// What a node leaves on the host, for [`clean_all`].
#[derive(Clone)]
struct Footprint {
    dir: PathBuf,
    data_dir: PathBuf,
    cgroup: String,
    bridge: String,
}

/// Every node started and not torn down yet.
static UP: Mutex<Vec<Footprint>> = Mutex::new(Vec::new());

pub struct KubeletNode {
    pub name: String,
    /// kubelet's `--root-dir` (where it stands for `/var/lib/kubelet`).
    pub root_dir: PathBuf,
    footprint: Footprint,
    socket: PathBuf,
    kubelet: (PathBuf, Vec<String>),
}

impl KubeletNode {
    /// Starts containerd and kubelet for node `name` (the `index`th on this host, from 1) under
    /// `procs`, its files in `dir`; returns once the Node is Ready and untainted. `data_dir` is
    /// the RDS's files, whose loop devices teardown detaches.
    pub async fn start(
        bin: &Path,
        api: &ApiServer,
        dir: &Path,
        data_dir: &Path,
        name: &str,
        index: u8,
        procs: &mut Procs,
    ) -> anyhow::Result<Self> {
        let dir = dir.join(name);
        let root_dir = dir.join("kubelet");
        let cni_dir = dir.join("cni");
        for d in [&root_dir, &cni_dir.join("net.d"), &dir.join("logs")] {
            std::fs::create_dir_all(d)?;
        }
        // Names of this run's own, so two runs on one host (two clones) never share a cgroup,
        // a bridge or a subnet.
        let tag = {
            use sha2::Digest;
            use std::os::unix::ffi::OsStrExt;
            sha2::Sha256::digest(dir.as_os_str().as_bytes())
        };
        let footprint = Footprint {
            dir: dir.clone(),
            data_dir: data_dir.to_path_buf(),
            cgroup: format!("rds-csi-e2e-{}-{name}", hex(&tag[..4])),
            bridge: format!("rdscsi{}{index}", hex(&tag[..3])),
        };
        let subnet = format!("10.{}.{index}.0/24", 64 + tag[4] % 128);
        UP.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(footprint.clone());
        make_cgroup(&footprint.cgroup)?;

        let (crt, key) = api.client_certificate(
            &format!("node-{name}"),
            &format!("/O=system:nodes/CN=system:node:{name}"),
        )?;
        let node_kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &node_kubeconfig,
            kubeconfig(
                &api.dir,
                api.port,
                &format!(
                    "{{client-certificate: {}, client-key: {}}}",
                    crt.display(),
                    key.display()
                ),
            ),
        )?;
        std::fs::write(
            cni_dir.join("net.d/10-bridge.conflist"),
            serde_json::json!({
                "cniVersion": "0.4.0",
                "name": footprint.bridge,
                "plugins": [
                    {"type": "bridge", "bridge": footprint.bridge, "isGateway": true,
                     "ipMasq": false,
                     "ipam": {"type": "host-local",
                              "ranges": [[{"subnet": subnet}]],
                              "dataDir": cni_dir.join("ipam")}},
                    {"type": "loopback"}
                ]
            })
            .to_string(),
        )?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
"#,
                root = dir.join("containerd/root").display(),
                state = dir.join("containerd/state").display(),
                socket = socket.display(),
                cni = cni_dir.display(),
            ),
        )?;
        let logs = dir.join("logs");
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(&config);
        // containerd and the shims it starts live in the node's cgroup, so teardown finds them.
        let procs_file = cgroup_dir("pids", &footprint.cgroup).join("cgroup.procs");
        // SAFETY: one write(2) of the child's own pid; nothing else runs between fork and exec.
        unsafe {
            containerd.pre_exec(move || std::fs::write(&procs_file, b"0"));
        }
        procs.spawn(&format!("{name}-containerd"), containerd, &logs)?;
        poll_until("containerd's socket", STARTUP_TIMEOUT, || async {
            socket.exists().then_some(())
        })
        .await?;
        let archive = images(&dir)?;
        ctr(
            &socket,
            &["images", "import", &archive.display().to_string()],
        )
        .await?;

        let kubelet_config = dir.join("kubelet.yaml");
        std::fs::write(
            &kubelet_config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\n\
                 kind: KubeletConfiguration\n\
                 authentication: {{anonymous: {{enabled: false}}, webhook: {{enabled: false}}, \
                 x509: {{clientCAFile: {ca}}}}}\n\
                 authorization: {{mode: AlwaysAllow}}\n\
                 address: 127.0.0.1\n\
                 port: {port}\n\
                 healthzPort: 0\n\
                 readOnlyPort: 0\n\
                 cgroupDriver: cgroupfs\n\
                 cgroupRoot: /{cgroup}\n\
                 failCgroupV1: false\n\
                 failSwapOn: false\n\
                 oomScoreAdj: 0\n\
                 rotateCertificates: false\n\
                 imageGCHighThresholdPercent: 100\n\
                 imageGCLowThresholdPercent: 99\n\
                 evictionHard: {{memory.available: 1Mi, nodefs.available: 1Mi, \
                 imagefs.available: 1Mi, nodefs.inodesFree: \"1\", imagefs.inodesFree: \"1\"}}\n\
                 syncFrequency: 5s\n\
                 nodeStatusUpdateFrequency: 2s\n\
                 containerRuntimeEndpoint: unix://{socket}\n",
                ca = api.dir.join("ca.crt").display(),
                port = super::free_port()?,
                cgroup = footprint.cgroup,
                socket = socket.display(),
            ),
        )?;
        let kubelet = (
            bin.join("kubelet"),
            vec![
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", node_kubeconfig.display()),
                format!("--hostname-override={name}"),
                format!("--root-dir={}", root_dir.display()),
                format!("--node-labels={KUBELET_LABEL}=true"),
                "--v=2".into(),
            ],
        );
        let node = Self {
            name: name.to_string(),
            root_dir,
            footprint,
            socket,
            kubelet,
        };
        node.start_kubelet(procs)?;
        let admin = &api.admin;
        poll_until(&format!("node {name} Ready"), STARTUP_TIMEOUT, || async {
            let node = admin.get(&["node", name]).await.ok()??;
            let ready = node["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(())
        })
        .await?;
        admin.lift_not_ready_taint(name).await;
        Ok(node)
    }

    fn kubelet_proc(&self) -> String {
        format!("{}-kubelet", self.name)
    }

    pub fn start_kubelet(&self, procs: &mut Procs) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.kubelet.0);
        cmd.args(&self.kubelet.1);
        procs.spawn(&self.kubelet_proc(), cmd, &self.footprint.dir.join("logs"))
    }

    /// Stops kubelet (TERM, as a restart of its service does); the pods keep running.
    pub fn stop_kubelet(&self, procs: &mut Procs) {
        procs.stop(&[&self.kubelet_proc()], Duration::from_secs(10));
    }

    /// Runs `args` in a running container (`containerd://ID` from the pod's status), as
    /// `kubectl exec` would, through containerd rather than the API server's kubelet proxy.
    pub async fn exec(&self, container_id: &str, args: &[&str]) -> anyhow::Result<String> {
        let id = container_id
            .strip_prefix("containerd://")
            .with_context(|| format!("not a containerd container ID: {container_id}"))?;
        let exec_id = format!("e2e-{}", rand::random::<u32>());
        let mut all = vec!["tasks", "exec", "--exec-id", &exec_id, id];
        all.extend_from_slice(args);
        ctr(&self.socket, &all).await
    }

    /// Stops the node's processes and removes everything it put on the host.
    pub fn teardown(self, procs: &mut Procs) {
        let names: Vec<String> = procs
            .running
            .iter()
            .map(|p| p.name.clone())
            .filter(|n| n.starts_with(&format!("{}-", self.name)))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        procs.stop(&names, Duration::from_secs(10));
        clean(&self.footprint);
        UP.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f.dir != self.footprint.dir);
    }
}

/// Tears down every node still up: for a run ended early (its processes already dead or dying).
pub fn clean_all() {
    let up = std::mem::take(&mut *UP.lock().unwrap_or_else(|p| p.into_inner()));
    for footprint in &up {
        clean(footprint);
    }
}

fn clean(footprint: &Footprint) {
    kill_cgroup(&footprint.cgroup);
    // Staged and published volumes, containers' root file systems and network namespaces,
    // kubelet's own bind mount of its root; then the loop devices under them.
    if let Ok(guard) = HostGuard::new(&footprint.dir, &footprint.data_dir) {
        drop(guard);
    }
    remove_cgroup(&footprint.cgroup);
    let _ = Command::new("ip")
        .args(["link", "delete", &footprint.bridge])
        .stderr(std::process::Stdio::null())
        .status();
}

fn cgroup_dir(controller: &str, cgroup: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(controller).join(cgroup)
}

/// The hierarchies a cgroup is made in: every one mounted under /sys/fs/cgroup.
fn hierarchies() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("cgroup.procs").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn make_cgroup(cgroup: &str) -> anyhow::Result<()> {
    for h in hierarchies() {
        let dir = cgroup_dir(&h, cgroup);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        if h == "cpuset" {
            // A v1 cpuset starts with no CPUs and no memory nodes: nothing could run in it.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read(Path::new("/sys/fs/cgroup/cpuset").join(f))?;
                std::fs::write(dir.join(f), parent)?;
            }
        }
    }
    Ok(())
}

/// Every process under the cgroup, in any of its children (pods, shims), killed.
fn kill_cgroup(cgroup: &str) {
    let root = cgroup_dir("pids", cgroup);
    for _ in 0..100 {
        let pids: Vec<i32> = walk_dirs(&root)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("e2e clean-up: processes left in cgroup {cgroup}");
}

fn remove_cgroup(cgroup: &str) {
    for h in hierarchies() {
        // Children before parents.
        let mut dirs = walk_dirs(&cgroup_dir(&h, cgroup));
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// `dir` and every directory under it.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    if !dir.is_dir() {
        return Vec::new();
    }
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_dirs(&e.path()));
        }
    }
    out
}

async fn ctr(socket: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("ctr");
    cmd.arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .with_context(|| format!("ctr {} took over a minute", args.join(" ")))?
        .context("running ctr (Debian package containerd)")?;
    if !out.status.success() {
        bail!(
            "ctr {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A docker-archive (`docker save` layout) of the two images, sharing one layer: Debian's
/// static busybox with every applet linked. The pause image only sleeps: the sandbox's
/// processes are killed, never asked to stop.
fn images(dir: &Path) -> anyhow::Result<PathBuf> {
    let work = dir.join("images");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for d in ["tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let busybox = which("busybox").context("busybox (Debian package busybox-static)")?;
    std::fs::copy(&busybox, rootfs.join("bin/busybox"))?;
    let applets = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
    }
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(work.join("layer.tar"))
        .arg("."))?;
    let layer = std::fs::read(work.join("layer.tar"))?;
    let diff_id = {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(&layer))
    };
    let config = |cmd: &[&str]| {
        serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]}
        })
        .to_string()
    };
    std::fs::write(work.join("busybox.json"), config(&["/bin/sh"]))?;
    std::fs::write(
        work.join("pause.json"),
        config(&["/bin/sleep", "2147483647"]),
    )?;
    std::fs::write(
        work.join("manifest.json"),
        serde_json::json!([
            {"Config": "busybox.json", "RepoTags": [BUSYBOX_IMAGE], "Layers": ["layer.tar"]},
            {"Config": "pause.json", "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}
        ])
        .to_string(),
    )?;
    let archive = work.join("images.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&archive)
        .args(["manifest.json", "busybox.json", "pause.json", "layer.tar"]))?;
    std::fs::remove_dir_all(&rootfs)?;
    Ok(archive)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
