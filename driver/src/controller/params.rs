//! StorageClass parameters, validated, and the volume context they become for the node.

use std::collections::HashMap;
use std::net::IpAddr;

use tonic::Status;

use crate::rds::command::{Port, RdsPath};

/// Filesystems the node can make.
pub const FS_TYPES: &[&str] = &["ext4", "ext3", "xfs"];
pub const DEFAULT_FS_TYPE: &str = "ext4";

/// Volume context keys (shared with the node; the first four are the Go driver's).
pub mod keys {
    pub const NQN: &str = "nqn";
    pub const NVME_ADDRESS: &str = "nvmeAddress";
    pub const NVME_PORT: &str = crate::kube::attachments::NVME_PORT_KEY;
    pub const FS_TYPE: &str = "fsType";
    pub const FILE_PATH: &str = "filePath";
    pub const MKFS_OPTIONS: &str = "mkfsOptions";
    pub const CTRL_LOSS_TMO: &str = "ctrlLossTmo";
    pub const RECONNECT_DELAY: &str = "reconnectDelay";
    pub const KEEP_ALIVE_TMO: &str = "keepAliveTmo";
    pub const MIGRATION_TIMEOUT: &str = crate::kube::attachments::MIGRATION_TIMEOUT_KEY;
    /// `"true"`: the volume is fenced on the RDS (see `controller::fence`).
    pub const NVME_FENCING: &str = crate::kube::attachments::NVME_FENCING_KEY;
    /// `"true"`: the node encrypts the volume with LUKS2 (see `node::crypt`).
    pub const ENCRYPTED: &str = crate::node::context::ENCRYPTED_KEY;
}

/// StorageClass parameter names.
const VOLUME_PATH: &str = "volumePath";
const FSTYPE_STANDARD: &str = "csi.storage.k8s.io/fstype";
/// Keys the external-provisioner adds or reserves; they are not ours to check.
const PROVISIONER_PREFIX: &str = "csi.storage.k8s.io/";
/// StorageClass keys the Go driver accepted or documented that this driver does not use (the
/// RDS address, SSH port and base path come from its flags; the NQN is always the managed
/// prefix and the volume ID). StorageClasses cannot be edited, so they are accepted, with a
/// warning; any other unknown key is still an error, so a typo of one of ours is caught.
pub const GO_IGNORED_KEYS: &[&str] = &[
    "rdsAddress",
    "rdsPort",
    "sshPort",
    "nqnPrefix",
    "rdsBasePath",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    pub dir: RdsPath,
    pub nvme_address: String,
    pub nvme_port: Port,
    pub fs_type: String,
    /// `nvmeFencing: "true"`.
    pub fenced: bool,
    /// `encrypted: "true"`.
    pub encrypted: bool,
    /// Optional node settings passed through unchanged after validation.
    pub passthrough: Vec<(&'static str, String)>,
}

/// Defaults from the command line.
#[derive(Debug, Clone)]
pub struct ParamDefaults {
    /// Directories holding the driver's volumes and snapshots; the first one takes new volumes
    /// whose StorageClass names no `volumePath`. Never empty.
    pub base_paths: Vec<RdsPath>,
    pub nvme_address: Option<String>,
    pub nvme_port: Port,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("parameters.{key}: {why}"))
}

