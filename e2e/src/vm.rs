//! The VM tier: tests of the real NVMe/TCP data path run inside a virtual machine (virtme-ng,
//! qemu and Debian's kernel, whose NVMe/TCP target and initiator this machine's kernel may lack).
//! The host's root filesystem is shared read-only, so the VM runs the binaries and the test
//! executable already built here; nothing is compiled inside it.
//!
//! Host side: [`requirements`] says what is missing, [`boot`] runs a command in a VM under a hard
//! deadline. Guest side: [`guest_setup`] loads the kernel modules, and the helpers below read what
//! the kernel really has (sysfs, configfs, mounts) and undo what a failed test left.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Set in the guest: the test executable is running inside the VM.
pub const IN_VM_ENV: &str = "RDS_CSI_E2E_IN_VM";
/// Where the guest keeps sockets, state and backing files: a tmpfs (a 9p share cannot hold
/// Unix sockets, and tmpfs takes the target's buffered I/O).
pub const GUEST_TMP: &str = "/run/rds-e2e";
/// The kernel target's configfs in the guest.
pub const NVMET_CONFIGFS: &str = "/sys/kernel/config/nvmet";

pub fn in_vm() -> bool {
    std::env::var_os(IN_VM_ENV).is_some()
}

/// Under CI a missing tool fails the tier; elsewhere it is skipped with the reason.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The newest `/boot/vmlinuz-<version>` whose modules include the NVMe/TCP target.
pub fn find_kernel() -> Option<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            let target = Path::new("/lib/modules")
                .join(&version)
                .join("kernel/drivers/nvme/target");
            let has_tcp = std::fs::read_dir(&target)
                .ok()?
                .flatten()
                .any(|m| m.file_name().to_string_lossy().starts_with("nvmet-tcp.ko"));
            has_tcp.then(|| (version, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// What the VM tier needs and this machine lacks, each with how to get it (`make test`
/// installs them as root on Debian).
pub fn requirements() -> Vec<String> {
    let mut missing = Vec::new();
    for (tool, how) in [
        ("vng", "virtme-ng: pip install virtme-ng"),
        (
            "qemu-system-x86_64",
            "qemu: apt-get install qemu-system-x86",
        ),
        ("busybox", "apt-get install busybox-static"),
        ("nvme", "nvme-cli: apt-get install nvme-cli"),
        ("mkfs.xfs", "apt-get install xfsprogs"),
        ("mkfs.ext4", "apt-get install e2fsprogs"),
        ("cryptsetup", "apt-get install cryptsetup-bin"),
    ] {
        if !on_path(tool) {
            missing.push(format!("{tool} ({how})"));
        }
    }
    if find_kernel().is_none() {
        missing.push(
            "a kernel with the NVMe/TCP target under /boot and /lib/modules \
             (apt-get install linux-image-amd64)"
                .into(),
        );
    }
    if !crate::is_root() {
        missing.push("root (the VM's kernel target and mounts need it)".into());
    }
    missing
}

fn vng_command(kernel: &Path, kvm: bool, exec: &str) -> Command {
    let mut cmd = Command::new("vng");
    cmd.arg("--run").arg(kernel).args([
        "--user",
        "root",
        "--force-9p",
        "--memory",
        "3G",
        "--cpus",
        "2",
    ]);
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    cmd.arg("--exec").arg(exec);
    cmd.stdin(Stdio::null());
    // Its own process group, so a deadline kills qemu along with vng.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Runs `cmd` to completion or kills its process group at `deadline`; feeds each output line
/// (stdout and stderr merged) to `line`.
fn run_bounded(
    mut cmd: Command,
    deadline: Instant,
    mut line: impl FnMut(&str),
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let (reader, writer) = std::io::pipe()?;
    cmd.stdout(writer.try_clone()?).stderr(writer);
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    drop(cmd);
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            if nix::sys::signal::kill(pgid, None).is_err() {
                return;
            }
        }
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    });
    for l in BufReader::new(reader).lines() {
        match l {
            Ok(l) => line(&l),
            Err(_) => break,
        }
    }
    let status = child.wait()?;
    let timed_out = Instant::now() >= deadline;
    // Whatever qemu left in the group goes too.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = watchdog.join();
    Ok((!timed_out).then_some(status))
}

