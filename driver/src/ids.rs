//! Volume and snapshot IDs. An ID is the RouterOS slot, the NQN suffix and the backing file's
//! name, so it must follow the slot grammar. The external-provisioner's `pvc-<uuid>` names are
//! valid as they are (existing PVs of the Go driver keep their IDs); any other name maps
//! deterministically to `vol-<uuid5(name)>`. Snapshot IDs always start with `snap-`. Only these
//! three forms, in files directly in a base path, are the driver's: a disk or NQN of any other
//! name (a node's own `nixos-var` export on the same RDS, say), or a file in a directory below a
//! base path, is never listed, deleted, resized or connected.

use uuid::Uuid;

use crate::rds::command::{InvalidValue, RdsPath, Slot};
use crate::rds::Disk;

pub const SNAPSHOT_PREFIX: &str = "snap-";
/// The external-provisioner's volume names (`pvc-<uuid>`), kept as their IDs.
const PROVISIONER_VOLUME_PREFIX: &str = "pvc-";
const HASHED_VOLUME_PREFIX: &str = "vol-";
/// Separates the snapshot ID from its source volume ID in a snapshot's file name. IDs contain no
/// `.`, so the split is unambiguous.
const SNAPSHOT_SOURCE_MARK: &str = ".from-";
const IMAGE_SUFFIX: &str = ".img";

/// `vol-` and a UUID as [`volume_id_for_name`] writes it (lowercase, hyphenated).
fn is_hashed_volume_id(id: &str) -> bool {
    id.strip_prefix(HASHED_VOLUME_PREFIX)
        .and_then(|u| {
            Uuid::try_parse(u)
                .ok()
                .map(|p| p.hyphenated().to_string() == u)
        })
        .unwrap_or(false)
}

/// `pvc-` and at least one more character.
fn is_provisioner_volume_id(id: &str) -> bool {
    id.len() > PROVISIONER_VOLUME_PREFIX.len() && id.starts_with(PROVISIONER_VOLUME_PREFIX)
}

/// The volume ID for a CreateVolume name.
pub fn volume_id_for_name(name: &str) -> Slot {
    match Slot::new(name) {
        Ok(slot) if is_provisioner_volume_id(name) => slot,
        _ => {
            let id = format!(
                "{HASHED_VOLUME_PREFIX}{}",
                Uuid::new_v5(&Uuid::NAMESPACE_DNS, name.as_bytes())
            );
            Slot::new(id).expect("a uuid is a valid slot")
        }
    }
}

/// The snapshot ID for a CreateSnapshot name, in the Go driver's format
/// (`snap-<uuid5(name)>-at-<first 10 hex digits>`), so its snapshots keep their IDs.
pub fn snapshot_id_for_name(name: &str) -> Slot {
    let uuid = Uuid::new_v5(&Uuid::NAMESPACE_DNS, name.as_bytes());
    let hex: String = uuid.simple().to_string().chars().take(10).collect();
    Slot::new(format!("{SNAPSHOT_PREFIX}{uuid}-at-{hex}")).expect("valid slot")
}

/// Parses a volume ID (sent by the CO, or a disk's slot): only the forms
/// [`volume_id_for_name`] produces.
pub fn parse_volume_id(id: &str) -> Option<Slot> {
    Slot::new(id)
        .ok()
        .filter(|_| is_provisioner_volume_id(id) || is_hashed_volume_id(id))
}

