//! The mount table (read from `/proc/self/mountinfo`, never remembered), mounting (`mount(2)`
//! for a file system with kernel flags only, the `mount`/`umount` binaries otherwise), telling
//! a blank device (zeros where signatures sit, else `blkid`), and filesystem tools (`mkfs.*`,
//! `resize2fs`, `xfs_growfs`).

use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use tokio::time::Instant;

use super::context::FsType;
use super::error::{NodeError, Result};
use super::exec::{run, run_ok};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// The path inside the filesystem that is mounted (not `/` for bind mounts of a subtree/file).
    pub root: String,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// The file system's own options (the superblock's), shared by all its mounts.
    pub super_options: String,
}

impl MountInfo {
    /// This mount point is read-only.
    pub fn is_read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }

    /// The file system itself is read-only: mounted or remounted so, or turned read-only by the
    /// kernel after I/O errors (ext4's `errors=remount-ro`), whatever its mount points say.
    pub fn file_system_read_only(&self) -> bool {
        self.super_options.split(',').any(|o| o == "ro")
    }
}

/// Decodes the octal escapes the kernel uses for space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 2 {
                return None;
            }
            let (major, minor) = l[2].split_once(':')?;
            Some(MountInfo {
                mount_id: l[0].parse().ok()?,
                parent_id: l[1].parse().ok()?,
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                root: unescape(l[3]),
                mount_point: PathBuf::from(unescape(l[4])),
                options: l[5].to_string(),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
                super_options: r.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Canonical form of a path for comparison with mountinfo; falls back to the path itself when
/// it cannot be resolved (for example a stale mount).
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[derive(Debug, Clone)]
pub struct Mounter {
    mountinfo: PathBuf,
    mount_bin: PathBuf,
    umount_bin: PathBuf,
}

impl Default for Mounter {
    fn default() -> Self {
        Self {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            mount_bin: PathBuf::from("mount"),
            umount_bin: PathBuf::from("umount"),
        }
    }
}

impl Mounter {
    pub fn mounts(&self) -> Result<Vec<MountInfo>> {
        let text = std::fs::read_to_string(&self.mountinfo)
            .map_err(|e| NodeError::io(format!("reading {}", self.mountinfo.display()), e))?;
        Ok(parse_mountinfo(&text))
    }

    /// The topmost mount exactly at `path`, if any.
    pub fn mount_at(&self, path: &Path) -> Result<Option<MountInfo>> {
        let path = canonical(path);
        Ok(self
            .mounts()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == path))
    }

    /// Mounts that use the block device `major:minor`: filesystems on it, and bind mounts of its
    /// device node (block volumes, whose mountinfo names devtmpfs and the node's name as root).
    pub fn users_of_device(
        &self,
        major: u32,
        minor: u32,
        dev_name: &str,
    ) -> Result<Vec<MountInfo>> {
        let node_root = format!("/{dev_name}");
        Ok(self
            .mounts()?
            .into_iter()
            .filter(|m| {
                (m.major == major && m.minor == minor)
                    || (m.fs_type == "devtmpfs" && m.root == node_root)
            })
            .collect())
    }

    pub async fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: Option<&str>,
        options: &[String],
        deadline: Instant,
    ) -> Result<()> {
        if let (Some(fs), Some(flags)) = (fs_type, kernel_flags(options)) {
            return mount_syscall(source, target, fs, flags, deadline).await;
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(t) = fs_type {
            args.extend(["-t".into(), t.into()]);
        }
        if !options.is_empty() {
            args.extend(["-o".into(), options.join(",")]);
        }
        args.push(source.display().to_string());
        args.push(target.display().to_string());
        run_ok(&self.mount_bin, &args, deadline).await.map(|_| ())
    }

    /// Bind-mounts `source` on `target`; read-only needs a second, remounting step.
    pub async fn bind(
        &self,
        source: &Path,
        target: &Path,
        read_only: bool,
        deadline: Instant,
    ) -> Result<()> {
        self.mount(source, target, None, &["bind".into()], deadline)
            .await?;
        if read_only {
            let opts = ["remount,bind,ro".to_string()];
            if let Err(e) = self.mount(source, target, None, &opts, deadline).await {
                // Never leave a writable mount where a read-only one was asked for.
                let _ = self.unmount(target, deadline).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmounts everything stacked at `target`; succeeds when nothing is mounted there.
    pub async fn unmount(&self, target: &Path, deadline: Instant) -> Result<()> {
        for _ in 0..16 {
            if self.mount_at(target)?.is_none() {
                return Ok(());
            }
            run_ok(&self.umount_bin, &[target.as_os_str()], deadline).await?;
        }
        Err(NodeError::Internal(format!(
            "{} is still mounted after 16 unmounts",
            target.display()
        )))
    }
}

/// `major:minor` of a block device node.
pub fn device_numbers(device: &Path) -> Result<(u32, u32)> {
    let meta = std::fs::metadata(device).map_err(|e| NodeError::io(device.display(), e))?;
    if !meta.file_type().is_block_device() {
        return Err(NodeError::Internal(format!(
            "{} is not a block device",
            device.display()
        )));
    }
    let rdev = meta.rdev();
    Ok((
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    ))
}

/// Sets or clears a block device's read-only flag (`blockdev --setro/--setrw`). A read-only bind
/// mount of a device node does not stop writes to the device; this does, for every opener.
pub async fn set_read_only(device: &Path, read_only: bool, deadline: Instant) -> Result<()> {
    let flag = if read_only { "--setro" } else { "--setrw" };
    run_ok(
        Path::new("blockdev"),
        &[OsStr::new(flag), device.as_os_str()],
        deadline,
    )
    .await
    .map(|_| ())
}

/// Whether the kernel has the block device's read-only flag set (sysfs `ro`).
pub fn is_read_only_device(sys_root: &Path, device: &Path) -> bool {
    let Some(name) = device.file_name() else {
        return false;
    };
    let flag = sys_root.join("class/block").join(name).join("ro");
    std::fs::read_to_string(flag).is_ok_and(|v| v.trim() == "1")
}

/// Size in bytes of the block device `major:minor`, from sysfs; `None` when the device is gone.
pub fn device_size(sys_root: &Path, major: u32, minor: u32) -> Result<Option<u64>> {
    let p = sys_root.join(format!("dev/block/{major}:{minor}/size"));
    match std::fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map(|sectors| Some(sectors * 512))
            .map_err(|_| NodeError::Internal(format!("{}: not a number", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::io(p.display(), e)),
    }
}

/// The mount options that set a kernel flag, by name. Options that clear one (`rw`, `suid`,
/// `exec`, ...) are left to `mount(8)`, which reads a list left to right (`ro,rw` is
/// read-write), as are `defaults` and all others.
const KERNEL_FLAGS: &[(&str, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noexec", MsFlags::MS_NOEXEC),
    ("sync", MsFlags::MS_SYNCHRONOUS),
    ("dirsync", MsFlags::MS_DIRSYNC),
    ("relatime", MsFlags::MS_RELATIME),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
    ("lazytime", MsFlags::MS_LAZYTIME),
];

/// The flags for `options` when every one of them sets a kernel flag, so that their order
/// does not matter; None when any does not (file system options, options that clear a flag,
/// ones only `mount(8)` understands such as `nofail`), so that `mount(8)` keeps deciding
/// what they mean.
fn kernel_flags(options: &[String]) -> Option<MsFlags> {
    options.iter().try_fold(MsFlags::empty(), |flags, option| {
        let (_, flag) = KERNEL_FLAGS.iter().find(|(name, _)| name == option)?;
        Some(flags | *flag)
    })
}

/// Mounts a file system with the syscall, as `mount -t <fs> -o <flags>` would: no process to
/// start on the path of every NodeStage.
async fn mount_syscall(
    source: &Path,
    target: &Path,
    fs: &str,
    flags: MsFlags,
    deadline: Instant,
) -> Result<()> {
    let what = format!("mount -t {fs} {} {}", source.display(), target.display());
    let late =
        || NodeError::DeadlineExceeded(format!("`{what}` did not return before the deadline"));
    if Instant::now() >= deadline {
        return Err(late());
    }
    let (src, dst, kind) = (source.to_path_buf(), target.to_path_buf(), fs.to_string());
    let mut call = tokio::task::spawn_blocking(move || {
        nix::mount::mount(Some(&src), &dst, Some(kind.as_str()), flags, None::<&str>)
    });
    match tokio::time::timeout_at(deadline, &mut call).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(errno))) => Err(NodeError::Internal(format!("`{what}` failed: {errno}"))),
        Ok(Err(e)) => Err(NodeError::Internal(format!("`{what}`: {e}"))),
        Err(_) => {
            // mount(2) cannot be called off: should it succeed after all, it is undone, so
            // that a stage reported failed leaves no mount behind.
            let target = target.to_path_buf();
            tokio::spawn(async move {
                if let Ok(Ok(())) = call.await {
                    let undone = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
                    tracing::warn!(target = %target.display(), ?undone,
                        "a mount that outlived its deadline succeeded late and was undone");
                }
            });
            Err(late())
        }
    }
}

/// The start of a device that blkid's probes read, with room to spare: superblocks, partition
/// tables, LVM headers, VMFS's at 1 and 2 MiB, LUKS2's backup headers (searched up to 4 MiB).
const HEAD_PROBED: u64 = 8 << 20;
/// The end of a device that blkid's probes read, with room to spare: md RAID 0.90/1.0
/// superblocks, GPT's backup header, ZFS's last labels, DDF, Promise (about 1.5 MiB from the
/// end) and other firmware RAID metadata.
const TAIL_PROBED: u64 = 2 << 20;

/// Whether a device reads as zeros wherever a signature blkid knows would sit. A new RDS file
/// disk is sparse, so this is what a new volume looks like, and it is told without starting
/// blkid.
fn blank_where_signatures_sit(device: &Path) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut file = std::fs::File::open(device)?;
    let size = file.seek(SeekFrom::End(0))?;
    const CHUNK: usize = 256 << 10;
    // Compared as slices (a `memcmp`), fast even in a debug build.
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let head = 0..HEAD_PROBED.min(size);
    let tail = size.saturating_sub(TAIL_PROBED).max(head.end)..size;
    for range in [head, tail] {
        let mut at = range.start;
        while at < range.end {
            let len = buf.len().min((range.end - at) as usize);
            file.read_exact_at(&mut buf[..len], at)?;
            if buf[..len] != zeros[..len] {
                return Ok(false);
            }
            at += len as u64;
        }
    }
    Ok(true)
}

/// Writes zeros wherever [`blank_where_signatures_sit`] looks, and flushes them: the device
/// then reads as blank.
pub async fn zero_where_signatures_sit(device: &Path, deadline: Instant) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let path = device.to_path_buf();
    let write = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let size = file.seek(SeekFrom::End(0))?;
        let head = 0..HEAD_PROBED.min(size);
        let tail = size.saturating_sub(TAIL_PROBED).max(head.end)..size;
        let zeros = vec![0u8; 1 << 20];
        for range in [head, tail] {
            let mut at = range.start;
            while at < range.end {
                let len = zeros.len().min((range.end - at) as usize);
                file.write_all_at(&zeros[..len], at)?;
                at += len as u64;
            }
        }
        file.sync_all()
    });
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(NodeError::io(format!("zeroing {}", device.display()), e)),
        Ok(Err(e)) => Err(NodeError::Internal(format!(
            "zeroing {}: {e}",
            device.display()
        ))),
        Err(_) => Err(NodeError::DeadlineExceeded(format!(
            "zeroing {} did not finish in time",
            device.display()
        ))),
    }
}