impl VolumeParams {
    pub fn parse(
        params: &HashMap<String, String>,
        defaults: &ParamDefaults,
    ) -> Result<Self, Status> {
        let mut out = Self {
            dir: defaults.base_paths[0].clone(),
            nvme_address: String::new(),
            nvme_port: defaults.nvme_port,
            fs_type: DEFAULT_FS_TYPE.to_string(),
            fenced: false,
            encrypted: false,
            passthrough: Vec::new(),
        };
        let mut address = defaults.nvme_address.clone();
        let mut mkfs_options = None;
        let mut keys_sorted: Vec<_> = params.iter().collect();
        keys_sorted.sort();
        for (key, value) in keys_sorted {
            match key.as_str() {
                VOLUME_PATH => {
                    let dir = RdsPath::new(value.as_str()).map_err(|e| invalid(key, e))?;
                    if !crate::ids::is_managed_dir(&defaults.base_paths, &dir) {
                        let bases: Vec<&str> =
                            defaults.base_paths.iter().map(RdsPath::as_str).collect();
                        return Err(invalid(
                            key,
                            format!(
                                "`{dir}` is not one of the base paths ({}; add it to \
                                 --rds-volume-base-path)",
                                bases.join(", ")
                            ),
                        ));
                    }
                    out.dir = dir;
                }
                keys::NVME_ADDRESS => {
                    let ip: IpAddr = value
                        .parse()
                        .map_err(|_| invalid(key, format!("`{value}` is not an IP address")))?;
                    address = Some(ip.to_string());
                }
                keys::NVME_PORT => {
                    let port: u32 = value
                        .parse()
                        .map_err(|_| invalid(key, format!("`{value}` is not a port number")))?;
                    out.nvme_port = Port::new(port).map_err(|e| invalid(key, e))?;
                }
                FSTYPE_STANDARD | keys::FS_TYPE => {
                    out.fs_type = parse_fs_type(value).map_err(|e| invalid(key, e))?;
                }
                keys::MKFS_OPTIONS => mkfs_options = Some(value),
                keys::NVME_FENCING => {
                    out.fenced = parse_bool(key, value)?;
                    if out.fenced {
                        out.passthrough.push((keys::NVME_FENCING, "true".into()));
                    }
                }
                keys::ENCRYPTED => {
                    out.encrypted = parse_bool(key, value)?;
                    if out.encrypted {
                        out.passthrough.push((keys::ENCRYPTED, "true".into()));
                    }
                }
                keys::CTRL_LOSS_TMO
                | keys::RECONNECT_DELAY
                | keys::KEEP_ALIVE_TMO
                | keys::MIGRATION_TIMEOUT => {
                    let n: i64 = value.parse().map_err(|_| {
                        invalid(key, format!("`{value}` is not a whole number of seconds"))
                    })?;
                    // -1 means "forever" for ctrlLossTmo; nothing else may be negative.
                    if n < -1 || (n == -1 && key != keys::CTRL_LOSS_TMO) || n > 86_400 * 365 {
                        return Err(invalid(key, format!("{n} is out of range")));
                    }
                    if key == keys::MIGRATION_TIMEOUT {
                        check_migration_timeout(n).map_err(|e| invalid(key, e))?;
                    }
                    let key: &'static str = match key.as_str() {
                        keys::CTRL_LOSS_TMO => keys::CTRL_LOSS_TMO,
                        keys::RECONNECT_DELAY => keys::RECONNECT_DELAY,
                        keys::KEEP_ALIVE_TMO => keys::KEEP_ALIVE_TMO,
                        _ => keys::MIGRATION_TIMEOUT,
                    };
                    out.passthrough.push((key, n.to_string()));
                }
                other if other.starts_with(PROVISIONER_PREFIX) => {}
                other if GO_IGNORED_KEYS.contains(&other) => {
                    tracing::warn!(key = other, value = %value,
                        "StorageClass parameter of the Go driver that this driver does not use; ignored");
                }
                other => {
                    return Err(invalid(
                        other,
                        "unknown parameter (known: volumePath, nvmeAddress, nvmePort, fsType, \
                         csi.storage.k8s.io/fstype, mkfsOptions, ctrlLossTmo, reconnectDelay, \
                         keepAliveTmo, migrationTimeoutSeconds, nvmeFencing, encrypted; ignored from the Go driver: \
                         rdsAddress, rdsPort, sshPort, nqnPrefix, rdsBasePath)",
                    ))
                }
            }
        }
        // Checked after the loop: which options are allowed depends on the filesystem.
        if let Some(value) = mkfs_options {
            crate::mkfs::parse_options(&out.fs_type, value)
                .map_err(|e| invalid(keys::MKFS_OPTIONS, e))?;
            out.passthrough.push((keys::MKFS_OPTIONS, value.clone()));
        }
        out.nvme_address = address.ok_or_else(|| {
            Status::invalid_argument(
                "parameters.nvmeAddress: not set and the driver has no --nvme-address default",
            )
        })?;
        Ok(out)
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, Status> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, format!("`{value}` is not true or false"))),
    }
}

/// A migration timeout in seconds within the attachment table's range.
fn check_migration_timeout(seconds: i64) -> Result<(), String> {
    use crate::kube::attachments::{MAX_MIGRATION_TIMEOUT, MIN_MIGRATION_TIMEOUT};
    let (min, max) = (
        MIN_MIGRATION_TIMEOUT.as_secs(),
        MAX_MIGRATION_TIMEOUT.as_secs(),
    );
    match u64::try_from(seconds) {
        Ok(s) if (min..=max).contains(&s) => Ok(()),
        _ => Err(format!("{seconds} is out of range ({min}..={max} seconds)")),
    }
}