/// The source a Go driver v0.11 snapshot ID names: `snap-<source uuid>-at-<hex>` is a snapshot
/// of `pvc-<source uuid>`. v0.13 and this driver write `snap-<uuid5(name)>-at-<first 10 hex
/// digits of that uuid>`, which names no source (the suffix repeats the UUID's start); with
/// 40 bits of the name's hash in a v0.11 suffix, one looking like that happens once in 10^12.
pub fn go_snapshot_source(id: &Slot) -> Option<Slot> {
    let rest = id.as_str().strip_prefix(SNAPSHOT_PREFIX)?;
    let (uuid, suffix) = rest.split_once("-at-")?;
    let parsed = Uuid::try_parse(uuid).ok()?;
    if parsed.hyphenated().to_string() != uuid
        || suffix.is_empty()
        || !suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    if parsed.simple().to_string().starts_with(suffix) {
        return None;
    }
    parse_volume_id(&format!("{PROVISIONER_VOLUME_PREFIX}{uuid}"))
}

/// Parses a snapshot ID sent by the CO.
pub fn parse_snapshot_id(id: &str) -> Option<Slot> {
    Slot::new(id)
        .ok()
        .filter(|_| id.starts_with(SNAPSHOT_PREFIX))
}

/// The backing file of a volume. Fails only when `dir` is so long that the path would pass
/// RouterOS's length limit.
pub fn volume_file(dir: &RdsPath, id: &Slot) -> Result<RdsPath, InvalidValue> {
    dir.join(&format!("{id}{IMAGE_SUFFIX}"))
}

/// The snapshot's file name records its source, because RouterOS keeps no such field.
pub fn snapshot_file(dir: &RdsPath, id: &Slot, source: &Slot) -> Result<RdsPath, InvalidValue> {
    dir.join(&format!("{id}{SNAPSHOT_SOURCE_MARK}{source}{IMAGE_SUFFIX}"))
}

/// What a managed file name says: a volume `<id>.img`, or a snapshot `<snap-id>.from-<src>.img`
/// (or the Go driver's `<snap-id>.img`, source unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedFile {
    Volume(Slot),
    Snapshot { id: Slot, source: Option<Slot> },
}

/// Classifies a file by its absolute path: only `<dir>/<name>` directly inside `dir`, with a
/// name of the managed grammar, belongs to the driver.
pub fn classify_file(dir: &RdsPath, path: &str) -> Option<ManagedFile> {
    let name = path.strip_prefix(dir.as_str())?.strip_prefix('/')?;
    let stem = name.strip_suffix(IMAGE_SUFFIX)?;
    if let Some((id, source)) = stem.split_once(SNAPSHOT_SOURCE_MARK) {
        return Some(ManagedFile::Snapshot {
            id: parse_snapshot_id(id)?,
            source: Some(parse_volume_id(source)?),
        });
    }
    if let Some(id) = parse_snapshot_id(stem) {
        let source = go_snapshot_source(&id);
        return Some(ManagedFile::Snapshot { id, source });
    }
    parse_volume_id(stem).map(ManagedFile::Volume)
}

/// Whether `dir` is one of the base paths: the only directories whose files the driver owns,
/// and the only ones a StorageClass `volumePath` may name.
///
/// Exactly, not "at or below": a directory below a base path may be another cluster's base
/// path or a copy put aside by hand, and nothing recorded on the RDS tells those from volumes.
/// Since `volumePath` must be a base path too, every file the driver makes sits directly in one
/// (a volume in its StorageClass's directory, a snapshot next to its source), so the exact rule
/// loses none of them; a deeper `volumePath` is named in `--rds-volume-base-path` instead.
pub fn is_managed_dir(bases: &[RdsPath], dir: &RdsPath) -> bool {
    bases.contains(dir)
}

/// The directory of a disk's file when it is a base path (several base paths hold the volumes
/// of a cluster whose Go driver StorageClasses named several `volumePath`s).
fn managed_dir(bases: &[RdsPath], path: &str) -> Option<RdsPath> {
    let (dir, _) = path.rsplit_once('/')?;
    let dir = RdsPath::new(dir).ok()?;
    is_managed_dir(bases, &dir).then_some(dir)
}

