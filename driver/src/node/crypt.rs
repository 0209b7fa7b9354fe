//! LUKS2 encryption of a volume on the node (`encrypted: "true"`): the data is ciphertext on
//! the storage network and on the RDS, and the key never leaves the node.
//!
//! `cryptsetup` formats a blank device, opens it as a dm-crypt mapping named after the volume
//! ([`mapping_name`]), and closes it again. The passphrase reaches it on standard input only.
//! Which mappings exist is read from sysfs each time, so a restarted plugin finds the ones it
//! opened; mappings whose name is not this driver's prefix followed by one of its volume IDs are
//! never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokio::time::Instant;

use super::connector::nvme::{dir_names, read_trim};
use super::error::{NodeError, Result};
use super::exec::{run_with_input, Output};

/// The node-stage secret's key holding the passphrase.
pub const PASSPHRASE_KEY: &str = "encryptionPassphrase";
/// Shorter passphrases are refused: the key derivation below is tuned for a stage's cost, not
/// for guessing resistance of a short password.
pub const MIN_PASSPHRASE_BYTES: usize = 16;
/// Every mapping this driver opens is named this followed by the volume ID.
pub const MAPPING_PREFIX: &str = "rds-csi-";
/// The device-mapper UUID cryptsetup gives a LUKS2 mapping starts so.
const LUKS2_UUID_PREFIX: &str = "CRYPT-LUKS2-";

/// Key derivation of new volumes: Argon2id with 64 MiB, 4 passes and 2 lanes, fixed rather than
/// benchmarked, so that opening costs the same on every node whichever one formatted the
/// volume, and a node plugin with a memory limit never meets cryptsetup's default of up to
/// 1 GiB per open.
pub const PBKDF_ARGS: &[&str] = &[
    "--pbkdf",
    "argon2id",
    "--pbkdf-memory",
    "65536",
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-parallel",
    "2",
];

/// The label a new volume's LUKS2 header carries until its mapping has been zeroed (see
/// `NodeService::unlock`).
pub const UNREADY_LABEL: &str = "rds-csi-unready";

/// cryptsetup's exit status for "no key slot opens with this passphrase".
const EXIT_WRONG_PASSPHRASE: i32 = 2;

/// A volume's passphrase. Never printed: `Debug` shows its length only.
pub struct Passphrase(Vec<u8>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passphrase({} bytes)", self.0.len())
    }
}