/// Whether qemu can use KVM here: a VM that only runs `true`, given a minute.
pub fn kvm_works(kernel: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    matches!(
        run_bounded(vng_command(kernel, true, "true"), deadline, |_| {}),
        Ok(Some(s)) if s.success()
    )
}

/// Quotes a word for the guest's shell.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Boots a VM that runs `exe args` with [`IN_VM_ENV`] set and [`GUEST_TMP`] as its TMPDIR,
/// streaming its output with the prefix `vm| `. Returns the lines it printed and whether it
/// exited 0; fails when the deadline passed (the VM is killed) or the VM could not start.
pub fn boot(exe: &Path, args: &[String], timeout: Duration) -> anyhow::Result<(bool, Vec<String>)> {
    let kernel = find_kernel().context("no kernel with the NVMe/TCP target under /boot")?;
    let kvm = kvm_works(&kernel);
    eprintln!(
        "vm: booting {} ({}), deadline {timeout:?}",
        kernel.display(),
        if kvm { "KVM" } else { "software emulation" }
    );
    let mut exec = format!(
        "mkdir -p {GUEST_TMP} && exec env {IN_VM_ENV}=1 TMPDIR={GUEST_TMP} E2E_SKIP_BUILD=1 RUST_BACKTRACE=1 {}",
        sh_quote(&exe.display().to_string())
    );
    for a in args {
        exec.push(' ');
        exec.push_str(&sh_quote(a));
    }
    let mut lines = Vec::new();
    let deadline = Instant::now() + timeout;
    let status = run_bounded(vng_command(&kernel, kvm, &exec), deadline, |l| {
        println!("vm| {l}");
        lines.push(l.to_string());
    })?;
    match status {
        None => bail!("the VM did not finish within {timeout:?} and was killed"),
        Some(s) => Ok((s.success(), lines)),
    }
}

// ---- guest side ----

fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads the NVMe/TCP target and initiator and mounts configfs (the guest starts with neither).
pub fn guest_setup() -> anyhow::Result<()> {
    sh("modprobe", &["nvmet-tcp"])?;
    sh("modprobe", &["nvme-tcp"])?;
    // Encrypted volumes; Debian builds device-mapper and dm-crypt as modules.
    sh("modprobe", &["dm-crypt"])?;
    if !Path::new(NVMET_CONFIGFS).exists() {
        sh("mount", &["-t", "configfs", "none", "/sys/kernel/config"])?;
    }
    std::fs::create_dir_all(GUEST_TMP)?;
    anyhow::ensure!(
        Path::new(NVMET_CONFIGFS).join("subsystems").is_dir(),
        "{NVMET_CONFIGFS} did not appear after modprobe nvmet-tcp"
    );
    Ok(())
}

/// One connected NVMe subsystem as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub subsystem: String,
    pub nqn: String,
    /// Controllers, `nvmeN`.
    pub controllers: Vec<String>,
    /// Namespace block devices, `nvmeXnY`.
    pub namespaces: Vec<String>,
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every NVMe subsystem the kernel has connected, from `/sys/class/nvme-subsystem`.
pub fn connected() -> Vec<Connected> {
    let class = Path::new("/sys/class/nvme-subsystem");
    names(class)
        .into_iter()
        .filter_map(|s| {
            let dir = class.join(&s);
            let nqn = std::fs::read_to_string(dir.join("subsysnqn")).ok()?;
            let entries = names(&dir);
            let is_num = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            Some(Connected {
                subsystem: s,
                nqn: nqn.trim().to_string(),
                controllers: entries
                    .iter()
                    .filter(|e| e.strip_prefix("nvme").is_some_and(is_num))
                    .cloned()
                    .collect(),
                namespaces: entries
                    .iter()
                    .filter(|e| {
                        e.strip_prefix("nvme")
                            .and_then(|r| r.split_once('n'))
                            .is_some_and(|(a, b)| is_num(a) && is_num(b))
                    })
                    .cloned()
                    .collect(),
            })
        })
        .collect()
}

