//! Encrypted volumes on the real kernel: dm-crypt over NVMe/TCP. What reaches the RDS (the
//! mock's backing file, written by the kernel target) must be a LUKS2 header and ciphertext; what
//! the pod sees is the plain data, through the mapping the driver opened.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context};
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType};
use csi_proto::v1::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerUnpublishVolumeRequest,
    CreateSnapshotRequest, DeleteSnapshotRequest, DeleteVolumeRequest, NodeExpandVolumeRequest,
    NodeUnstageVolumeRequest, VolumeContentSource,
};
use e2e::staged::{provision_request, provision_with, retire, Staged};
use e2e::{block_cap, create_request, mount_cap, Env, MIB, NODE_ID};

use crate::scenarios::{
    backing_file, connected_device, ensure_disconnected, file_contains, fs_total_bytes,
    mount_source, node_condition, nvme_env, read_at, stage, write_at,
};

const PASSPHRASE: &str = "correct horse battery staple";
const OTHER_PASSPHRASE: &str = "another class's passphrase";
/// LUKS2's binary header starts with this magic and version 2.
const LUKS2_MAGIC: &[u8] = b"LUKS\xba\xbe\x00\x02";
/// The LUKS2 header area (binary headers, JSON and key slots) of cryptsetup's default layout.
const HEADER_AREA: usize = 16 * MIB as usize;

fn secrets(passphrase: &str) -> HashMap<String, String> {
    [("encryptionPassphrase".to_string(), passphrase.to_string())].into()
}

/// A volume of an encrypted class, controller-published, its node-stage secret [`PASSPHRASE`].
async fn provision_encrypted(
    env: &Env,
    suffix: &str,
    bytes: i64,
    cap: csi_proto::v1::VolumeCapability,
) -> Staged {
    let mut v = provision_with(env, suffix, bytes, cap, &[("encrypted", "true")]).await;
    v.secrets = secrets(PASSPHRASE);
    v
}

/// The volume's file `known.txt` reads `text`.
fn ensure_known(v: &Staged, text: &str, when: &str) -> anyhow::Result<()> {
    let back = std::fs::read_to_string(Path::new(&v.target).join("known.txt"))?;
    ensure!(back == text, "{when} the file reads {back:?}");
    Ok(())
}

/// The volume's open mapping: its `/dev/dm-N` and the devices under it (sysfs).
fn mapping(volume_id: &str) -> Option<(String, Vec<String>)> {
    let name = format!("rds-csi-{volume_id}");
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let dm = e.path();
            let found = std::fs::read_to_string(dm.join("dm/name")).ok()?;
            (found.trim() == name).then(|| {
                let mut slaves: Vec<String> = std::fs::read_dir(dm.join("slaves"))
                    .map(|rd| {
                        rd.flatten()
                            .map(|s| s.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                slaves.sort();
                (format!("/dev/{}", e.file_name().to_string_lossy()), slaves)
            })
        })
}

/// The volume is open through its mapping, over its NVMe/TCP namespace: the mapping's device.
fn open_mapping(volume_id: &str) -> anyhow::Result<String> {
    let nvme = connected_device(volume_id)?;
    let (dm, slaves) = mapping(volume_id).with_context(|| format!("{volume_id} has no mapping"))?;
    ensure!(
        slaves == [nvme[5..].to_string()],
        "the mapping of {volume_id} is over {slaves:?}, not {nvme}"
    );
    Ok(dm)
}

fn ensure_closed(volume_id: &str) -> anyhow::Result<()> {
    ensure!(
        mapping(volume_id).is_none(),
        "the mapping of {volume_id} is still open"
    );
    ensure_disconnected(volume_id)
}

/// What the RDS holds is a LUKS2 volume, and not `plain` anywhere.
fn ensure_ciphertext(env: &Env, v: &Staged, plain: &[u8]) -> anyhow::Result<()> {
    let file = backing_file(env, &v.volume_id);
    ensure!(
        read_at(&file, 0, LUKS2_MAGIC.len())? == LUKS2_MAGIC,
        "{} does not start with a LUKS2 header",
        file.display()
    );
    ensure!(
        !file_contains(&file, plain)?,
        "the plain text is in {}",
        file.display()
    );
    Ok(())
}

/// A stage with `passphrase` (None: no secret) that must fail with `code`, naming the secret's
/// key; nothing stays open. The volume keeps that secret.
async fn refused_with(
    env: &Env,
    v: &mut Staged,
    passphrase: Option<&str>,
    code: tonic::Code,
) -> anyhow::Result<()> {
    v.secrets = passphrase.map(secrets).unwrap_or_default();
    let e = stage(env, v, &v.staging, &v.cap)
        .await
        .err()
        .context("the stage succeeded")?;
    ensure!(
        e.code() == code && e.message().contains("encryptionPassphrase"),
        "stage failed with {:?}: {}",
        e.code(),
        e.message()
    );
    ensure_closed(&v.volume_id)
}

async fn unstage(env: &Env, v: &Staged) -> anyhow::Result<()> {
    env.node()
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: v.staging.clone(),
        })
        .await?;
    ensure_closed(&v.volume_id)
}