/// What is on a device: zeros where signatures sit, else what `blkid -p` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Empty,
    Filesystem(String),
    /// A partition table or another non-filesystem signature: data we must not format over.
    Other(String),
}

pub async fn probe(device: &Path, deadline: Instant) -> Result<Probe> {
    // Blank means zeros wherever a signature would sit, told without a process: the one case
    // in which a device is formatted. Anything else is named by blkid, so that an existing
    // file system is mounted and whatever it does not recognise is refused.
    let path = device.to_path_buf();
    let read = tokio::task::spawn_blocking(move || blank_where_signatures_sit(&path));
    let unreadable = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(Ok(true))) => return Ok(Probe::Empty),
        Ok(Ok(Ok(false))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer before the deadline".to_string()),
    };
    let out = run(
        Path::new("blkid"),
        &["-p", "-o", "export", &device.display().to_string()],
        deadline,
    )
    .await?;
    match out.code {
        // Exit 2 means "nothing found", but blkid also exits 2 when it could not open or read
        // the device (a flapping NVMe path). Not blank either way.
        Some(2) if out.stderr.trim().is_empty() => match unreadable {
            None => Ok(Probe::Other(
                "data that blkid does not recognise where signatures sit".into(),
            )),
            Some(why) => Err(NodeError::Internal(format!(
                "cannot read {} to confirm it is blank: {why}; refusing to format it",
                device.display()
            ))),
        },
        Some(0) => {
            let get = |key: &str| {
                out.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(str::to_string))
            };
            if let Some(t) = get("TYPE=") {
                Ok(Probe::Filesystem(t))
            } else {
                Ok(Probe::Other(get("PTTYPE=").map_or_else(
                    || out.stdout.trim().to_string(),
                    |p| format!("partition table {p}"),
                )))
            }
        }
        // Exit 8: ambivalent probe (several signatures). Anything else: we cannot tell.
        code => Err(NodeError::Internal(format!(
            "blkid -p {} failed (exit {code:?}): {}; refusing to format a device we cannot probe",
            device.display(),
            out.stderr.trim()
        ))),
    }
}

