//! Validation of everything the CO sends: volume IDs, paths, and the volume/publish context
//! produced by the controller.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{NodeError, Result};

/// Publish context key the controller sets (to `true`) when a volume is published read-only:
/// the node then stages it read-only (device and mount) and publishes it read-only.
pub const PUBLISH_READONLY_KEY: &str = "readonly";
/// Volume context key the controller sets (to `true`) for a volume of an `encrypted` class.
pub const ENCRYPTED_KEY: &str = "encrypted";

/// Filesystems the node formats and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Ext3,
    Xfs,
}

impl FsType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ext4" => Some(FsType::Ext4),
            "ext3" => Some(FsType::Ext3),
            "xfs" => Some(FsType::Xfs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Ext3 => "ext3",
            FsType::Xfs => "xfs",
        }
    }
}

/// What a connector needs to reach one volume. Persisted in the node state record, so unstage
/// works after a restart without the volume context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VolumeTarget {
    pub volume_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Absolute path of the backing file on the RDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctrl_loss_tmo: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_delay: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_tmo: Option<u32>,
    /// `nvmeFencing: "true"`: the RDS lets in only the host NQN derived from the node ID, so the
    /// node connects with that identity whatever the host's own NQN is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
}

/// The validated volume context of a NodeStageVolume call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageContext {
    pub target: VolumeTarget,
    /// The controller published the volume read-only.
    pub read_only: bool,
    /// From the volume context; the capability's `fs_type` takes precedence (see the service).
    pub fs_type: Option<FsType>,
    /// `mkfsOptions` as given, with the field it came from; checked by [`StageContext::mkfs_args`]
    /// once the filesystem is known (the capability's `fs_type` may override the context's).
    pub mkfs_options: Option<(String, String)>,
    /// The volume is LUKS2-encrypted on the node (see `crypt`).
    pub encrypted: bool,
}

impl StageContext {
    /// The mkfs arguments for `fs`: only the allow-listed options (see [`crate::mkfs`]).
    pub fn mkfs_args(&self, fs: FsType) -> Result<Vec<String>> {
        match &self.mkfs_options {
            None => Ok(Vec::new()),
            Some((field, value)) => crate::mkfs::parse_options(fs.as_str(), value)
                .map_err(|e| NodeError::InvalidArgument(format!("{field}: {e}"))),
        }
    }
}

/// Volume IDs also name the state record file, so they are restricted to a safe alphabet.
pub fn validate_volume_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(NodeError::InvalidArgument("volume_id is required".into()));
    }
    let ok = id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(NodeError::InvalidArgument(format!(
            "volume_id `{id}` is not valid: at most 128 characters of [A-Za-z0-9._-], not starting with `.`"
        )));
    }
    Ok(())
}

/// The NQN suffix of volumes this driver creates: one of its volume IDs (`pvc-...`,
/// `vol-<uuid>`), never just any `[a-z0-9-]` name.
pub fn is_volume_suffix(s: &str) -> bool {
    crate::ids::parse_volume_id(s).is_some()
}

/// True only for NQNs this driver manages: the managed prefix followed by a volume-ID suffix.
/// Anything else (for example a node's own `/var` exported by the same RDS) is never touched.
pub fn is_managed_nqn(nqn: &str, prefix: &str) -> bool {
    !prefix.is_empty() && nqn.strip_prefix(prefix).is_some_and(is_volume_suffix)
}

/// What is wrong with a path sent by the CO.
enum PathProblem {
    Missing,
    NotAbsolute,
    ParentDir,
    OutsideRoot(PathBuf),
}

fn check_path(path: &str, root: Option<&Path>) -> std::result::Result<PathBuf, PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Missing);
    }
    let p = Path::new(path);
    if !p.is_absolute() || path.len() > 4096 || path.contains('\0') {
        return Err(PathProblem::NotAbsolute);
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(PathProblem::ParentDir);
    }
    match root {
        Some(root) if !p.starts_with(root) => Err(PathProblem::OutsideRoot(root.to_path_buf())),
        _ => Ok(p.to_path_buf()),
    }
}