async fn expand(env: &Env, v: &Staged, grown: i64) -> anyhow::Result<()> {
    let range = Some(CapacityRange {
        required_bytes: grown,
        limit_bytes: 0,
    });
    env.controller()
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: range,
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        })
        .await?;
    env.node()
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            volume_path: v.target.clone(),
            capacity_range: range,
            staging_target_path: v.staging.clone(),
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// An encrypted ext4 volume through its life: refused without its secret, formatted, written,
/// grown online, kept across a node plugin restart, ciphertext on the RDS, refused with another
/// passphrase (header untouched), restaged.
pub async fn encrypted_filesystem() -> anyhow::Result<()> {
    let mut env = nvme_env("vmcrypt", &[]).await?;
    let mut v = provision_encrypted(&env, "crypt", 64 * MIB, mount_cap("ext4")).await;
    ensure!(v.volume_context.get("encrypted").map(String::as_str) == Some("true"));

    // Without its secret, or with a short one, nothing is attached.
    refused_with(&env, &mut v, None, tonic::Code::InvalidArgument).await?;
    refused_with(
        &env,
        &mut v,
        Some("too short"),
        tonic::Code::InvalidArgument,
    )
    .await?;

    v.secrets = secrets(PASSPHRASE);
    v.stage_and_publish(&env).await;
    let dm = open_mapping(&v.volume_id)?;
    let (source, fs) = mount_source(&v.target).context("the target is not a mount")?;
    ensure!(
        source == dm && fs == "ext4",
        "the target is {fs} on {source}, not ext4 on {dm}"
    );
    let text = format!(
        "a known text of {}, to be found nowhere on the RDS\n",
        v.volume_id
    );
    std::fs::write(Path::new(&v.target).join("known.txt"), &text)?;

    let before = fs_total_bytes(&v.target)?;
    expand(&env, &v, 128 * MIB).await?;
    let after = fs_total_bytes(&v.target)?;
    ensure!(
        after > before + 48 * MIB as u64,
        "the file system grew from {before} to {after} bytes only"
    );

    // A restarted node plugin finds the mapping it opened, and unstage still closes it.
    env.restart_driver().await?;
    let condition = node_condition(&env, &v).await?;
    ensure!(
        !condition.abnormal,
        "after a restart: {}",
        condition.message
    );
    ensure_known(&v, &text, "after a restart")?;
    v.unpublish_and_unstage(&env).await;
    ensure_closed(&v.volume_id)?;
    ensure_ciphertext(&env, &v, text.as_bytes())?;

    // Another passphrase opens nothing and changes nothing.
    let header = read_at(&backing_file(&env, &v.volume_id), 0, HEADER_AREA)?;
    refused_with(
        &env,
        &mut v,
        Some(OTHER_PASSPHRASE),
        tonic::Code::FailedPrecondition,
    )
    .await?;
    ensure!(
        read_at(&backing_file(&env, &v.volume_id), 0, HEADER_AREA)? == header,
        "a failed stage changed the LUKS2 header"
    );

    v.secrets = secrets(PASSPHRASE);
    v.stage_and_publish(&env).await;
    ensure_known(&v, &text, "after restaging")?;
    v.unpublish_and_unstage(&env).await;
    ensure_closed(&v.volume_id)?;

    retire(&env, &v).await;
    Ok(())
}