/// What a disk is to the driver: a volume or snapshot it made (a file disk whose file is named
/// for its slot, directly in a base path), or None for everything else on the RDS.
pub fn classify_disk(bases: &[RdsPath], disk: &Disk) -> Option<ManagedFile> {
    let path = disk.file_path.as_deref()?;
    if !disk.is_file_disk() {
        return None;
    }
    let managed = classify_file(&managed_dir(bases, path)?, path)?;
    match &managed {
        ManagedFile::Volume(id) if id.as_str() == disk.slot => Some(managed),
        ManagedFile::Snapshot { id, .. } if id.as_str() == disk.slot && !disk.nvme_export => {
            Some(managed)
        }
        _ => None,
    }
}

/// Classifies a file directly in a base path by its name.
pub fn classify_managed_file(bases: &[RdsPath], path: &str) -> Option<ManagedFile> {
    classify_file(&managed_dir(bases, path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvc_names_are_their_own_ids() {
        let name = "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8";
        assert_eq!(volume_id_for_name(name).as_str(), name);
    }

    #[test]
    fn other_names_map_deterministically_to_valid_ids() {
        for name in [
            "sanity-Node-Stage-ABC",
            "Mixed",
            &"x".repeat(128),
            "snap-looks-like-a-snapshot",
            "a b;c",
        ] {
            let id = volume_id_for_name(name);
            assert!(id.as_str().starts_with("vol-"), "{name} -> {id}");
            assert_eq!(id, volume_id_for_name(name));
            assert!(parse_volume_id(id.as_str()).is_some());
        }
        assert_ne!(volume_id_for_name("A"), volume_id_for_name("B"));
    }

    #[test]
    fn snapshot_ids_match_the_go_driver() {
        assert_eq!(
            snapshot_id_for_name("my-snap").as_str(),
            "snap-6ec89291-e651-5af7-8470-1168d64acbcd-at-6ec89291e6"
        );
        assert_eq!(
            snapshot_id_for_name("test-snap-copy-1").as_str(),
            "snap-37b8d270-f2b5-559b-8e70-1c127d43cf60-at-37b8d270f2"
        );
    }

    /// The snapshot handle of a Go driver VolumeSnapshotContent fixture and its source.
    fn go_vsc(file: &str) -> (Slot, Slot) {
        let path = format!(
            "{}/../fixtures/go-driver/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let vsc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let handle = vsc["status"]["snapshotHandle"].as_str().unwrap();
        let source = vsc["spec"]["source"]["volumeHandle"].as_str().unwrap();
        (
            parse_snapshot_id(handle).unwrap(),
            parse_volume_id(source).unwrap(),
        )
    }

    #[test]
    fn go_v011_snapshot_ids_name_their_source_and_v013_ids_do_not() {
        let (v011, source) = go_vsc("vsc-v011.yaml");
        assert_eq!(go_snapshot_source(&v011), Some(source));
        let (v013, _) = go_vsc("vsc-v013.yaml");
        assert_eq!(go_snapshot_source(&v013), None);
        // v0.13's IDs are ours: the same name makes the same ID.
        assert_eq!(
            snapshot_id_for_name("snapshot-0d6a3c2e-7f41-4b8a-9e35-6c1b2a4d8f90"),
            v013
        );
        assert_eq!(go_snapshot_source(&snapshot_id_for_name("my-snap")), None);
        // A v0.11 ID with a timestamp suffix names its source too; malformed ones do not.
        let ts = Slot::new("snap-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b-at-1739800000").unwrap();
        assert!(go_snapshot_source(&ts).is_some());
        for bad in [
            "snap-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b-at-xyz",
            "snap-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b-at-",
            "snap-7e2a9c41-at-abcfd3394c",
            // Only the hyphenated form names a source: the same UUID written without hyphens
            // is not a v0.11 ID.
            "snap-7e2a9c413b5d4e6f8a1b2c3d4e5f6a7b-at-1739800000",
            "snap-1",
        ] {
            assert_eq!(go_snapshot_source(&Slot::new(bad).unwrap()), None, "{bad}");
        }
    }

    #[test]
    fn several_base_paths_own_only_the_drivers_names() {
        let bases = [
            RdsPath::new("/pool/csi").unwrap(),
            RdsPath::new("/pool/kubevirt").unwrap(),
        ];
        for path in ["/pool/csi/pvc-1.img", "/pool/kubevirt/pvc-2.img"] {
            assert!(classify_managed_file(&bases, path).is_some(), "{path}");
        }
        for path in [
            "/pool/other/pvc-1.img",
            "/pool/kubevirt/nixos-var.img",
            "/pool/kubevirt-x/pvc-1.img",
            "/pool/kubevirt/a/pvc-3.img",
            "/pool/csi/a/b/snap-1.img",
        ] {
            assert_eq!(classify_managed_file(&bases, path), None, "{path}");
        }
    }

    /// Ownership is exact: the file's directory is a base path, not a directory below one, and
    /// not one whose name merely starts with a base path's.
    #[test]
    fn only_files_directly_in_a_base_path_are_the_drivers() {
        let bases = [RdsPath::new("/p/csi").unwrap()];
        let disk = |slot: &str, path: &str| Disk {
            slot: slot.into(),
            disk_type: "file".into(),
            file_path: Some(path.into()),
            nvme_export: true,
            ..Disk::default()
        };
        assert_eq!(
            classify_disk(&bases, &disk("pvc-x", "/p/csi/pvc-x.img")),
            Some(ManagedFile::Volume(Slot::new("pvc-x").unwrap()))
        );
        for path in ["/p/csi/sub/pvc-x.img", "/p/csi2/pvc-x.img", "/p/pvc-x.img"] {
            assert_eq!(classify_disk(&bases, &disk("pvc-x", path)), None, "{path}");
            assert_eq!(classify_managed_file(&bases, path), None, "{path}");
        }
        assert!(is_managed_dir(&bases, &RdsPath::new("/p/csi").unwrap()));
        for dir in ["/p/csi/sub", "/p/csi2", "/p"] {
            assert!(
                !is_managed_dir(&bases, &RdsPath::new(dir).unwrap()),
                "{dir}"
            );
        }
    }

    /// A disk is the driver's only when everything agrees: a file disk, its file named for its
    /// own slot, and (a snapshot) not exported. A foreign disk whose file happens to carry a
    /// driver's name, or a driver's file under another slot, is not.
    #[test]
    fn a_disk_is_the_drivers_only_when_slot_file_and_type_agree() {
        let bases = [RdsPath::new("/p/csi").unwrap()];
        let disk = |slot: &str, path: Option<&str>, disk_type: &str, exported: bool| Disk {
            slot: slot.into(),
            disk_type: disk_type.into(),
            file_path: path.map(str::to_string),
            nvme_export: exported,
            ..Disk::default()
        };
        let volume = Some(ManagedFile::Volume(Slot::new("pvc-a").unwrap()));
        let vol = |slot, exported| disk(slot, Some("/p/csi/pvc-a.img"), "file", exported);
        assert_eq!(classify_disk(&bases, &vol("pvc-a", true)), volume);
        assert_eq!(classify_disk(&bases, &vol("pvc-a", false)), volume);
        // Another slot over a driver's file: a disk someone else made.
        assert_eq!(classify_disk(&bases, &vol("pvc-b", true)), None);
        assert_eq!(classify_disk(&bases, &vol("nixos-var", true)), None);
        // Not a file disk, or no file at all.
        assert_eq!(
            classify_disk(
                &bases,
                &disk("pvc-a", Some("/p/csi/pvc-a.img"), "partition", true)
            ),
            None
        );
        assert_eq!(
            classify_disk(&bases, &disk("pvc-a", None, "file", true)),
            None
        );

        let snap_id = "snap-0f923194-922a-5dd8-b376-c2c6ccb56dd8-at-0f92319492";
        let snap_path = format!("/p/csi/{snap_id}.from-pvc-a.img");
        let snapshot = Some(ManagedFile::Snapshot {
            id: Slot::new(snap_id).unwrap(),
            source: Some(Slot::new("pvc-a").unwrap()),
        });
        let snap = |slot, exported| disk(slot, Some(&snap_path), "file", exported);
        assert_eq!(classify_disk(&bases, &snap(snap_id, false)), snapshot);
        // A snapshot is never exported: an exported one is not the driver's doing.
        assert_eq!(classify_disk(&bases, &snap(snap_id, true)), None);
        assert_eq!(classify_disk(&bases, &snap("pvc-a", false)), None);
    }

    #[test]
    fn volume_and_snapshot_ids_never_cross() {
        assert!(parse_volume_id("snap-x").is_none());
        assert!(parse_snapshot_id("pvc-x").is_none());
        assert!(parse_volume_id("Bad").is_none());
    }

    #[test]
    fn only_the_drivers_own_id_forms_are_volume_ids() {
        for id in [
            "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8",
            "pvc-1",
            "vol-6ec89291-e651-5af7-8470-1168d64acbcd",
        ] {
            assert!(parse_volume_id(id).is_some(), "{id}");
        }
        for id in [
            "nixos-var",
            "pvc-",
            "vol-1",
            "vol-6EC89291-e651-5af7-8470-1168d64acbcd",
            "vol-6ec89291e6515af784701168d64acbcd",
            "backup-1",
        ] {
            assert!(parse_volume_id(id).is_none(), "{id}");
        }
        // A name outside the forms is hashed, so every ID made is one the driver recognises.
        for name in ["nixos-var", "v", "vol-1"] {
            let id = volume_id_for_name(name);
            assert!(parse_volume_id(id.as_str()).is_some(), "{name} -> {id}");
            assert!(id.as_str().starts_with("vol-"));
        }
    }

    #[test]
    fn too_long_directories_are_an_error_not_a_panic() {
        let dir = RdsPath::new(format!("/{}", "d".repeat(200))).unwrap();
        let id = Slot::new("a".repeat(64)).unwrap();
        assert!(volume_file(&dir, &id).is_err());
        assert!(snapshot_file(&dir, &id, &id).is_err());
    }

    #[test]
    fn files_are_classified_strictly() {
        let dir = RdsPath::new("/pool/csi").unwrap();
        let vol = Slot::new("pvc-1").unwrap();
        let snap = Slot::new("snap-1").unwrap();
        assert_eq!(
            classify_file(&dir, volume_file(&dir, &vol).unwrap().as_str()),
            Some(ManagedFile::Volume(vol.clone()))
        );
        assert_eq!(
            classify_file(&dir, snapshot_file(&dir, &snap, &vol).unwrap().as_str()),
            Some(ManagedFile::Snapshot {
                id: snap.clone(),
                source: Some(vol.clone())
            })
        );
        assert_eq!(
            classify_file(&dir, "/pool/csi/snap-1.img"),
            Some(ManagedFile::Snapshot {
                id: snap,
                source: None
            })
        );
        // The Go driver's snapshot files are `<id>.img`; a v0.11 ID names its source.
        let v011 = "snap-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b-at-abcfd3394c";
        assert_eq!(
            classify_file(&dir, &format!("/pool/csi/{v011}.img")),
            Some(ManagedFile::Snapshot {
                id: Slot::new(v011).unwrap(),
                source: Some(Slot::new("pvc-7e2a9c41-3b5d-4e6f-8a1b-2c3d4e5f6a7b").unwrap())
            })
        );
        for other in [
            "/pool/csi-old/pvc-1.img",
            "/pool/csi/sub/pvc-1.img",
            "/pool/csi/pvc-1.raw",
            "/pool/csi/Bad.img",
            "/pool/csi",
        ] {
            assert_eq!(classify_file(&dir, other), None, "{other}");
        }
    }
}