pub async fn format(
    device: &Path,
    fs: FsType,
    options: &[String],
    deadline: Instant,
) -> Result<()> {
    let program = format!("mkfs.{}", fs.as_str());
    let mut args: Vec<String> = vec!["-q".into()];
    args.extend(options.iter().cloned());
    args.push(device.display().to_string());
    run_ok(Path::new(&program), &args, deadline)
        .await
        .map(|_| ())
}

/// Grows a mounted filesystem to fill its device.
pub async fn grow(
    fs_type: &str,
    device: &Path,
    mount_point: &Path,
    deadline: Instant,
) -> Result<()> {
    match fs_type {
        "ext4" | "ext3" | "ext2" => {
            let out = run(Path::new("resize2fs"), &[device.as_os_str()], deadline).await?;
            if !out.success() {
                // The kernel answers EPERM to online resize without CAP_SYS_RESOURCE.
                let hint = if out.stderr.contains("Permission denied") {
                    " (online ext4 resize needs CAP_SYS_RESOURCE: is the node plugin privileged?)"
                } else {
                    ""
                };
                return Err(NodeError::FailedPrecondition(format!(
                    "resize2fs {} failed: {}{hint}",
                    device.display(),
                    out.stderr.trim()
                )));
            }
        }
        "xfs" => {
            run_ok(
                Path::new("xfs_growfs"),
                &[mount_point.as_os_str()],
                deadline,
            )
            .await?;
        }
        other => {
            return Err(NodeError::FailedPrecondition(format!(
                "cannot grow a {other} filesystem"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse file of `size` with one byte set at each of `marks`.
    fn image(size: u64, marks: &[u64]) -> tempfile::NamedTempFile {
        use std::os::unix::fs::FileExt;
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        for &at in marks {
            f.as_file().write_all_at(&[0x5a], at).unwrap();
        }
        f
    }

    #[test]
    fn only_kernel_flags_are_mounted_with_the_syscall() {
        let flags = |o: &[&str]| kernel_flags(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(flags(&[]), Some(MsFlags::empty()));
        assert_eq!(
            flags(&["ro", "noatime"]),
            Some(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME)
        );
        // File system options, mount(8)'s own and any that clear a flag (their order
        // matters) go to mount(8).
        for other in [
            &["commit=7"][..],
            &["ro", "nofail"],
            &["discard"],
            &["bind"],
            &["ro", "rw"],
            &["nosuid", "suid"],
            &["defaults"],
        ] {
            assert_eq!(flags(other), None, "{other:?}");
        }
    }

    #[test]
    fn blank_only_with_zeros_wherever_signatures_sit() {
        const MIB: u64 = 1 << 20;
        let blank = |size, marks: &[u64]| blank_where_signatures_sit(image(size, marks).path());
        assert!(blank(64 * MIB, &[]).unwrap());
        // Between the probed ends: nothing blkid looks at.
        assert!(blank(64 * MIB, &[32 * MIB]).unwrap());
        // Superblocks, VMFS at 1 and 2 MiB, LUKS2 backup headers up to 4 MiB, Promise RAID
        // 3087 sectors from the end, md and GPT at the very end.
        let promise = 64 * MIB - 3087 * 512;
        for at in [
            0,
            1024,
            4096,
            MIB,
            2 * MIB,
            4 * MIB + 4095,
            8 * MIB - 1,
            promise,
            64 * MIB - 1,
        ] {
            assert!(!blank(64 * MIB, &[at]).unwrap(), "a byte at {at}");
        }
        // Smaller than both ends together: all of it is read.
        assert!(blank(MIB, &[]).unwrap());
        assert!(!blank(MIB, &[MIB / 2]).unwrap());
        assert!(blank(0, &[]).unwrap());
        assert!(blank_where_signatures_sit(Path::new("/nonexistent/device")).is_err());
    }

    #[test]
    fn parses_mountinfo_lines() {
        let text = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
80 22 7:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount rw,relatime shared:40 - ext4 /dev/loop3 rw
81 22 7:3 / /var/lib/kubelet/pods/p/volumes/with\\040space ro,relatime shared:40 - ext4 /dev/loop3 rw
90 22 0:5 /loop4 /var/lib/kubelet/pods/p/volumeDevices/dev rw,nosuid - devtmpfs udev rw,size=1k
garbage
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!((m[1].major, m[1].minor), (7, 3));
        assert_eq!(
            m[2].mount_point,
            Path::new("/var/lib/kubelet/pods/p/volumes/with space")
        );
        assert!(m[2].is_read_only());
        assert!(!m[1].is_read_only());
        assert_eq!(m[3].root, "/loop4");
        assert_eq!(m[3].fs_type, "devtmpfs");
    }
}