impl Passphrase {
    /// The passphrase in the node-stage secrets, checked; its value never appears in an error.
    pub fn from_secrets(secrets: &HashMap<String, String>) -> Result<Self> {
        let value = secrets.get(PASSPHRASE_KEY).ok_or_else(|| {
            NodeError::InvalidArgument(format!(
                "secrets.{PASSPHRASE_KEY} is required for an encrypted volume: name a Secret \
                 holding it in the StorageClass's csi.storage.k8s.io/node-stage-secret-name \
                 and csi.storage.k8s.io/node-stage-secret-namespace"
            ))
        })?;
        if value.len() < MIN_PASSPHRASE_BYTES {
            return Err(NodeError::InvalidArgument(format!(
                "secrets.{PASSPHRASE_KEY} is {} bytes long; at least {MIN_PASSPHRASE_BYTES} \
                 are required",
                value.len()
            )));
        }
        Ok(Self(value.as_bytes().to_vec()))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The dm-crypt mapping name of a volume.
pub fn mapping_name(volume_id: &str) -> String {
    format!("{MAPPING_PREFIX}{volume_id}")
}

/// Encryption needs a volume ID of the driver's own grammar: it makes a mapping name that
/// device-mapper accepts (at most 127 bytes, no `/`) and that recovery can tell as ours.
pub fn check_volume_id(volume_id: &str) -> Result<()> {
    if crate::ids::parse_volume_id(volume_id).is_none() {
        return Err(NodeError::InvalidArgument(format!(
            "volume_id `{volume_id}` is not one this driver creates; only its own volumes can \
             be encrypted"
        )));
    }
    Ok(())
}

/// An open dm-crypt mapping of one of this driver's volumes, as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub volume_id: String,
    pub name: String,
    /// `/dev/dm-N`: devtmpfs makes it whether or not udev runs.
    pub device: PathBuf,
    pub numbers: (u32, u32),
    /// `major:minor` of the devices under it (the volume's attached device).
    pub backing: Vec<(u32, u32)>,
}

fn parse_numbers(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The volume a device-mapper device belongs to when it is one of this driver's mappings: a
/// LUKS2 mapping whose name is the prefix followed by a volume ID of the driver's grammar.
fn volume_of(name: &str, uuid: &str) -> Option<String> {
    let volume_id = name.strip_prefix(MAPPING_PREFIX)?;
    crate::ids::parse_volume_id(volume_id)?;
    uuid.starts_with(LUKS2_UUID_PREFIX)
        .then(|| volume_id.to_string())
}

/// Every open mapping of this driver's volumes; other device-mapper devices are left out.
pub fn mappings(sys_root: &Path) -> Result<Vec<Mapping>> {
    let block = sys_root.join("block");
    let entries = match std::fs::read_dir(&block) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NodeError::io(block.display(), e)),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let dev_name = entry.file_name().to_string_lossy().into_owned();
        if !dev_name.starts_with("dm-") {
            continue;
        }
        let dir = entry.path();
        let (Some(name), Some(uuid)) = (
            read_trim(&dir.join("dm/name")),
            read_trim(&dir.join("dm/uuid")),
        ) else {
            continue;
        };
        let Some(volume_id) = volume_of(&name, &uuid) else {
            continue;
        };
        let Some(numbers) = read_trim(&dir.join("dev")).and_then(|s| parse_numbers(&s)) else {
            continue;
        };
        let backing = std::fs::read_dir(dir.join("slaves"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|s| read_trim(&s.path().join("dev")))
                    .filter_map(|s| parse_numbers(&s))
                    .collect()
            })
            .unwrap_or_default();
        found.push(Mapping {
            volume_id,
            name,
            device: Path::new("/dev").join(&dev_name),
            numbers,
            backing,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The open mapping of `volume_id`, if any.
pub fn mapping_of(sys_root: &Path, volume_id: &str) -> Result<Option<Mapping>> {
    Ok(mappings(sys_root)?
        .into_iter()
        .find(|m| m.volume_id == volume_id))
}

/// What holds the block device `major:minor` open from above (device-mapper, md): a device
/// with holders must not be detached, whoever made them.
pub fn holders(sys_root: &Path, numbers: (u32, u32)) -> Vec<String> {
    dir_names(&sys_root.join(format!("dev/block/{}:{}/holders", numbers.0, numbers.1)))
}

/// The label of a LUKS2 header, as blkid reads it; None when it has none.
pub async fn header_label(device: &Path, deadline: Instant) -> Result<Option<String>> {
    let out = super::exec::run_ok(
        Path::new("blkid"),
        &[
            "-p",
            "-o",
            "value",
            "-s",
            "LABEL",
            &device.display().to_string(),
        ],
        deadline,
    )
    .await?;
    let label = out.stdout.trim();
    Ok((!label.is_empty()).then(|| label.to_string()))
}

/// How the node runs cryptsetup.
#[derive(Debug, Clone)]
pub struct Cryptsetup {
    pub program: PathBuf,
}

impl Default for Cryptsetup {
    fn default() -> Self {
        Self {
            program: PathBuf::from("cryptsetup"),
        }
    }
}

/// `luksFormat` of a blank device; the passphrase comes on standard input.
pub fn format_args(device: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--label",
        UNREADY_LABEL,
    ]
    .map(String::from)
    .into();
    args.extend(PBKDF_ARGS.iter().map(|a| a.to_string()));
    args.extend([
        "--key-file".into(),
        "-".into(),
        device.display().to_string(),
    ]);
    args
}

/// `open` of a LUKS2 device as `name`. The volume key goes into the dm table rather than the
/// kernel keyring, so that `resize` needs no passphrase (NodeExpandVolume gets none).
pub fn open_args(device: &Path, name: &str, read_only: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "open",
        "--type",
        "luks2",
        "--disable-keyring",
        "--key-file",
        "-",
    ]
    .map(String::from)
    .into();
    if read_only {
        args.push("--readonly".into());
    }
    args.extend([device.display().to_string(), name.to_string()]);
    args
}

fn failed(args: &[String], out: &Output) -> NodeError {
    NodeError::Internal(format!(
        "`cryptsetup {}` failed (exit {}): {}",
        args.join(" "),
        out.code.map_or("signal".to_string(), |c| c.to_string()),
        out.stderr.trim()
    ))
}

impl Cryptsetup {
    async fn run(
        &self,
        args: &[String],
        passphrase: Option<&Passphrase>,
        deadline: Instant,
    ) -> Result<Output> {
        // libdevmapper then makes the /dev/mapper node itself instead of waiting on udev, which
        // a container may not share (the wait would hang until the deadline).
        let env = [("DM_DISABLE_UDEV", "1")];
        run_with_input(
            &self.program,
            args,
            passphrase.map(Passphrase::bytes),
            &env,
            deadline,
        )
        .await
    }