pub fn parse_fs_type(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(DEFAULT_FS_TYPE.to_string());
    }
    if FS_TYPES.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "filesystem `{value}` is not supported (use one of {})",
            FS_TYPES.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ParamDefaults {
        ParamDefaults {
            base_paths: vec![
                RdsPath::new("/storage-pool/metal-csi").unwrap(),
                RdsPath::new("/storage-pool/kubevirt").unwrap(),
            ],
            nvme_address: Some("10.0.0.1".into()),
            nvme_port: Port::new(4420).unwrap(),
        }
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<VolumeParams, Status> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VolumeParams::parse(&map, &defaults())
    }

    #[test]
    fn defaults_apply() {
        let p = parse(&[("csi.storage.k8s.io/pvc/name", "x")]).unwrap();
        assert_eq!(p.dir.as_str(), "/storage-pool/metal-csi");
        assert_eq!(p.nvme_address, "10.0.0.1");
        assert_eq!(p.nvme_port.get(), 4420);
        assert_eq!(p.fs_type, "ext4");
    }

    #[test]
    fn each_bad_value_names_its_field() {
        for (key, value) in [
            ("volumePath", "/storage-pool/metal-csi-evil"),
            ("volumePath", "/storage-pool/metal-csi slot=x"),
            ("volumePath", "/storage-pool/metal-csi/../x"),
            ("nvmeAddress", "rds.local"),
            ("nvmePort", "0"),
            ("nvmePort", "70000"),
            ("fsType", "btrfs"),
            ("csi.storage.k8s.io/fstype", "zfs"),
            ("mkfsOptions", "-O x; rm -rf /"),
            ("ctrlLossTmo", "-2"),
            ("keepAliveTmo", "-1"),
            ("migrationTimeoutSeconds", "0"),
            ("migrationTimeoutSeconds", "29"),
            ("migrationTimeoutSeconds", "86401"),
            ("encrypted", "yes"),
            ("bogus", "1"),
            ("volumePath", "/storage-pool/elsewhere"),
            // Below a base path is not a base path: its files would not be the driver's.
            ("volumePath", "/storage-pool/metal-csi/fast"),
            // Typos of our own keys (and of the Go driver's) are still errors.
            ("volumepath", "/storage-pool/metal-csi"),
            ("keepAliveTimeout", "0"),
            ("rdsAdress", "10.0.0.1"),
        ] {
            let err = parse(&[(key, value)]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}={value}");
            assert!(err.message().contains(key), "{}", err.message());
        }
    }

    #[test]
    fn an_encrypted_class_marks_the_volume_context() {
        let p = parse(&[("encrypted", "true")]).unwrap();
        assert!(p.encrypted);
        assert!(p
            .passthrough
            .contains(&(keys::ENCRYPTED, "true".to_string())));
        let p = parse(&[("encrypted", "false")]).unwrap();
        assert!(!p.encrypted && p.passthrough.is_empty());
    }

    /// The parameters of a Go driver StorageClass fixture.
    fn go_storage_class(file: &str) -> HashMap<String, String> {
        let path = format!(
            "{}/../fixtures/go-driver/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let sc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        serde_yaml::from_value(sc["parameters"].clone()).unwrap()
    }

    #[test]
    fn go_driver_storage_classes_are_accepted() {
        let p = VolumeParams::parse(
            &go_storage_class("storageclass-manifests.yaml"),
            &defaults(),
        )
        .unwrap();
        // A second base path holds it.
        assert_eq!(p.dir.as_str(), "/storage-pool/kubevirt");
        assert_eq!(p.nvme_address, "10.42.68.1");
        let mut passed = p.passthrough.clone();
        passed.sort();
        assert_eq!(
            passed,
            vec![
                ("ctrlLossTmo", "0".to_string()),
                ("keepAliveTmo", "0".to_string()),
                ("migrationTimeoutSeconds", "300".to_string()),
                ("reconnectDelay", "5".to_string()),
            ]
        );
        let p = VolumeParams::parse(
            &go_storage_class("storageclass-documented.yaml"),
            &defaults(),
        )
        .unwrap();
        assert_eq!(p.dir.as_str(), "/storage-pool/metal-csi");
        assert_eq!(p.fs_type, "ext4");
    }

    #[test]
    fn accepted_values() {
        let p = parse(&[
            ("volumePath", "/storage-pool/kubevirt"),
            ("nvmeAddress", "10.42.68.1"),
            ("nvmePort", "4421"),
            ("csi.storage.k8s.io/fstype", "xfs"),
            ("ctrlLossTmo", "-1"),
        ])
        .unwrap();
        assert_eq!(p.dir.as_str(), "/storage-pool/kubevirt");
        assert_eq!(p.nvme_port.get(), 4421);
        assert_eq!(p.fs_type, "xfs");
        assert_eq!(p.passthrough, vec![("ctrlLossTmo", "-1".to_string())]);
    }
}
