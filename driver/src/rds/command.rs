//! Typed RouterOS commands. Every value that reaches a command line is first validated against a
//! strict grammar (a newtype can only hold a valid value) and is then double-quoted, so no input
//! can add, remove or reshape an argument.

use std::fmt;

use thiserror::Error;

/// The NQN prefix the earlier Go driver used; existing exports carry it.
pub const NQN_PREFIX: &str = "nqn.2000-02.com.mikrotik:";

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Longest slot accepted; leaves room for the NQN prefix within the 223-byte NQN limit.
pub const MAX_SLOT_LEN: usize = 64;
const MAX_PATH_LEN: usize = 255;
const MAX_NQN_LEN: usize = 223;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidValue {
    #[error(
        "slot `{0}` is invalid: use 1 to 64 of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    Slot(String),
    #[error("path `{0}` is invalid: {1}")]
    Path(String, &'static str),
    #[error("path `{path}` is not under the base path `{base}`")]
    OutsideBase { path: String, base: String },
    #[error("NQN `{0}` is invalid")]
    Nqn(String),
    #[error("port {0} is invalid: use 1 to 65535")]
    Port(u32),
    #[error("size {0} is invalid: must be at least 1 byte and at most 1 EiB")]
    Size(u64),
    #[error("mount point `{0}` is invalid")]
    MountPoint(String),
}

/// A RouterOS disk slot: `[a-z0-9-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(String);

impl Slot {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= MAX_SLOT_LEN
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidValue::Slot(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The NQN a volume in this slot is exported under.
    pub fn nqn(&self) -> Nqn {
        Nqn(format!("{NQN_PREFIX}{}", self.0))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An absolute path on the RDS, made of `[A-Za-z0-9._-]` components: no `.`/`..`
/// components, no empty component, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RdsPath(String);

impl RdsPath {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let bad = |why| Err(InvalidValue::Path(s.clone(), why));
        if s.len() > MAX_PATH_LEN {
            return bad("longer than 255 bytes");
        }
        let Some(rest) = s.strip_prefix('/') else {
            return bad("not absolute");
        };
        if rest.is_empty() {
            return bad("the root directory is not allowed");
        }
        for component in rest.split('/') {
            if component.is_empty() {
                return bad("empty component (`//` or trailing `/`)");
            }
            if component == "." || component == ".." {
                return bad("`.` and `..` components are not allowed");
            }
            if !component
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return bad("only A-Z, a-z, 0-9, '.', '_', '-' and '/' are allowed");
            }
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `child` appended as one more component, validated.
    pub fn join(&self, child: &str) -> Result<Self, InvalidValue> {
        if child.contains('/') {
            return Err(InvalidValue::Path(
                child.to_string(),
                "a file name must not contain '/'",
            ));
        }
        Self::new(format!("{}/{child}", self.0))
    }

    /// True when `self` is `base` or lies below it; compared by whole components, so
    /// `/pool/csi-old/x` is not under `/pool/csi`.
    pub fn is_under(&self, base: &RdsPath) -> bool {
        self.0
            .strip_prefix(base.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Checks that this path lies below `base`.
    pub fn require_under(&self, base: &RdsPath) -> Result<(), InvalidValue> {
        if self.is_under(base) {
            Ok(())
        } else {
            Err(InvalidValue::OutsideBase {
                path: self.0.clone(),
                base: base.0.clone(),
            })
        }
    }

    /// The name RouterOS's `/file` menu uses: the path without its leading slash.
    pub fn file_name(&self) -> &str {
        &self.0[1..]
    }

    /// The first component, which is the mount point of the pool disk holding the path
    /// (`/storage-pool/metal-csi` is on `storage-pool`).
    pub fn mount_point(&self) -> &str {
        self.file_name().split('/').next().unwrap_or_default()
    }
}

impl fmt::Display for RdsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An NVMe Qualified Name: `nqn.YYYY-MM.reverse.domain:suffix`, lowercase, at most 223 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nqn(String);

impl Nqn {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if is_valid_nqn(&s) {
            Ok(Self(s))
        } else {
            Err(InvalidValue::Nqn(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Nqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid_nqn(s: &str) -> bool {
    if s.len() > MAX_NQN_LEN {
        return false;
    }
    let Some(rest) = s.strip_prefix("nqn.") else {
        return false;
    };
    // `YYYY-MM.`, then the reverse domain.
    let Some((date, domain_and_suffix)) = rest.split_at_checked(8) else {
        return false;
    };
    let b = date.as_bytes();
    let date_ok = b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'.';
    if !date_ok {
        return false;
    }
    let Some((domain, suffix)) = domain_and_suffix.split_once(':') else {
        return false;
    };
    !domain.is_empty()
        && domain
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-'))
        && !suffix.is_empty()
        // Host NQNs carry a second colon (`...nvmexpress:uuid:<uuid>`).
        && suffix.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-' | b':')
        })
}

/// A TCP port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(u16);

impl Port {
    pub fn new(p: u32) -> Result<Self, InvalidValue> {
        match u16::try_from(p) {
            Ok(v) if v > 0 => Ok(Self(v)),
            _ => Err(InvalidValue::Port(p)),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// A disk size that RouterOS can allocate exactly: a positive whole number of MiB. Requests are
/// rounded up, never down, so a volume is never smaller than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocSize(u64);

impl AllocSize {
    /// The largest size accepted (1 EiB): far above any pool, far below overflow.
    pub const MAX: u64 = 1 << 60;

    /// Rounds `bytes` up to a whole MiB.
    pub fn round_up(bytes: u64) -> Result<Self, InvalidValue> {
        if bytes == 0 || bytes > Self::MAX {
            return Err(InvalidValue::Size(bytes));
        }
        Ok(Self(bytes.div_ceil(MIB) * MIB))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// `10G` when a whole GiB (the form seen working on hardware), else `<n>M`.
    fn render(self) -> String {
        if self.0.is_multiple_of(GIB) {
            format!("{}G", self.0 / GIB)
        } else {
            format!("{}M", self.0 / MIB)
        }
    }
}

/// A mount point name of a pool disk (`storage-pool`), as used in `where mount-point=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint(String);

impl MountPoint {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidValue::MountPoint(s))
        }
    }
}

/// Double-quotes a value for the RouterOS CLI. The grammars above admit none of the characters
/// RouterOS treats specially inside a string (`"`, `\`, `$`), so escaping is a second line of
/// defence only.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A new file-backed disk, optionally a copy of another disk and optionally exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAdd {
    pub slot: Slot,
    pub file_path: RdsPath,
    /// None for a copy that takes the source's size.
    pub size: Option<AllocSize>,
    pub copy_from: Option<Slot>,
    pub export: Option<NvmeExport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeExport {
    pub port: Port,
    pub nqn: Nqn,
}

/// Which disks a `/disk print detail` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFilter {
    All,
    Slot(Slot),
    MountPoint(MountPoint),
}

/// Which files a `/file print detail` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFilter {
    /// Exactly this file.
    Name(RdsPath),
    /// Everything below this directory. An unanchored regex without backslashes (some RouterOS
    /// builds may not support anchors): path characters other than `.` are literal, and the
    /// caller keeps only names that really start with the directory.
    Under(RdsPath),
}

/// Every RouterOS command the driver sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    DiskAdd(DiskAdd),
    DiskSetSize {
        slot: Slot,
        size: AllocSize,
    },
    DiskRemove {
        slot: Slot,
    },
    /// Exports a disk over NVMe/TCP with these settings, or stops exporting it.
    DiskSetExport {
        slot: Slot,
        export: Option<NvmeExport>,
    },
    /// Exports a disk and sets who may connect in one command, so a fenced disk is never
    /// exported without its fence (`host` None: any host).
    DiskSetExportFenced {
        slot: Slot,
        export: NvmeExport,
        host: Option<Nqn>,
    },
    /// Lets only this host NQN connect to an exported disk (`None`: any host).
    DiskSetAllowedHost {
        slot: Slot,
        host: Option<Nqn>,
    },
    DiskPrint(DiskFilter),
    FilePrint(FileFilter),
    FileRemove {
        path: RdsPath,
    },
    /// `/file add type=directory`: RouterOS may not create a disk's directory itself.
    FileAddDirectory {
        path: RdsPath,
    },
    /// `:put [/file get [find name=...] size]`: a file's size through RouterOS scripting, which
    /// may print an exact byte count where `/file print` shows only a rounded human size. Not
    /// known to work on every RouterOS build: see `RdsClient::exact_file_size`.
    FileExactSize {
        path: RdsPath,
    },
    MonitorTraffic {
        slot: Slot,
    },
    Identity,
    /// `/system clock print`: the RDS's time and offset from UTC.
    Clock,
    /// Several of the above in one exec, with checks and markers (`script`).
    Script(super::script::Script),
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::DiskAdd(a) if a.copy_from.is_some() => "disk-copy",
            Command::DiskAdd(_) => "disk-add",
            Command::Script(script) => script.kind(),
            Command::DiskSetSize { .. } => "disk-set-size",
            Command::DiskRemove { .. } => "disk-remove",
            Command::DiskSetExport { .. } => "disk-set-export",
            Command::DiskSetExportFenced { .. } => "disk-set-export-fenced",
            Command::DiskSetAllowedHost { .. } => "disk-set-allowed-host",
            Command::DiskPrint(DiskFilter::MountPoint(_)) => "capacity",
            Command::DiskPrint(_) => "disk-print",
            Command::FilePrint(_) => "file-print",
            Command::FileRemove { .. } => "file-remove",
            Command::FileAddDirectory { .. } => "file-add-directory",
            Command::FileExactSize { .. } => "file-exact-size",
            Command::MonitorTraffic { .. } => "monitor-traffic",
            Command::Identity => "identity",
            Command::Clock => "clock",
        }
    }

    /// Whether the command is a `print detail` listing, which `print terse` can replace.
    pub fn is_listing(&self) -> bool {
        matches!(self, Command::DiskPrint(_) | Command::FilePrint(_))
    }

    /// The command line with `print terse` instead of `print detail` (listings only).
    pub fn render_terse(&self) -> String {
        let line = self.render();
        if self.is_listing() {
            line.replacen(" print detail", " print terse", 1)
        } else {
            line
        }
    }

    /// Whether the command copies a disk's data (`/disk add copy-from=...`), which takes time
    /// proportional to the data.
    pub fn is_copy(&self) -> bool {
        match self {
            Command::DiskAdd(add) => add.copy_from.is_some(),
            Command::Script(script) => script.is_copy(),
            _ => false,
        }
    }

    /// Whether the command changes state on the RDS (and so must be reconciled, not blindly
    /// repeated, after a lost reply).
    pub fn is_mutating(&self) -> bool {
        if let Command::Script(script) = self {
            return script.is_mutating();
        }
        matches!(
            self,
            Command::DiskAdd(_)
                | Command::DiskSetSize { .. }
                | Command::DiskRemove { .. }
                | Command::DiskSetExport { .. }
                | Command::DiskSetExportFenced { .. }
                | Command::DiskSetAllowedHost { .. }
                | Command::FileRemove { .. }
                | Command::FileAddDirectory { .. }
        )
    }

    /// The single command line sent as the SSH exec payload.
    pub fn render(&self) -> String {
        match self {
            Command::DiskAdd(add) => {
                let mut line = String::from("/disk add type=file");
                if let Some(src) = &add.copy_from {
                    line += &format!(" copy-from=[find slot={}]", quote(src.as_str()));
                }
                line += &format!(" file-path={}", quote(add.file_path.as_str()));
                if let Some(size) = add.size {
                    line += &format!(" file-size={}", quote(&size.render()));
                }
                line += &format!(" slot={}", quote(add.slot.as_str()));
                match &add.export {
                    Some(export) => line += &export_args(export),
                    // Said outright: a copy could otherwise keep its source's export (and NQN).
                    None => line += " nvme-tcp-export=no",
                }
                line
            }
            Command::DiskSetExport { slot, export } => format!(
                "/disk set [find slot={}]{}",
                quote(slot.as_str()),
                export
                    .as_ref()
                    .map_or_else(|| " nvme-tcp-export=no".to_string(), export_args)
            ),
            Command::DiskSetExportFenced { slot, export, host } => format!(
                "/disk set [find slot={}]{} nvme-tcp-server-allow-host-name={}",
                quote(slot.as_str()),
                export_args(export),
                quote(host.as_ref().map_or("", Nqn::as_str))
            ),
            Command::DiskSetAllowedHost { slot, host } => format!(
                "/disk set [find slot={}] nvme-tcp-server-allow-host-name={}",
                quote(slot.as_str()),
                quote(host.as_ref().map_or("", Nqn::as_str))
            ),
            Command::DiskSetSize { slot, size } => format!(
                "/disk set [find slot={}] file-size={}",
                quote(slot.as_str()),
                quote(&size.render())
            ),
            Command::DiskRemove { slot } => {
                format!("/disk remove [find slot={}]", quote(slot.as_str()))
            }
            Command::DiskPrint(DiskFilter::All) => "/disk print detail".into(),
            Command::DiskPrint(DiskFilter::Slot(slot)) => {
                format!("/disk print detail where slot={}", quote(slot.as_str()))
            }
            Command::DiskPrint(DiskFilter::MountPoint(mp)) => {
                format!("/disk print detail where mount-point={}", quote(&mp.0))
            }
            Command::FilePrint(FileFilter::Name(path)) => {
                format!("/file print detail where name={}", quote(path.file_name()))
            }
            Command::FilePrint(FileFilter::Under(dir)) => format!(
                "/file print detail where name~{}",
                quote(&format!("{}/", dir.file_name()))
            ),
            Command::FileRemove { path } => {
                format!("/file remove [find name={}]", quote(path.file_name()))
            }
            Command::FileAddDirectory { path } => {
                format!("/file add type=directory name={}", quote(path.file_name()))
            }
            Command::FileExactSize { path } => {
                format!(
                    ":put [/file get [find name={}] size]",
                    quote(path.file_name())
                )
            }
            Command::MonitorTraffic { slot } => {
                format!("/disk monitor-traffic {} once", quote(slot.as_str()))
            }
            Command::Identity => "/system identity print".into(),
            Command::Script(script) => script.line().to_string(),
            Command::Clock => "/system clock print".into(),
        }
    }
}

fn export_args(export: &NvmeExport) -> String {
    format!(
        " nvme-tcp-export=yes nvme-tcp-server-port={} nvme-tcp-server-nqn={}",
        quote(&export.port.get().to_string()),
        quote(export.nqn.as_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(s: &str) -> Slot {
        Slot::new(s).unwrap()
    }
    fn path(s: &str) -> RdsPath {
        RdsPath::new(s).unwrap()
    }

    #[test]
    fn slot_grammar() {
        for ok in [
            "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8",
            "a",
            "0-x",
            &"a".repeat(64),
        ] {
            assert!(Slot::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "pvc_x",
            "a b",
            "a\"",
            "x;y",
            "a]",
            "a=b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Slot::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_grammar_and_base_boundary() {
        let base = path("/storage-pool/metal-csi");
        assert!(path("/storage-pool/metal-csi/pvc-1.img").is_under(&base));
        assert!(!path("/storage-pool/metal-csi-evil/pvc-1.img").is_under(&base));
        assert!(!path("/storage-pool/metal-csi").is_under(&base));
        assert!(!path("/storage-pool").is_under(&base));
        assert!(path("/storage-pool/metal-csi/pvc-1.img")
            .require_under(&base)
            .is_ok());
        let e = path("/storage-pool/metal-csi-evil/pvc-1.img")
            .require_under(&base)
            .unwrap_err();
        assert!(e.to_string().contains("metal-csi-evil"), "{e}");
        for bad in [
            "", "relative", "/", "/a//b", "/a/", "/a/../b", "/a/./b", "/a b", "/a=b", "/a\"b",
            "/a$b", "/a;b", "/a\nb", "/a\\b", "/a[b]",
        ] {
            assert!(RdsPath::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(base.file_name(), "storage-pool/metal-csi");
        assert_eq!(base.mount_point(), "storage-pool");
        assert!(base.join("a/b").is_err());
        assert_eq!(
            base.join("x.img").unwrap().as_str(),
            "/storage-pool/metal-csi/x.img"
        );
    }

    #[test]
    fn nqn_and_port_grammar() {
        assert_eq!(
            slot("pvc-1").nqn().as_str(),
            "nqn.2000-02.com.mikrotik:pvc-1"
        );
        assert!(Nqn::new("nqn.2000-02.com.mikrotik:pvc-1").is_ok());
        for bad in [
            "nqn.2000-02.com.mikrotik:",
            "nqn.200-02.com.mikrotik:x",
            "nqn.2000-02.com.Mikrotik:x",
            "nqn.2000-02.com.mikrotik:x y",
            "iqn.2000-02.com.mikrotik:x",
            "nqn.2000-02.:x",
            "nqn.2000",
        ] {
            assert!(Nqn::new(bad).is_err(), "{bad}");
        }
        let longest = format!("nqn.2000-02.com.mikrotik:{}", "a".repeat(198));
        assert_eq!(longest.len(), 223);
        assert_eq!(Nqn::new(longest.clone()).unwrap().to_string(), longest);
        assert!(Nqn::new(format!("nqn.2000-02.com.mikrotik:{}", "a".repeat(199))).is_err());
        // Each part of the date on its own: year, hyphen, month, dot.
        for bad_date in [
            "nqn.20a0-02.com.mikrotik:x",
            "nqn.2000_02.com.mikrotik:x",
            "nqn.2000-0a.com.mikrotik:x",
            "nqn.2000-02-com.mikrotik:x",
        ] {
            assert!(Nqn::new(bad_date).is_err(), "{bad_date}");
        }
        assert!(Port::new(0).is_err());
        assert!(Port::new(65536).is_err());
        assert_eq!(Port::new(4420).unwrap().get(), 4420);
    }

    #[test]
    fn sizes_round_up_never_down() {
        assert_eq!(AllocSize::round_up(1).unwrap().bytes(), 1 << 20);
        assert_eq!(AllocSize::round_up(1 << 20).unwrap().bytes(), 1 << 20);
        let one_and_half_gib = 3 << 29;
        assert_eq!(
            AllocSize::round_up(one_and_half_gib).unwrap().render(),
            "1536M"
        );
        assert_eq!(AllocSize::round_up(10 << 30).unwrap().render(), "10G");
        assert_eq!(
            AllocSize::round_up((1 << 30) + 1).unwrap().render(),
            "1025M"
        );
        assert!(AllocSize::round_up(0).is_err());
        assert!(AllocSize::round_up(u64::MAX).is_err());
        assert_eq!(
            AllocSize::round_up(AllocSize::MAX).unwrap().bytes(),
            AllocSize::MAX
        );
        assert!(AllocSize::round_up(AllocSize::MAX + 1).is_err());
    }

    #[test]
    fn renders_quoted_commands() {
        let add = Command::DiskAdd(DiskAdd {
            slot: slot("pvc-1"),
            file_path: path("/storage-pool/metal-csi/pvc-1.img"),
            size: Some(AllocSize::round_up(10 << 30).unwrap()),
            copy_from: None,
            export: Some(NvmeExport {
                port: Port::new(4420).unwrap(),
                nqn: slot("pvc-1").nqn(),
            }),
        });
        assert_eq!(
            add.render(),
            "/disk add type=file file-path=\"/storage-pool/metal-csi/pvc-1.img\" \
             file-size=\"10G\" slot=\"pvc-1\" nvme-tcp-export=yes nvme-tcp-server-port=\"4420\" \
             nvme-tcp-server-nqn=\"nqn.2000-02.com.mikrotik:pvc-1\""
        );
        let snap = Command::DiskAdd(DiskAdd {
            slot: slot("snap-1"),
            file_path: path("/storage-pool/metal-csi/snap-1.img"),
            size: None,
            copy_from: Some(slot("pvc-1")),
            export: None,
        });
        assert_eq!(
            snap.render(),
            "/disk add type=file copy-from=[find slot=\"pvc-1\"] \
             file-path=\"/storage-pool/metal-csi/snap-1.img\" slot=\"snap-1\" nvme-tcp-export=no"
        );
        assert_eq!(
            Command::DiskRemove {
                slot: slot("pvc-1")
            }
            .render(),
            "/disk remove [find slot=\"pvc-1\"]"
        );
        assert_eq!(
            Command::FileRemove {
                path: path("/storage-pool/metal-csi/pvc-1.img")
            }
            .render(),
            "/file remove [find name=\"storage-pool/metal-csi/pvc-1.img\"]"
        );
        assert_eq!(
            Command::FilePrint(FileFilter::Under(path("/storage-pool/metal-csi"))).render(),
            "/file print detail where name~\"storage-pool/metal-csi/\""
        );
        assert_eq!(
            Command::DiskPrint(DiskFilter::MountPoint(
                MountPoint::new("storage-pool").unwrap()
            ))
            .render(),
            "/disk print detail where mount-point=\"storage-pool\""
        );
        assert_eq!(quote("a\"b\\c$d"), "\"a\\\"b\\\\c\\$d\"");
        let exact = Command::FileExactSize {
            path: path("/storage-pool/metal-csi/pvc-1.img"),
        };
        assert_eq!(
            exact.render(),
            ":put [/file get [find name=\"storage-pool/metal-csi/pvc-1.img\"] size]"
        );
        assert!(!exact.is_listing() && !exact.is_mutating() && !exact.is_copy());
        assert_eq!(exact.kind(), "file-exact-size");
    }

    /// What the client decides from a command: a mutation is reconciled after a lost reply,
    /// never blindly repeated; a copy gets a longer deadline; a listing may be printed terse.
    #[test]
    fn commands_are_classified_by_what_they_do_on_the_rds() {
        let add = |copy_from: Option<Slot>| {
            Command::DiskAdd(DiskAdd {
                slot: slot("pvc-2"),
                file_path: path("/storage-pool/metal-csi/pvc-2.img"),
                size: None,
                copy_from,
                export: None,
            })
        };
        let copy = add(Some(slot("pvc-1")));
        assert_eq!((copy.kind(), copy.is_copy()), ("disk-copy", true));
        let plain = add(None);
        assert_eq!((plain.kind(), plain.is_copy()), ("disk-add", false));
        let mutations = [
            copy,
            plain,
            Command::DiskSetSize {
                slot: slot("pvc-1"),
                size: AllocSize::round_up(1 << 30).unwrap(),
            },
            Command::DiskRemove {
                slot: slot("pvc-1"),
            },
            Command::DiskSetExport {
                slot: slot("pvc-1"),
                export: None,
            },
            Command::DiskSetAllowedHost {
                slot: slot("pvc-1"),
                host: None,
            },
            Command::FileRemove {
                path: path("/storage-pool/metal-csi/pvc-1.img"),
            },
            Command::FileAddDirectory {
                path: path("/storage-pool/metal-csi"),
            },
        ];
        for command in &mutations {
            assert!(command.is_mutating(), "{}", command.kind());
            assert!(!command.is_listing(), "{}", command.kind());
            assert_eq!(command.render_terse(), command.render());
        }
        let listings = [
            Command::DiskPrint(DiskFilter::MountPoint(
                MountPoint::new("storage-pool").unwrap(),
            )),
            Command::FilePrint(FileFilter::Under(path("/storage-pool/metal-csi"))),
        ];
        for command in &listings {
            assert!(command.is_listing() && !command.is_mutating() && !command.is_copy());
            let terse = command.render_terse();
            assert!(terse.contains(" print terse where "), "{terse}");
            assert_eq!(
                terse.replace(" print terse", " print detail"),
                command.render()
            );
        }
    }
}