    /// [`Cryptsetup::run`], a non-zero exit status being an error that quotes stderr.
    async fn run_ok(
        &self,
        args: &[String],
        passphrase: Option<&Passphrase>,
        deadline: Instant,
    ) -> Result<()> {
        let out = self.run(args, passphrase, deadline).await?;
        if !out.success() {
            return Err(failed(args, &out));
        }
        Ok(())
    }

    /// Writes a new LUKS2 header on `device`. The caller has checked that it is blank.
    pub async fn format(
        &self,
        device: &Path,
        passphrase: &Passphrase,
        deadline: Instant,
    ) -> Result<()> {
        let args = format_args(device);
        self.run_ok(&args, Some(passphrase), deadline).await
    }

    /// Opens `device` as the mapping of `volume_id`. A passphrase that opens no key slot is a
    /// FailedPrecondition naming the secret's key; nothing on the device changes.
    pub async fn open(
        &self,
        device: &Path,
        volume_id: &str,
        passphrase: &Passphrase,
        read_only: bool,
        deadline: Instant,
    ) -> Result<()> {
        let args = open_args(device, &mapping_name(volume_id), read_only);
        let out = self.run(&args, Some(passphrase), deadline).await?;
        match out.code {
            Some(0) => Ok(()),
            Some(EXIT_WRONG_PASSPHRASE) => Err(NodeError::FailedPrecondition(format!(
                "the passphrase in secrets.{PASSPHRASE_KEY} does not open volume {volume_id}'s \
                 LUKS2 header on {}: is this the volume's Secret (a restored snapshot keeps its \
                 source's passphrase)?",
                device.display()
            ))),
            _ => Err(failed(&args, &out)),
        }
    }

    /// Closes a mapping this driver opened.
    pub async fn close(&self, mapping: &Mapping, deadline: Instant) -> Result<()> {
        let args = vec!["close".to_string(), mapping.name.clone()];
        self.run_ok(&args, None, deadline).await
    }

    /// Takes the [`UNREADY_LABEL`] off a volume's header: the volume is ready.
    pub async fn clear_label(&self, device: &Path, deadline: Instant) -> Result<()> {
        let args = vec![
            "config".to_string(),
            "--label".to_string(),
            String::new(),
            device.display().to_string(),
        ];
        self.run_ok(&args, None, deadline).await
    }