/// The connected subsystem of `nqn`, if any.
pub fn connection(nqn: &str) -> Option<Connected> {
    connected().into_iter().find(|c| c.nqn == nqn)
}

/// The host NQN a controller connected with (`/sys/class/nvme/nvmeN/hostnqn`).
pub fn controller_hostnqn(ctrl: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/nvme").join(ctrl).join("hostnqn"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Connects `nqn` on `addr`:`port` by hand, as another tool (or another node) would. A host NQN
/// of the `...:uuid:<uuid>` form connects with that UUID as its host ID (the kernel pairs one
/// host ID with one host NQN). nvme-cli refuses a second connection to the same address and
/// subsystem, so a second identity on this machine uses another loopback address of a target
/// listening on all of them.
pub fn nvme_connect(nqn: &str, addr: &str, port: u16, hostnqn: &str) -> anyhow::Result<()> {
    let port = port.to_string();
    let mut args = vec![
        "connect",
        "-t",
        "tcp",
        "-a",
        addr,
        "-s",
        &port,
        "-n",
        nqn,
        "--hostnqn",
        hostnqn,
    ];
    if let Some((_, id)) = hostnqn.split_once(":uuid:") {
        args.extend(["--hostid", id]);
    }
    sh("nvme", &args).map(drop)
}

/// What the kernel target serves: `subsystems/*` and `ports/*` entries of configfs.
pub fn target_entries() -> Vec<String> {
    let root = Path::new(NVMET_CONFIGFS);
    let mut out = Vec::new();
    for kind in ["subsystems", "ports", "hosts"] {
        out.extend(
            names(&root.join(kind))
                .into_iter()
                .map(|n| format!("{kind}/{n}")),
        );
    }
    out
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect()
}

/// What a test left in the guest: NVMe connections, kernel target entries, mounts under
/// [`GUEST_TMP`]. Removes them all, and says what there was.
/// The names of the open device-mapper devices the driver makes (`rds-csi-<volume>`).
pub fn driver_mappings() -> Vec<String> {
    names(Path::new("/sys/block"))
        .into_iter()
        .filter_map(|dev| {
            std::fs::read_to_string(Path::new("/sys/block").join(dev).join("dm/name")).ok()
        })
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("rds-csi-"))
        .collect()
}

pub fn sweep() -> Vec<String> {
    let mut left = Vec::new();
    let mut mounts = mounts_under(Path::new(GUEST_TMP));
    mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for m in mounts {
        left.push(format!("mount {}", m.display()));
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    // The driver's mappings before the connections under them.
    for name in driver_mappings() {
        left.push(format!("dm-crypt mapping {name}"));
        let _ = sh("cryptsetup", &["close", &name]);
    }
    for c in connected() {
        left.push(format!("NVMe connection {} ({})", c.nqn, c.subsystem));
        let _ = sh("nvme", &["disconnect", "-n", &c.nqn]);
    }
    let root = Path::new(NVMET_CONFIGFS);
    for e in target_entries() {
        left.push(format!("kernel target {e}"));
    }
    for port in names(&root.join("ports")) {
        let p = root.join("ports").join(&port);
        for s in names(&p.join("subsystems")) {
            let _ = std::fs::remove_file(p.join("subsystems").join(s));
        }
        let _ = std::fs::remove_dir(&p);
    }
    for sub in names(&root.join("subsystems")) {
        let s = root.join("subsystems").join(&sub);
        for h in names(&s.join("allowed_hosts")) {
            let _ = std::fs::remove_file(s.join("allowed_hosts").join(h));
        }
        for ns in names(&s.join("namespaces")) {
            let _ = std::fs::write(s.join("namespaces").join(&ns).join("enable"), "0");
            let _ = std::fs::remove_dir(s.join("namespaces").join(ns));
        }
        let _ = std::fs::remove_dir(&s);
    }
    for h in names(&root.join("hosts")) {
        let _ = std::fs::remove_dir(root.join("hosts").join(h));
    }
    left
}