fn path_error(field: &str, path: &str, problem: PathProblem) -> String {
    match problem {
        PathProblem::Missing => format!("{field} is required"),
        PathProblem::NotAbsolute => format!("{field} `{path}` must be an absolute path"),
        PathProblem::ParentDir => format!("{field} `{path}` must not contain `..`"),
        PathProblem::OutsideRoot(root) => format!(
            "{field} `{path}` is not under the kubelet directory {}",
            root.display()
        ),
    }
}

/// Validates a path sent by the CO: absolute, no `..`, and under `root` when one is configured.
pub fn validate_path(field: &str, path: &str, root: Option<&Path>) -> Result<PathBuf> {
    check_path(path, root).map_err(|p| NodeError::InvalidArgument(path_error(field, path, p)))
}

/// A path where a volume is looked for (`volume_path` of stats and expand). The node only ever
/// puts volumes at absolute paths under the kubelet directory, so a relative path or one outside
/// it does not hold the volume: NotFound (what the CSI spec and csi-sanity ask for a volume that
/// is not at the path), while a missing or `..` path is still bad input.
pub fn validate_volume_path(
    field: &str,
    path: &str,
    volume_id: &str,
    root: Option<&Path>,
) -> Result<PathBuf> {
    check_path(path, root).map_err(|problem| match problem {
        PathProblem::NotAbsolute => NodeError::NotFound(format!(
            "volume {volume_id} is not at {field} `{path}`: volumes are only ever at absolute paths"
        )),
        PathProblem::OutsideRoot(root) => NodeError::NotFound(format!(
            "volume {volume_id} is not at {field} `{path}`: volumes are only ever under the \
             kubelet directory {}",
            root.display()
        )),
        PathProblem::Missing | PathProblem::ParentDir => {
            NodeError::InvalidArgument(path_error(field, path, problem))
        }
    })
}

/// `filePath`: an absolute RDS path of `[A-Za-z0-9._/-]`, without `..`.
pub fn validate_file_path(field: &str, path: &str) -> Result<()> {
    let ok = path.starts_with('/')
        && path.len() <= 1024
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !path.split('/').any(|c| c == "..")
        && !path.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(NodeError::InvalidArgument(format!(
            "{field} `{path}` must be an absolute path of [A-Za-z0-9._/-] without `..`"
        )))
    }
}

/// The Go driver's volume context key for the backing file's full path (`filePath` in ours).
pub const GO_FILE_PATH: &str = "volumePath";

/// The Go driver's `volumePath`: `<dir>/<volume_id>.img`, of the `filePath` grammar. A path
/// naming another file could make the node attach another volume's data.
pub fn validate_go_file_path(field: &str, path: &str, volume_id: &str) -> Result<()> {
    validate_file_path(field, path)?;
    if path.rsplit('/').next() != Some(format!("{volume_id}.img").as_str()) {
        return Err(NodeError::InvalidArgument(format!(
            "{field} `{path}` is not the backing file of volume `{volume_id}`: it must end in \
             `/{volume_id}.img`"
        )));
    }
    Ok(())
}

/// The NQN of `volume_id` exactly as the controller exports it: the managed prefix and the
/// volume's own ID, of the driver's ID grammar. Anything else could name another volume or a
/// node's own export, which this node would then connect, and disconnect at unstage.
pub fn validate_nqn(field: &str, nqn: &str, volume_id: &str, managed_prefix: &str) -> Result<()> {
    if !is_managed_nqn(nqn, managed_prefix) {
        return Err(NodeError::InvalidArgument(format!(
            "{field} `{nqn}` is not managed by this driver: it must be `{managed_prefix}` followed by a volume ID of the driver (pvc-..., vol-<uuid>)"
        )));
    }
    if nqn.strip_prefix(managed_prefix) != Some(volume_id) {
        return Err(NodeError::InvalidArgument(format!(
            "{field} `{nqn}` is not the NQN of volume `{volume_id}`: it must be `{managed_prefix}{volume_id}`"
        )));
    }
    Ok(())
}

/// A mount flag: printable, no whitespace, not empty. They are passed as argv
/// elements (never through a shell), this only keeps garbage out of the logs and the kernel.
fn validate_option(field: &str, opt: &str) -> Result<()> {
    if opt.is_empty() || opt.len() > 256 || opt.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(NodeError::InvalidArgument(format!(
            "{field}: `{opt}` is not a valid option"
        )));
    }
    Ok(())
}