    /// Grows a mapping to fill its device, after the device grew.
    pub async fn resize(&self, mapping: &Mapping, deadline: Instant) -> Result<()> {
        let args = vec!["resize".to_string(), mapping.name.clone()];
        self.run_ok(&args, None, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "pvc-6ec89291-e651-4af7-8470-1168d64acbcd";

    fn secrets(value: &str) -> HashMap<String, String> {
        [(PASSPHRASE_KEY.to_string(), value.to_string())].into()
    }

    #[test]
    fn the_passphrase_is_required_long_enough_and_never_shown() {
        let missing = Passphrase::from_secrets(&HashMap::new()).unwrap_err();
        assert!(matches!(&missing, NodeError::InvalidArgument(m)
            if m.contains("secrets.encryptionPassphrase") && m.contains("node-stage-secret-name")));
        let short = Passphrase::from_secrets(&secrets("fifteen-bytes!!")).unwrap_err();
        assert!(matches!(&short, NodeError::InvalidArgument(m)
            if m.contains("secrets.encryptionPassphrase is 15 bytes") && !m.contains("fifteen")));
        let ok = Passphrase::from_secrets(&secrets("sixteen-bytes!!!")).unwrap();
        assert_eq!(ok.bytes(), b"sixteen-bytes!!!");
        assert_eq!(format!("{ok:?}"), "Passphrase(16 bytes)");
    }

    #[test]
    fn the_passphrase_never_reaches_argv() {
        let dev = Path::new("/dev/nvme0n1");
        let format = format_args(dev);
        assert_eq!(
            format.join(" "),
            "luksFormat --type luks2 --batch-mode --label rds-csi-unready --pbkdf argon2id --pbkdf-memory 65536 \
             --pbkdf-force-iterations 4 --pbkdf-parallel 2 --key-file - /dev/nvme0n1"
        );
        let open = open_args(dev, &mapping_name(ID), false);
        assert_eq!(
            open.join(" "),
            format!("open --type luks2 --disable-keyring --key-file - /dev/nvme0n1 rds-csi-{ID}")
        );
        let read_only = open_args(dev, &mapping_name(ID), true);
        assert!(read_only.contains(&"--readonly".to_string()));
    }

    #[test]
    fn only_volume_ids_of_the_driver_make_mapping_names() {
        check_volume_id(ID).unwrap();
        let longest = format!("pvc-{}", "a".repeat(crate::rds::command::MAX_SLOT_LEN - 4));
        check_volume_id(&longest).unwrap();
        assert!(mapping_name(&longest).len() <= 127);
        for id in ["my-volume", "PVC-1", "pvc-1/x", &format!("{longest}a")] {
            assert!(matches!(
                check_volume_id(id),
                Err(NodeError::InvalidArgument(_))
            ));
        }
    }

    /// A fake sysfs block tree with device-mapper devices.
    struct Sys(tempfile::TempDir);

    impl Sys {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        fn block(&self, name: &str, numbers: &str) -> PathBuf {
            let dir = self.root().join("block").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("dev"), format!("{numbers}\n")).unwrap();
            let by_number = self.root().join("dev/block").join(numbers);
            std::fs::create_dir_all(by_number.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&dir, by_number).unwrap();
            dir
        }

        fn dm(&self, dm: &str, numbers: &str, name: &str, uuid: &str, slave: Option<&str>) {
            let dir = self.block(dm, numbers);
            std::fs::create_dir_all(dir.join("dm")).unwrap();
            std::fs::write(dir.join("dm/name"), format!("{name}\n")).unwrap();
            std::fs::write(dir.join("dm/uuid"), format!("{uuid}\n")).unwrap();
            std::fs::create_dir_all(dir.join("slaves")).unwrap();
            std::fs::create_dir_all(dir.join("holders")).unwrap();
            if let Some(slave) = slave {
                let under = self.root().join("block").join(slave);
                std::os::unix::fs::symlink(&under, dir.join("slaves").join(slave)).unwrap();
                std::fs::create_dir_all(under.join("holders")).unwrap();
                std::os::unix::fs::symlink(&dir, under.join("holders").join(dm)).unwrap();
            }
        }
    }

    #[test]
    fn only_luks2_mappings_named_after_a_volume_of_the_driver_are_ours() {
        let sys = Sys::new();
        sys.block("nvme0n1", "259:0");
        sys.block("nvme1n1", "259:1");
        let uuid = |name: &str| format!("CRYPT-LUKS2-76cbeaf9295d44d5a18c41df0cd0dadd-{name}");
        let ours = mapping_name(ID);
        sys.dm("dm-0", "253:0", &ours, &uuid(&ours), Some("nvme0n1"));
        // The node's own encrypted root, an LVM volume under our prefix, a name with our
        // prefix but no volume ID of ours: none of them is this driver's.
        sys.dm(
            "dm-1",
            "253:1",
            "luks-root",
            &uuid("luks-root"),
            Some("nvme1n1"),
        );
        sys.dm(
            "dm-2",
            "253:2",
            &mapping_name("pvc-6ec89291-e651-4af7-8470-1168d64acbce"),
            "LVM-abc",
            None,
        );
        sys.dm("dm-3", "253:3", "rds-csi-data", &uuid("rds-csi-data"), None);
        let found = mappings(sys.root()).unwrap();
        assert_eq!(
            found,
            vec![Mapping {
                volume_id: ID.into(),
                name: ours,
                device: PathBuf::from("/dev/dm-0"),
                numbers: (253, 0),
                backing: vec![(259, 0)],
            }]
        );
        assert_eq!(mapping_of(sys.root(), ID).unwrap(), found.first().cloned());
        assert_eq!(
            mapping_of(sys.root(), "pvc-6ec89291-e651-4af7-8470-1168d64acbce").unwrap(),
            None
        );
        assert_eq!(holders(sys.root(), (259, 0)), vec!["dm-0".to_string()]);
        assert_eq!(holders(sys.root(), (253, 0)), Vec::<String>::new());
        assert!(mappings(&sys.root().join("absent")).unwrap().is_empty());
    }

    /// A stand-in for cryptsetup that records its argv, environment and standard input.
    fn recording_cryptsetup(dir: &Path, exit: i32) -> Cryptsetup {
        let script = dir.join("cryptsetup");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" > {0}/argv\necho \"$DM_DISABLE_UDEV\" > {0}/env\n\
                 cat > {0}/stdin\nexit {exit}\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Cryptsetup { program: script }
    }

    fn deadline() -> Instant {
        Instant::now() + std::time::Duration::from_secs(10)
    }

    #[tokio::test]
    async fn the_passphrase_goes_through_stdin_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let tool = recording_cryptsetup(dir.path(), 0);
        let pass = Passphrase::from_secrets(&secrets("a passphrase\nwith a newline")).unwrap();
        tool.open(Path::new("/dev/nvme0n1"), ID, &pass, false, deadline())
            .await
            .unwrap();
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        assert_eq!(read("stdin"), b"a passphrase\nwith a newline");
        assert!(!String::from_utf8(read("argv"))
            .unwrap()
            .contains("passphrase"));
        assert_eq!(read("env"), b"1\n");
        tool.format(Path::new("/dev/nvme0n1"), &pass, deadline())
            .await
            .unwrap();
        assert_eq!(read("stdin"), b"a passphrase\nwith a newline");
        // close and resize need no passphrase, and get none.
        let mapping = Mapping {
            volume_id: ID.into(),
            name: mapping_name(ID),
            device: "/dev/dm-0".into(),
            numbers: (253, 0),
            backing: vec![],
        };
        tool.clear_label(Path::new("/dev/nvme0n1"), deadline())
            .await
            .unwrap();
        assert_eq!(read("stdin"), b"");
        // `echo "$@"`: the empty label is the empty argument between the spaces.
        assert_eq!(read("argv"), b"config --label  /dev/nvme0n1\n");
        tool.resize(&mapping, deadline()).await.unwrap();
        assert_eq!(read("stdin"), b"");
        assert_eq!(
            String::from_utf8(read("argv")).unwrap().trim(),
            format!("resize rds-csi-{ID}")
        );
    }