/// A snapshot of an encrypted volume carries its LUKS2 header: the volume restored from it opens
/// with the source's passphrase only, and what it holds on the RDS is ciphertext too.
///
/// The source's first stage also finds what a stage cut short after writing the header leaves
/// (the header, still labelled as not ready): it finishes the volume instead of refusing it.
pub async fn encrypted_snapshot_restore() -> anyhow::Result<()> {
    let env = nvme_env("vmcryptsnap", &[]).await?;
    let v = provision_encrypted(&env, "cryptsrc", 64 * MIB, mount_cap("ext4")).await;
    let file = backing_file(&env, &v.volume_id);
    let key_file = file.with_extension("passphrase");
    std::fs::write(&key_file, PASSPHRASE)?;
    let mut format = vec!["luksFormat", "--type", "luks2", "--batch-mode"];
    format.extend(["--label", "rds-csi-unready", "--pbkdf", "pbkdf2"]);
    format.extend(["--pbkdf-force-iterations", "1000", "--key-file"]);
    let done = std::process::Command::new("cryptsetup")
        .args(&format)
        .arg(&key_file)
        .arg(&file)
        .status()?;
    std::fs::remove_file(&key_file)?;
    ensure!(
        done.success(),
        "cryptsetup luksFormat of {}",
        file.display()
    );
    v.stage_and_publish(&env).await;
    let label = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "LABEL"])
        .arg(&file)
        .output()?;
    ensure!(
        label.stdout.trim_ascii().is_empty(),
        "the header is still labelled {:?} once the volume is ready",
        String::from_utf8_lossy(&label.stdout)
    );
    let text = format!("a known text of {}, carried by its snapshot\n", v.volume_id);
    std::fs::write(Path::new(&v.target).join("known.txt"), &text)?;
    v.unpublish_and_unstage(&env).await;
    ensure_closed(&v.volume_id)?;

    let snapshot = env
        .controller()
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: env.name("cryptsnap"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .snapshot
        .context("no snapshot")?;
    let mut request = create_request(&env.name("cryptrestored"), 64 * MIB, mount_cap("ext4"));
    request.parameters = [("encrypted".to_string(), "true".to_string())].into();
    request.volume_content_source = Some(VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: snapshot.snapshot_id.clone(),
        })),
    });
    let mut restored = provision_request(&env, "cryptrestored", request).await;
    refused_with(
        &env,
        &mut restored,
        Some(OTHER_PASSPHRASE),
        tonic::Code::FailedPrecondition,
    )
    .await?;
    restored.secrets = secrets(PASSPHRASE);
    restored.stage_and_publish(&env).await;
    ensure_known(&restored, &text, "restored,")?;
    restored.unpublish_and_unstage(&env).await;
    ensure_closed(&restored.volume_id)?;
    ensure_ciphertext(&env, &restored, text.as_bytes())?;

    // The source and its snapshot go first: retiring the last volume checks that nothing of
    // the run is left.
    let mut ctl = env.controller();
    ctl.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: snapshot.snapshot_id,
        ..Default::default()
    })
    .await?;
    ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: NODE_ID.into(),
        ..Default::default()
    })
    .await?;
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await?;
    retire(&env, &restored).await;
    Ok(())
}

/// An encrypted raw block volume: the pod gets the mapping, the RDS gets ciphertext.
pub async fn encrypted_block() -> anyhow::Result<()> {
    let env = nvme_env("vmcryptblk", &[]).await?;
    let v = provision_encrypted(&env, "cryptblk", 32 * MIB, block_cap()).await;
    v.stage_and_publish(&env).await;
    let dm = open_mapping(&v.volume_id)?;
    let target_rdev = nix::sys::stat::stat(v.target.as_str())?.st_rdev;
    ensure!(
        target_rdev == nix::sys::stat::stat(dm.as_str())?.st_rdev,
        "the target is not the mapping {dm}"
    );
    let marker = format!("raw block data of {}, encrypted", v.volume_id).into_bytes();
    write_at(&v.target, MIB as u64, &marker)?;
    v.unpublish_and_unstage(&env).await;
    ensure_closed(&v.volume_id)?;
    ensure_ciphertext(&env, &v, &marker)?;

    v.stage_and_publish(&env).await;
    let back = read_at(Path::new(&v.target), MIB as u64, marker.len())?;
    ensure!(
        back == marker,
        "after restaging the mapping reads other data"
    );
    v.unpublish_and_unstage(&env).await;
    unstage(&env, &v).await?;
    retire(&env, &v).await;
    Ok(())
}