pub fn validate_mount_flags(flags: &[String]) -> Result<()> {
    for f in flags {
        validate_option("volume_capability.mount.mount_flags", f)?;
        if f.starts_with('-') {
            return Err(NodeError::InvalidArgument(format!(
                "volume_capability.mount.mount_flags: `{f}` must not start with `-`"
            )));
        }
    }
    Ok(())
}

fn lookup<'a>(
    vc: &'a HashMap<String, String>,
    pc: &'a HashMap<String, String>,
    vc_key: &str,
    pc_key: Option<&str>,
) -> Option<(String, &'a str)> {
    if let Some(v) = vc.get(vc_key).filter(|v| !v.is_empty()) {
        return Some((format!("volume_context.{vc_key}"), v.as_str()));
    }
    let k = pc_key?;
    pc.get(k)
        .filter(|v| !v.is_empty())
        .map(|v| (format!("publish_context.{k}"), v.as_str()))
}

fn parse_int<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    field: &str,
    v: &str,
    min: T,
    max: T,
) -> Result<T> {
    match v.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(NodeError::InvalidArgument(format!(
            "{field} `{v}` must be an integer in {min}..={max}"
        ))),
    }
}

/// Whether the controller published the volume read-only (publish context `readonly`).
pub fn publish_readonly(pc: &HashMap<String, String>) -> Result<bool> {
    match pc.get(PUBLISH_READONLY_KEY).map(String::as_str) {
        None | Some("" | "false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(NodeError::InvalidArgument(format!(
            "publish_context.{PUBLISH_READONLY_KEY} `{other}` must be true or false"
        ))),
    }
}

/// Whether the volume context marks the volume encrypted.
pub fn is_encrypted(vc: &HashMap<String, String>) -> Result<bool> {
    match vc.get(ENCRYPTED_KEY).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(NodeError::InvalidArgument(format!(
            "volume_context.{ENCRYPTED_KEY} `{other}` must be true or false"
        ))),
    }
}