    #[tokio::test]
    async fn a_wrong_passphrase_is_a_failed_precondition_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::from_secrets(&secrets("sixteen-bytes!!!")).unwrap();
        let wrong = recording_cryptsetup(dir.path(), 2);
        let e = wrong
            .open(Path::new("/dev/nvme0n1"), ID, &pass, false, deadline())
            .await
            .unwrap_err();
        assert!(matches!(&e, NodeError::FailedPrecondition(m)
            if m.contains("secrets.encryptionPassphrase") && m.contains(ID)));
        let broken = recording_cryptsetup(dir.path(), 1);
        let e = broken
            .open(Path::new("/dev/nvme0n1"), ID, &pass, false, deadline())
            .await
            .unwrap_err();
        assert!(matches!(&e, NodeError::Internal(m) if m.contains("exit 1")));
    }

    #[tokio::test]
    async fn every_failing_cryptsetup_call_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let broken = recording_cryptsetup(dir.path(), 1);
        let pass = Passphrase::from_secrets(&secrets("sixteen-bytes!!!")).unwrap();
        let dev = Path::new("/dev/nvme0n1");
        let mapping = Mapping {
            volume_id: ID.into(),
            name: mapping_name(ID),
            device: "/dev/dm-0".into(),
            numbers: (253, 0),
            backing: vec![(259, 0)],
        };
        let results = [
            broken.format(dev, &pass, deadline()).await,
            broken.close(&mapping, deadline()).await,
            broken.clear_label(dev, deadline()).await,
            broken.resize(&mapping, deadline()).await,
        ];
        for (call, result) in ["format", "close", "config", "resize"].iter().zip(results) {
            assert!(
                matches!(&result, Err(NodeError::Internal(m)) if m.contains("exit 1")),
                "{call}: {result:?}"
            );
        }
    }

    /// A sysfs that cannot be read is an error, not "no mappings": unstage would otherwise
    /// detach a device whose mapping it did not see.
    #[test]
    fn an_unreadable_sysfs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("block"), "not a directory").unwrap();
        assert!(matches!(mappings(dir.path()), Err(NodeError::Internal(_))));
    }

    /// The label of a real LUKS2 header (cryptsetup writes it to a file; no device-mapper
    /// needed), as the stage reads it to tell a volume that was never made ready.
    #[tokio::test]
    async fn the_header_label_is_read_as_cryptsetup_wrote_it() {
        let on_path = |tool: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        };
        if !on_path("cryptsetup") || !on_path("blkid") {
            assert!(
                std::env::var("CI").is_err(),
                "cryptsetup and blkid are needed (e2e/test-deps.sh installs them)"
            );
            eprintln!("skipped: cryptsetup or blkid is missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("volume.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let tool = Cryptsetup::default();
        // A cheap key derivation: only the header's label matters here.
        let mut args = format_args(&file);
        let pbkdf = args.iter().position(|a| a == "--pbkdf").unwrap();
        args.splice(
            pbkdf..pbkdf + PBKDF_ARGS.len(),
            ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"].map(String::from),
        );
        let pass = Passphrase::from_secrets(&secrets("sixteen-bytes!!!")).unwrap();
        let out = tool.run(&args, Some(&pass), deadline()).await.unwrap();
        assert!(out.success(), "{out:?}");
        assert_eq!(
            header_label(&file, deadline()).await.unwrap().as_deref(),
            Some(UNREADY_LABEL)
        );
        tool.clear_label(&file, deadline()).await.unwrap();
        assert_eq!(header_label(&file, deadline()).await.unwrap(), None);
    }
}