/// Reads the volume context (and the Go-driver-compatible publish context as a fallback).
/// Which keys are required depends on the connector; it checks that itself.
pub fn parse_stage_context(
    volume_id: &str,
    vc: &HashMap<String, String>,
    pc: &HashMap<String, String>,
    managed_prefix: &str,
) -> Result<StageContext> {
    let mut target = VolumeTarget {
        volume_id: volume_id.to_string(),
        ..Default::default()
    };
    if let Some((field, nqn)) = lookup(vc, pc, "nqn", Some("nvme_nqn")) {
        validate_nqn(&field, nqn, volume_id, managed_prefix)?;
        target.nqn = Some(nqn.to_string());
    }
    if let Some((field, addr)) = lookup(vc, pc, "nvmeAddress", Some("nvme_address")) {
        // A literal IP only: name resolution on the node is a failure mode we do not need.
        let ip: IpAddr = addr.parse().map_err(|_| {
            NodeError::InvalidArgument(format!("{field} `{addr}` must be an IP address literal"))
        })?;
        target.address = Some(ip);
    }
    if let Some((field, port)) = lookup(vc, pc, "nvmePort", Some("nvme_port")) {
        target.port = Some(parse_int::<u16>(&field, port, 1, u16::MAX)?);
    }
    if let Some((field, fp)) = lookup(vc, pc, "filePath", None) {
        validate_file_path(&field, fp)?;
        target.file_path = Some(fp.to_string());
    } else if let Some((field, fp)) = lookup(vc, pc, GO_FILE_PATH, None) {
        validate_go_file_path(&field, fp, volume_id)?;
        target.file_path = Some(fp.to_string());
    }
    // 0 means "leave it to the kernel" (the option is not passed), as in the Go driver's PVs.
    if let Some((field, v)) = lookup(vc, pc, "ctrlLossTmo", None) {
        target.ctrl_loss_tmo = Some(parse_int::<i32>(&field, v, -1, 31_536_000)?);
    }
    if let Some((field, v)) = lookup(vc, pc, "reconnectDelay", None) {
        target.reconnect_delay = Some(parse_int::<u32>(&field, v, 0, 3600)?);
    }
    if let Some((field, v)) = lookup(vc, pc, "keepAliveTmo", None) {
        target.keep_alive_tmo = Some(parse_int::<u32>(&field, v, 0, 3600)?);
    }
    if let Some((field, v)) = lookup(vc, pc, "nvmeFencing", None) {
        target.fenced = match v {
            "true" => true,
            "false" => false,
            _ => {
                return Err(NodeError::InvalidArgument(format!(
                    "{field} `{v}` must be true or false"
                )))
            }
        };
    }
    let fs_type = match lookup(vc, pc, "fsType", Some("fs_type")) {
        Some((field, v)) => Some(FsType::parse(v).ok_or_else(|| {
            NodeError::InvalidArgument(format!("{field} `{v}` must be one of ext4, ext3, xfs"))
        })?),
        None => None,
    };
    let mkfs_options = lookup(vc, pc, "mkfsOptions", None).map(|(f, v)| (f, v.to_string()));
    Ok(StageContext {
        target,
        read_only: publish_readonly(pc)?,
        fs_type,
        mkfs_options,
        encrypted: is_encrypted(vc)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "nqn.2000-02.com.mikrotik:";

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn managed_nqn_needs_prefix_and_volume_suffix() {
        assert!(is_managed_nqn(
            "nqn.2000-02.com.mikrotik:pvc-1234-ab",
            PREFIX
        ));
        assert!(!is_managed_nqn(
            "nqn.2000-02.com.mikrotik:nixos-var.x",
            PREFIX
        ));
        assert!(!is_managed_nqn("nqn.2000-02.com.mikrotik:PVC-1", PREFIX));
        assert!(!is_managed_nqn("nqn.2000-02.com.mikrotik:", PREFIX));
        assert!(!is_managed_nqn("nqn.2000-02.com.other:pvc-1", PREFIX));
        assert!(!is_managed_nqn(
            &format!("{PREFIX}{}", "a".repeat(65)),
            PREFIX
        ));
        assert!(!is_managed_nqn("pvc-1", ""));
        // A node's own export under the same prefix is not a volume of this driver.
        assert!(!is_managed_nqn(
            "nqn.2000-02.com.mikrotik:nixos-var",
            PREFIX
        ));
        assert!(!is_managed_nqn(
            "nqn.2000-02.com.mikrotik:snap-6ec89291-e651-5af7-8470-1168d64acbcd-at-6ec89291e6",
            PREFIX
        ));
        assert!(is_managed_nqn(
            "nqn.2000-02.com.mikrotik:vol-6ec89291-e651-5af7-8470-1168d64acbcd",
            PREFIX
        ));
    }

    #[test]
    fn paths_are_absolute_without_dotdot_and_under_root() {
        assert!(validate_path("target_path", "", None).is_err());
        assert!(validate_path("target_path", "rel/x", None).is_err());
        assert!(validate_path("target_path", "/a/../b", None).is_err());
        let root = Path::new("/var/lib/kubelet");
        assert!(validate_path("t", "/var/lib/kubelet/pods/x", Some(root)).is_ok());
        assert!(validate_path("t", "/var/lib/kubeletx/pods", Some(root)).is_err());
        let e = validate_path("staging_target_path", "", None).unwrap_err();
        assert!(e.to_string().contains("staging_target_path"));
    }

    #[test]
    fn boolean_keys_take_exactly_true_or_false() {
        let stage = |vc: &[(&str, &str)], pc: &[(&str, &str)]| {
            parse_stage_context("pvc-1", &map(vc), &map(pc), PREFIX)
        };
        let plain = stage(&[], &[]).unwrap();
        assert_eq!(plain.target.volume_id, "pvc-1");
        assert!(!plain.read_only && !plain.encrypted && !plain.target.fenced);
        let set = stage(
            &[("encrypted", "true"), ("nvmeFencing", "true")],
            &[("readonly", "true")],
        )
        .unwrap();
        assert!(set.read_only && set.encrypted && set.target.fenced);
        let unset = stage(
            &[("encrypted", "false"), ("nvmeFencing", "false")],
            &[("readonly", "false")],
        )
        .unwrap();
        assert!(!unset.read_only && !unset.encrypted && !unset.target.fenced);
        for (vc, pc, field) in [
            (
                &[("encrypted", "yes")][..],
                &[][..],
                "volume_context.encrypted",
            ),
            (&[("nvmeFencing", "True")][..], &[][..], "nvmeFencing"),
            (
                &[][..],
                &[("readonly", "1")][..],
                "publish_context.readonly",
            ),
        ] {
            let e = stage(vc, pc).unwrap_err();
            assert!(matches!(e, NodeError::InvalidArgument(_)), "{e:?}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn paths_are_bounded_and_free_of_nul() {
        let at_length = |n: usize| format!("/{}", "a".repeat(n - 1));
        assert!(validate_path("target_path", &at_length(4096), None).is_ok());
        let e = validate_path("target_path", &at_length(4097), None).unwrap_err();
        assert!(e.to_string().contains("target_path"), "{e}");
        assert!(validate_path("target_path", "/a\0b", None).is_err());
    }

    #[test]
    fn filesystem_names_are_exact_and_round_trip() {
        for fs in [FsType::Ext4, FsType::Ext3, FsType::Xfs] {
            assert_eq!(FsType::parse(fs.as_str()), Some(fs));
        }
        for other in ["", "EXT4", "ext2", "btrfs", "xfs "] {
            assert_eq!(FsType::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn mount_flags_are_printable_words_that_are_not_options() {
        let longest = "a".repeat(256);
        for good in ["noatime", "data=ordered", "!", "~", longest.as_str()] {
            assert!(
                validate_mount_flags(&[good.to_string()]).is_ok(),
                "{good:?}"
            );
        }
        let too_long = "a".repeat(257);
        for bad in [
            "",
            too_long.as_str(),
            "no atime",
            "tab\there",
            "del\u{7f}",
            "é",
            "-o",
            "--bind",
        ] {
            let flags = ["noatime".to_string(), bad.to_string()];
            let e = validate_mount_flags(&flags).unwrap_err();
            assert!(matches!(e, NodeError::InvalidArgument(_)), "{bad:?}: {e:?}");
            assert!(e.to_string().contains("mount_flags"), "{e}");
        }
    }

    #[test]
    fn a_volume_path_that_cannot_hold_a_volume_is_not_found() {
        let root = Some(Path::new("/var/lib/kubelet"));
        let check = |p: &str| validate_volume_path("volume_path", p, "pvc-1", root);
        assert!(check("/var/lib/kubelet/pods/x").is_ok());
        for p in ["some/path", "/elsewhere/x"] {
            let e = check(p).unwrap_err();
            assert!(matches!(e, NodeError::NotFound(_)), "{p}: {e:?}");
            assert!(
                e.to_string().contains(p) && e.to_string().contains("pvc-1"),
                "{e}"
            );
        }
        for p in ["", "/var/lib/kubelet/../x"] {
            let e = check(p).unwrap_err();
            assert!(matches!(e, NodeError::InvalidArgument(_)), "{p}: {e:?}");
            assert!(e.to_string().contains("volume_path"), "{e}");
        }
    }

    #[test]
    fn file_path_grammar() {
        assert!(validate_file_path("f", "/storage-pool/metal-csi/pvc-1.img").is_ok());
        for bad in ["rel.img", "/a/../b.img", "/a b.img", "/a/$x", "/a/"] {
            assert!(validate_file_path("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_context_first_publish_context_fallback() {
        let vc = map(&[
            ("nqn", "nqn.2000-02.com.mikrotik:pvc-1"),
            ("nvmePort", "4420"),
            ("filePath", "/storage-pool/metal-csi/pvc-1.img"),
            ("fsType", "xfs"),
            ("mkfsOptions", "-m 0"),
            ("ctrlLossTmo", "-1"),
        ]);
        let pc = map(&[
            ("nvme_address", "10.0.0.5"),
            ("nvme_port", "9999"),
            ("nvme_nqn", "nqn.2000-02.com.mikrotik:other"),
        ]);
        let c = parse_stage_context("pvc-1", &vc, &pc, PREFIX).unwrap();
        assert_eq!(
            c.target.nqn.as_deref(),
            Some("nqn.2000-02.com.mikrotik:pvc-1")
        );
        assert_eq!(c.target.address, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(c.target.port, Some(4420));
        assert_eq!(c.target.ctrl_loss_tmo, Some(-1));
        assert_eq!(c.fs_type, Some(FsType::Xfs));
        assert_eq!(c.mkfs_args(FsType::Ext4).unwrap(), vec!["-m", "0"]);
        let e = c.mkfs_args(FsType::Xfs).unwrap_err();
        assert!(e.to_string().contains("volume_context.mkfsOptions"), "{e}");
    }

    #[test]
    fn bad_context_values_name_the_field() {
        let cases = [
            (
                "nqn",
                "nqn.2000-02.com.mikrotik:nixos.var",
                "volume_context.nqn",
            ),
            ("nvmeAddress", "rds.local", "volume_context.nvmeAddress"),
            ("nvmePort", "0", "volume_context.nvmePort"),
            ("nvmePort", "70000", "volume_context.nvmePort"),
            ("fsType", "btrfs", "volume_context.fsType"),
            ("filePath", "/x/../y", "volume_context.filePath"),
            ("reconnectDelay", "-1", "volume_context.reconnectDelay"),
            ("keepAliveTmo", "-1", "volume_context.keepAliveTmo"),
            ("ctrlLossTmo", "-2", "volume_context.ctrlLossTmo"),
        ];
        for (k, v, field) in cases {
            let e = parse_stage_context("v", &map(&[(k, v)]), &HashMap::new(), PREFIX).unwrap_err();
            assert!(matches!(e, NodeError::InvalidArgument(_)), "{k}={v}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    /// The `volumeAttributes` of a Go driver PV fixture.
    fn go_pv_context(file: &str) -> (String, HashMap<String, String>) {
        let path = format!(
            "{}/../fixtures/go-driver/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let pv: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let csi = &pv["spec"]["csi"];
        let attrs = serde_yaml::from_value(csi["volumeAttributes"].clone()).unwrap();
        (csi["volumeHandle"].as_str().unwrap().to_string(), attrs)
    }

    #[test]
    fn every_go_driver_volume_context_is_accepted_with_its_meaning() {
        let (id, vc) = go_pv_context("pv-mount.yaml");
        let c = parse_stage_context(&id, &vc, &HashMap::new(), PREFIX).unwrap();
        assert_eq!(c.target.nqn, Some(format!("{PREFIX}{id}")));
        assert_eq!(c.target.address, Some("10.42.68.1".parse().unwrap()));
        assert_eq!(c.target.port, Some(4420));
        // Its `volumePath` is the backing file's full path, our `filePath`.
        assert_eq!(
            c.target.file_path,
            Some(format!("/storage-pool/metal-csi/{id}.img"))
        );
        assert_eq!(c.target.ctrl_loss_tmo, Some(-1));
        assert_eq!(c.target.reconnect_delay, Some(5));
        // "0": the option is left to the kernel (the connector passes no -k).
        assert_eq!(c.target.keep_alive_tmo, Some(0));

        let (id, vc) = go_pv_context("pv-block.yaml");
        let c = parse_stage_context(&id, &vc, &HashMap::new(), PREFIX).unwrap();
        assert_eq!(c.target.ctrl_loss_tmo, Some(0));
        assert_eq!(
            c.target.file_path,
            Some(format!("/storage-pool/kubevirt/{id}.img"))
        );
    }

    #[test]
    fn a_go_volume_path_must_name_the_volumes_own_file() {
        let (id, mut vc) = go_pv_context("pv-mount.yaml");
        for bad in [
            "/storage-pool/metal-csi/pvc-other.img",
            "/storage-pool/metal-csi",
            "/storage-pool/../etc/pvc-x.img",
        ] {
            vc.insert("volumePath".into(), bad.into());
            let e = parse_stage_context(&id, &vc, &HashMap::new(), PREFIX).unwrap_err();
            assert!(matches!(e, NodeError::InvalidArgument(_)), "{bad}");
            assert!(e.to_string().contains("volume_context.volumePath"), "{e}");
        }
        // Our own `filePath` wins over it.
        vc.insert("filePath".into(), format!("/pool/{id}.img"));
        let c = parse_stage_context(&id, &vc, &HashMap::new(), PREFIX).unwrap();
        assert_eq!(c.target.file_path, Some(format!("/pool/{id}.img")));
    }

    #[test]
    fn volume_ids() {
        assert!(validate_volume_id("pvc-0f923194-922a").is_ok());
        assert!(validate_volume_id("").is_err());
        assert!(validate_volume_id("../x").is_err());
        assert!(validate_volume_id(".hidden").is_err());
        assert!(validate_volume_id(&"a".repeat(129)).is_err());
    }
}
