//! The scenarios of the VM tier. Each starts its own mock (`--nvmet`) and driver
//! (`--connector nvme-tcp`), and checks what the kernel really did: sysfs for connections,
//! `/proc/self/mountinfo` for mounts, the mock's backing files for where data landed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use csi_proto::v1::{
    CapacityRange, ControllerExpandVolumeRequest, NodeExpandVolumeRequest,
    NodeGetVolumeStatsRequest, NodeStageVolumeRequest, NodeUnstageVolumeRequest, VolumeCondition,
};
use e2e::staged::{provision, provision_with, retire, Staged};
use e2e::{block_cap, mount_cap, poll_until, vm, Env, EnvOptions, Mock, BASE_PATH, MIB};

pub use crate::encryption::{encrypted_block, encrypted_filesystem, encrypted_snapshot_restore};

/// The mock-rds flags of the tier: the kernel target on the VM's loopback.
pub const MOCK_NVMET: &[&str] = &["--nvmet", "--nvme-listen", "127.0.0.1"];
/// The NQN prefix the driver and the mock use.
pub const NQN_PREFIX: &str = "nqn.2000-02.com.mikrotik:";
/// Time for the kernel to connect, reconnect or drop a controller.
const KERNEL_WAIT: Duration = Duration::from_secs(60);

/// A mock with the kernel target and a controller+node driver with the production connector.
/// The host NQN file does not exist unless `driver_args` names another: the driver derives one.
pub async fn nvme_env(test: &str, driver_args: &[&str]) -> anyhow::Result<Env> {
    nvme_env_with(test, MOCK_NVMET, driver_args).await
}

/// [`nvme_env`] with other mock-rds flags.
pub async fn nvme_env_with(
    test: &str,
    mock_args: &[&str],
    driver_args: &[&str],
) -> anyhow::Result<Env> {
    let mut args = vec!["--connector", "nvme-tcp"];
    if !driver_args.contains(&"--nvme-hostnqn-file") {
        args.extend(["--nvme-hostnqn-file", "{work}/no-hostnqn"]);
    }
    args.extend_from_slice(driver_args);
    Env::start_with(
        test,
        EnvOptions {
            mock_args,
            driver_args: &args,
            ..EnvOptions::default()
        },
    )
    .await
}

pub fn nqn(volume_id: &str) -> String {
    format!("{NQN_PREFIX}{volume_id}")
}

pub fn backing_file(env: &Env, volume_id: &str) -> PathBuf {
    env.mock
        .data_dir
        .join(format!("{}/{volume_id}.img", &BASE_PATH[1..]))
}

/// Whether `needle` occurs in the file (the volumes here are small).
pub fn file_contains(path: &Path, needle: &[u8]) -> anyhow::Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(data.windows(needle.len()).any(|w| w == needle))
}

/// The device the mount at `path` is of, and its filesystem type.
pub fn mount_source(path: &str) -> Option<(String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(path))
        .and_then(|l| l.split(" - ").nth(1))
        .map(|rest| {
            let mut w = rest.split(' ');
            let fs = w.next().unwrap_or_default().to_string();
            (w.next().unwrap_or_default().to_string(), fs)
        })
}

/// The volume is connected (by sysfs) with exactly one namespace: its `/dev` path.
pub fn connected_device(volume_id: &str) -> anyhow::Result<String> {
    let c = vm::connection(&nqn(volume_id))
        .with_context(|| format!("{volume_id} is not connected (sysfs)"))?;
    ensure!(c.namespaces.len() == 1, "namespaces of {volume_id}: {c:?}");
    Ok(format!("/dev/{}", c.namespaces[0]))
}

pub fn ensure_disconnected(volume_id: &str) -> anyhow::Result<()> {
    if let Some(c) = vm::connection(&nqn(volume_id)) {
        bail!("{volume_id} is still connected: {c:?}");
    }
    Ok(())
}

async fn filesystem_lifecycle(test: &str, fs: &str, bytes: i64) -> anyhow::Result<()> {
    let env = nvme_env(test, &[]).await?;
    let v = provision(&env, fs, bytes, mount_cap(fs)).await;
    v.stage_and_publish(&env).await;
    let dev = connected_device(&v.volume_id)?;
    let (source, fs_seen) = mount_source(&v.target).context("target is not a mount")?;
    ensure!(
        source == dev && fs_seen == fs,
        "target is {fs_seen} on {source}, not {fs} on {dev}"
    );
    let payload = format!("written through {} over NVMe/TCP\n", v.volume_id);
    std::fs::write(Path::new(&v.target).join("data.txt"), &payload)?;
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    // The data went to this volume's file on the RDS, through the kernel target.
    ensure!(
        file_contains(&backing_file(&env, &v.volume_id), payload.as_bytes())?,
        "the payload is not in {}'s backing file",
        v.volume_id
    );
    // Restaged: the same filesystem, not formatted again.
    v.stage_and_publish(&env).await;
    connected_device(&v.volume_id)?;
    let back = std::fs::read_to_string(Path::new(&v.target).join("data.txt"))?;
    ensure!(back == payload, "after restaging the file reads {back:?}");
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    retire(&env, &v).await;
    Ok(())
}

pub async fn lifecycle_ext4() -> anyhow::Result<()> {
    filesystem_lifecycle("vmext4", "ext4", 64 * MIB).await
}

pub async fn lifecycle_xfs() -> anyhow::Result<()> {
    // mkfs.xfs refuses filesystems under 300 MiB.
    filesystem_lifecycle("vmxfs", "xfs", 320 * MIB).await
}

/// Writes `data` at `offset` of a block device (or file) and flushes it.
pub fn write_at(path: &str, offset: u64, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

pub async fn lifecycle_block() -> anyhow::Result<()> {
    let env = nvme_env("vmblock", &[]).await?;
    let v = provision(&env, "blk", 32 * MIB, block_cap()).await;
    v.stage_and_publish(&env).await;
    let dev = connected_device(&v.volume_id)?;
    let marker = format!("raw block data of {}", v.volume_id).into_bytes();
    write_at(&v.target, MIB as u64, &marker)?;
    // The target path is the volume's device itself.
    let target_rdev = nix::sys::stat::stat(v.target.as_str())?.st_rdev;
    let dev_rdev = nix::sys::stat::stat(dev.as_str())?.st_rdev;
    ensure!(target_rdev == dev_rdev, "the target is not {dev}");
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    let file = backing_file(&env, &v.volume_id);
    ensure!(
        read_at(&file, MIB as u64, marker.len())? == marker,
        "data not in the backing file"
    );
    v.stage_and_publish(&env).await;
    let back = read_at(Path::new(&v.target), MIB as u64, marker.len())?;
    ensure!(
        back == marker,
        "after restaging the device reads other data"
    );
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    retire(&env, &v).await;
    Ok(())
}

pub fn fs_total_bytes(path: &str) -> anyhow::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(s.blocks() * s.fragment_size())
}

async fn expansion(test: &str, fs: &str, bytes: i64, grown: i64) -> anyhow::Result<()> {
    let env = nvme_env(test, &[]).await?;
    let v = provision(&env, fs, bytes, mount_cap(fs)).await;
    v.stage_and_publish(&env).await;
    let before = fs_total_bytes(&v.target)?;
    std::fs::write(Path::new(&v.target).join("kept.txt"), "kept")?;
    let range = Some(CapacityRange {
        required_bytes: grown,
        limit_bytes: 0,
    });
    let ctl = env
        .controller()
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: range,
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(ctl.capacity_bytes >= grown && ctl.node_expansion_required);
    let node = env
        .node()
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            volume_path: v.target.clone(),
            capacity_range: range,
            staging_target_path: v.staging.clone(),
            volume_capability: Some(v.cap.clone()),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        node.capacity_bytes >= grown,
        "NodeExpand reported {}",
        node.capacity_bytes
    );
    let dev = connected_device(&v.volume_id)?;
    let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{}/size", &dev[5..]))?
        .trim()
        .parse()?;
    ensure!(
        sectors * 512 == grown as u64,
        "the kernel sees {sectors} sectors"
    );
    let after = fs_total_bytes(&v.target)?;
    // The filesystem grew by most of what was added, while mounted.
    ensure!(
        after > before + (grown - bytes) as u64 * 3 / 4,
        "{fs} grew from {before} to {after} bytes only"
    );
    ensure!(std::fs::read_to_string(Path::new(&v.target).join("kept.txt"))? == "kept");
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    retire(&env, &v).await;
    Ok(())
}

pub async fn expansion_ext4() -> anyhow::Result<()> {
    expansion("vmgrowext4", "ext4", 64 * MIB, 128 * MIB).await
}

pub async fn expansion_xfs() -> anyhow::Result<()> {
    expansion("vmgrowxfs", "xfs", 320 * MIB, 448 * MIB).await
}

/// A disk of another tool on the same RDS, exported under its own NQN and connected on the
/// node by hand (a node's own `/var` export, say).
struct Foreign {
    nqn: String,
    file: PathBuf,
}

async fn foreign_disk(env: &Env, slot: &str) -> anyhow::Result<Foreign> {
    let nqn = format!("{NQN_PREFIX}{slot}");
    env.exec_ok(&format!(
        "/disk add type=file file-path=/storage-pool/other/{slot}.img file-size=16M slot={slot} \
         nvme-tcp-export=yes nvme-tcp-server-port=4420 nvme-tcp-server-nqn={nqn}"
    ))
    .await?;
    let host = "nqn.2014-08.org.nvmexpress:uuid:0b5f2e0c-1c1a-4d6e-9d7a-3f3e9a1c0001";
    vm::nvme_connect(&nqn, "127.0.0.1", 4420, host)?;
    poll_until("the foreign namespace", KERNEL_WAIT, || async {
        vm::connection(&nqn).filter(|c| !c.namespaces.is_empty())
    })
    .await?;
    Ok(Foreign {
        file: env
            .mock
            .data_dir
            .join(format!("storage-pool/other/{slot}.img")),
        nqn,
    })
}

impl Foreign {
    fn device(&self) -> anyhow::Result<String> {
        let c =
            vm::connection(&self.nqn).with_context(|| format!("{} was disconnected", self.nqn))?;
        Ok(format!(
            "/dev/{}",
            c.namespaces.first().context("no namespace")?
        ))
    }

    fn disconnect(&self) -> anyhow::Result<()> {
        std::process::Command::new("nvme")
            .args(["disconnect", "-n", &self.nqn])
            .status()?;
        Ok(())
    }
}

pub async fn renumbered_devices() -> anyhow::Result<()> {
    let env = nvme_env("vmrenum", &[]).await?;
    // Connected first, so it holds nvme0 and the volume gets another number.
    let decoy = foreign_disk(&env, "decoy").await?;
    let decoy_marker = b"decoy data, never the volume's";
    write_at(&decoy.device()?, MIB as u64, decoy_marker)?;
    let v = provision(&env, "blk", 32 * MIB, block_cap()).await;
    v.stage_and_publish(&env).await;
    let c = vm::connection(&nqn(&v.volume_id)).context("volume not connected")?;
    ensure!(
        !c.controllers.contains(&"nvme0".to_string()),
        "the volume got nvme0: the decoy did not renumber it"
    );
    // What the driver published is this volume's namespace: data written there lands in
    // this volume's file, and the decoy's data is not what it reads.
    ensure!(read_at(Path::new(&v.target), MIB as u64, decoy_marker.len())? != decoy_marker);
    let marker = format!("volume {}", v.volume_id).into_bytes();
    write_at(&v.target, 2 * MIB as u64, &marker)?;
    ensure!(
        read_at(
            &backing_file(&env, &v.volume_id),
            2 * MIB as u64,
            marker.len()
        )? == marker
    );
    ensure!(!file_contains(&decoy.file, &marker)?);
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    ensure!(
        vm::connection(&decoy.nqn).is_some(),
        "unstage disconnected the decoy"
    );
    decoy.disconnect()?;
    retire(&env, &v).await;
    Ok(())
}

pub async fn stage(
    env: &Env,
    v: &Staged,
    staging: &str,
    cap: &csi_proto::v1::VolumeCapability,
) -> Result<(), tonic::Status> {
    env.node()
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            publish_context: v.publish_context.clone(),
            staging_target_path: staging.to_string(),
            volume_capability: Some(cap.clone()),
            volume_context: v.volume_context.clone(),
            secrets: v.secrets.clone(),
        })
        .await
        .map(drop)
}

pub async fn foreign_connection_untouched() -> anyhow::Result<()> {
    let mut env = nvme_env("vmforeign", &[]).await?;
    let var = foreign_disk(&env, "nixos-var").await?;
    let dev = var.device()?;
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", &dev])
        .output()?;
    ensure!(out.status.success(), "mkfs of the foreign disk: {out:?}");
    // Outside the test's work dir: the node's own mount is none of the driver's business.
    let mnt = Path::new(vm::GUEST_TMP).join("node-var");
    std::fs::create_dir_all(&mnt)?;
    nix::mount::mount(
        Some(dev.as_str()),
        &mnt,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    std::fs::write(mnt.join("node.conf"), "the node's own data")?;
    let intact = |what: &str| -> anyhow::Result<()> {
        ensure!(
            vm::connection(&var.nqn).is_some(),
            "{what} disconnected the node's own export"
        );
        ensure!(
            std::fs::read_to_string(mnt.join("node.conf"))
                .ok()
                .as_deref()
                == Some("the node's own data"),
            "{what} broke the node's own mount"
        );
        Ok(())
    };

    // A volume staged and unstaged beside it.
    let v = provision(&env, "vol", 64 * MIB, mount_cap("ext4")).await;
    v.stage_and_publish(&env).await;
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    intact("staging and unstaging a volume")?;

    // A stage asked to use the foreign NQN is refused before anything is touched.
    let mut hijack = v.volume_context.clone();
    hijack.insert("nqn".into(), var.nqn.clone());
    let err = env
        .node()
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            publish_context: Default::default(),
            staging_target_path: v.staging.clone(),
            volume_capability: Some(v.cap.clone()),
            volume_context: hijack,
            ..Default::default()
        })
        .await
        .expect_err("a stage of a foreign NQN must fail");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    intact("a stage naming the foreign NQN")?;

    // A stage that connects and then fails (its staging path is a file) undoes only itself.
    let blocker = env.path("staging-is-a-file");
    std::fs::write(&blocker, "not a directory")?;
    let r = stage(&env, &v, &blocker.display().to_string(), &v.cap).await;
    ensure!(r.is_err(), "staging onto a file succeeded");
    ensure_disconnected(&v.volume_id)?;
    intact("a failed stage")?;

    // The node plugin restarts (start-up recovery), and unstages a volume it never staged.
    env.restart_driver().await?;
    intact("the node's start-up recovery")?;
    env.node()
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: v.staging.clone(),
        })
        .await?;
    intact("unstaging a volume that is not staged")?;

    nix::mount::umount(&mnt)?;
    var.disconnect()?;
    retire(&env, &v).await;
    Ok(())
}

pub async fn block_consumer_survives_restage() -> anyhow::Result<()> {
    let env = nvme_env("vmblkuse", &[]).await?;
    let v = provision(&env, "blk", 32 * MIB, block_cap()).await;
    v.stage_and_publish(&env).await;
    let ctrl_before = vm::connection(&nqn(&v.volume_id)).context("not connected")?;
    // A consumer (a VM's disk, say) holds the device open.
    let mut consumer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&v.target)?;
    consumer.seek(SeekFrom::Start(0))?;
    consumer.write_all(b"first")?;
    consumer.sync_all()?;

    // A repeated stage (kubelet retry) succeeds and changes nothing.
    stage(&env, &v, &v.staging, &v.cap).await?;
    // A stage that must fail: same volume, filesystem capability on a block staging.
    let wrong = stage(&env, &v, &v.staging, &mount_cap("ext4")).await;
    ensure!(
        wrong.is_err(),
        "a stage with a different capability succeeded"
    );
    // One at another staging path fails too.
    let other = env.path("staging-elsewhere").display().to_string();
    let elsewhere = stage(&env, &v, &other, &v.cap).await;
    ensure!(elsewhere.is_err(), "a second staging path was accepted");

    let ctrl_after =
        vm::connection(&nqn(&v.volume_id)).context("the consumer's volume was disconnected")?;
    ensure!(
        ctrl_after.controllers == ctrl_before.controllers,
        "reconnected: {ctrl_before:?} -> {ctrl_after:?}"
    );
    consumer.seek(SeekFrom::Start(0))?;
    consumer.write_all(b"still")?;
    consumer.sync_all()?;
    ensure!(read_at(&backing_file(&env, &v.volume_id), 0, 5)? == b"still");
    drop(consumer);
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    retire(&env, &v).await;
    Ok(())
}

fn controller_state(ctrl: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/nvme/{ctrl}/state"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The volume's condition as the node plugin reports it to kubelet, asked with a deadline as
/// kubelet asks: the call must answer while the target is down, not hang on the device.
pub async fn node_condition(env: &Env, v: &Staged) -> anyhow::Result<VolumeCondition> {
    let mut request = tonic::Request::new(NodeGetVolumeStatsRequest {
        volume_id: v.volume_id.clone(),
        volume_path: v.target.clone(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    let reply = tokio::time::timeout(
        Duration::from_secs(15),
        env.node().node_get_volume_stats(request),
    )
    .await
    .context("NodeGetVolumeStats did not answer within its deadline")??;
    reply
        .into_inner()
        .volume_condition
        .context("NodeGetVolumeStats reported no condition")
}

/// `mount -o remount,<mode> <path>`: changes the file system's own read-only flag, which every
/// mount of it (the staging mount and the pod's bind mount) then shows.
fn remount(path: &str, mode: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("mount")
        .args(["-o", &format!("remount,{mode}"), path])
        .output()
        .context("running mount")?;
    ensure!(
        out.status.success(),
        "mount -o remount,{mode} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The RDS's target goes away under a mounted volume: the controller reconnects (no I/O
/// error), the volume's condition turns abnormal naming it as soon as it is not live (and the
/// stats call still answers), I/O waits, a node plugin restart disconnects nothing; once the
/// target is back the write lands and the condition is normal again. Then the file system is
/// forced read-only: abnormal until it is writable again.
pub async fn target_outage_while_mounted() -> anyhow::Result<()> {
    let mut env = nvme_env("vmoutage", &[]).await?;
    let params = [("reconnectDelay", "1"), ("ctrlLossTmo", "120")];
    let v = provision_with(&env, "vol", 64 * MIB, mount_cap("ext4"), &params).await;
    v.stage_and_publish(&env).await;
    let c = vm::connection(&nqn(&v.volume_id)).context("not connected")?;
    let ctrl = c.controllers.first().context("no controller")?.clone();
    std::fs::write(Path::new(&v.target).join("before.txt"), "before the outage")?;

    let healthy = node_condition(&env, &v).await?;
    ensure!(!healthy.abnormal, "abnormal before the outage: {healthy:?}");

    env.exec_ok("/mock fault target-down enabled=yes").await?;
    poll_until("the controller to lose its target", KERNEL_WAIT, || async {
        (controller_state(&ctrl) != "live").then_some(())
    })
    .await?;
    let down = node_condition(&env, &v).await?;
    ensure!(
        down.abnormal && down.message.contains(&format!("{ctrl} is ")),
        "the condition while the target is down: {down:?}"
    );
    // I/O issued during the outage waits for the target instead of failing.
    let during = Path::new(&v.target).join("during.txt");
    let writer = {
        let during = during.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&during)?;
            f.write_all(b"written during the outage")?;
            f.sync_all()
        })
    };
    // The node plugin restarts meanwhile; its recovery must not disconnect or reformat.
    env.restart_driver().await?;
    ensure!(
        vm::connection(&nqn(&v.volume_id)).is_some(),
        "recovery disconnected the volume"
    );
    ensure!(
        !writer.is_finished(),
        "a synced write finished while the target was down"
    );

    env.exec_ok("/mock fault target-down enabled=no").await?;
    poll_until("the controller to reconnect", KERNEL_WAIT, || async {
        (controller_state(&ctrl) == "live").then_some(())
    })
    .await?;
    let back = node_condition(&env, &v).await?;
    ensure!(
        !back.abnormal,
        "abnormal after the target returned: {back:?}"
    );
    let joined = tokio::task::spawn_blocking(move || writer.join()).await?;
    joined
        .map_err(|_| anyhow::anyhow!("the writer panicked"))?
        .context("the write issued during the outage failed")?;
    ensure!(
        mount_source(&v.target).is_some(),
        "the mount did not survive the outage"
    );
    ensure!(
        std::fs::read_to_string(Path::new(&v.target).join("before.txt"))? == "before the outage"
    );
    ensure!(std::fs::read_to_string(&during)? == "written during the outage");
    // The file system forced read-only (as ext4's errors=remount-ro leaves it) is abnormal;
    // writable again, normal.
    remount(&v.staging, "ro")?;
    let read_only = node_condition(&env, &v).await;
    remount(&v.staging, "rw")?;
    let read_only = read_only?;
    ensure!(
        read_only.abnormal && read_only.message.contains("is read-only"),
        "the condition of a file system remounted read-only: {read_only:?}"
    );
    let writable = node_condition(&env, &v).await?;
    ensure!(!writable.abnormal, "abnormal once writable: {writable:?}");
    // A retried stage after the restart accepts the volume as it is (not formatted again).
    stage(&env, &v, &v.staging, &v.cap).await?;
    ensure!(
        std::fs::read_to_string(Path::new(&v.target).join("before.txt"))? == "before the outage"
    );
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    retire(&env, &v).await;
    Ok(())
}

/// `/etc/nvme` replaced by a tmpfs for the scenario, restored on drop.
struct EtcNvme;

impl EtcNvme {
    fn new() -> anyhow::Result<Self> {
        std::fs::create_dir_all("/etc/nvme").ok();
        nix::mount::mount(
            Some("tmpfs"),
            "/etc/nvme",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting a tmpfs on /etc/nvme")?;
        Ok(Self)
    }
}

impl Drop for EtcNvme {
    fn drop(&mut self) {
        let _ = nix::mount::umount2("/etc/nvme", nix::mount::MntFlags::MNT_DETACH);
    }
}

async fn stage_with_host_files(test: &str) -> anyhow::Result<String> {
    let env = nvme_env(test, &["--nvme-hostnqn-file", "/etc/nvme/hostnqn"]).await?;
    let v = provision(&env, "vol", 64 * MIB, mount_cap("ext4")).await;
    v.stage_and_publish(&env).await;
    let c = vm::connection(&nqn(&v.volume_id)).context("not connected")?;
    let host = vm::controller_hostnqn(c.controllers.first().context("no controller")?)
        .context("no hostnqn in sysfs")?;
    v.unpublish_and_unstage(&env).await;
    ensure_disconnected(&v.volume_id)?;
    retire(&env, &v).await;
    Ok(host)
}

pub async fn host_identity_files() -> anyhow::Result<()> {
    let _etc = EtcNvme::new()?;
    // A host NQN file and no host ID file.
    let own = "nqn.2014-08.org.nvmexpress:uuid:6a2c0f4e-2b7d-4c55-9a61-0d2b9f3e7a10";
    std::fs::write("/etc/nvme/hostnqn", format!("{own}\n"))?;
    let seen = stage_with_host_files("vmhostnqn").await?;
    ensure!(seen == own, "connected as {seen}, not the host's {own}");
    // Neither file: the driver's derived identity.
    std::fs::remove_file("/etc/nvme/hostnqn")?;
    let seen = stage_with_host_files("vmnohost").await?;
    ensure!(
        seen.starts_with("nqn.2014-08.org.nvmexpress:uuid:") && seen != own,
        "connected as {seen}"
    );
    Ok(())
}

/// mock-rds `--nvmet` on its own: the kernel target follows `/disk` changes, a restart (even
/// after SIGKILL) takes over what it made, and what it did not make is never touched.
pub async fn target_follows_the_disks() -> anyhow::Result<()> {
    let keys = e2e::Keys::generate()?;
    let root = Path::new(vm::NVMET_CONFIGFS);
    let foreign = "nqn.2014-08.org.example:someone-else";
    std::fs::create_dir(root.join("subsystems").join(foreign))?;
    let mut mock = Mock::start_with(&keys, "default", MOCK_NVMET).await?;
    let sub = |n: &str| root.join("subsystems").join(n);
    let a = format!("{NQN_PREFIX}pvc-a");
    mock.exec_ok(&keys, &format!("/disk add type=file file-path=/storage-pool/t/pvc-a.img file-size=8M slot=pvc-a nvme-tcp-export=yes nvme-tcp-server-port=4420 nvme-tcp-server-nqn={a}")).await?;
    ensure!(
        sub(&a).join("namespaces/1").is_dir(),
        "no subsystem for pvc-a"
    );
    ensure!(std::fs::read_to_string(sub(&a).join("namespaces/1/enable"))?.trim() == "1");
    let linked = |nqn: &str| {
        std::fs::read_dir(root.join("ports")).is_ok_and(|rd| {
            rd.flatten()
                .any(|p| p.path().join("subsystems").join(nqn).exists())
        })
    };
    ensure!(linked(&a), "pvc-a is on no port");
    // A disk whose NQN is the foreign subsystem's is not served over it.
    mock.exec_ok(&keys, &format!("/disk add type=file file-path=/storage-pool/t/clash.img file-size=8M slot=clash nvme-tcp-export=yes nvme-tcp-server-port=4420 nvme-tcp-server-nqn={foreign}")).await?;
    ensure!(
        !sub(foreign).join("namespaces/1").exists(),
        "the foreign subsystem was changed"
    );
    // Allowed hosts follow the disk.
    let h = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555";
    mock.exec_ok(
        &keys,
        &format!("/disk set [find slot=pvc-a] nvme-tcp-server-allow-host-name={h}"),
    )
    .await?;
    ensure!(std::fs::read_to_string(sub(&a).join("attr_allow_any_host"))?.trim() == "0");
    ensure!(sub(&a).join("allowed_hosts").join(h).exists());
    mock.exec_ok(
        &keys,
        "/disk set [find slot=pvc-a] nvme-tcp-server-allow-host-name=\"\"",
    )
    .await?;
    ensure!(std::fs::read_to_string(sub(&a).join("attr_allow_any_host"))?.trim() == "1");
    // Killed without clean-up, then started again: it takes its entries over.
    mock.process.signal(nix::sys::signal::Signal::SIGKILL)?;
    mock.process.wait_exit(Duration::from_secs(10)).await?;
    ensure!(sub(&a).exists(), "SIGKILL cannot have removed anything");
    mock.resume(&keys).await?;
    ensure!(sub(&a).join("namespaces/1").is_dir());
    mock.exec_ok(&keys, "/disk set [find slot=pvc-a] nvme-tcp-export=no")
        .await?;
    ensure!(!sub(&a).exists(), "unexported, the subsystem stays");
    mock.exec_ok(&keys, "/disk set [find slot=pvc-a] nvme-tcp-export=yes")
        .await?;
    ensure!(sub(&a).exists());
    mock.exec_ok(&keys, "/disk remove [find slot=pvc-a]")
        .await?;
    ensure!(!sub(&a).exists(), "removed, the subsystem stays");
    mock.exec_ok(&keys, &format!("/disk add type=file file-path=/storage-pool/t/pvc-b.img file-size=8M slot=pvc-b nvme-tcp-export=yes nvme-tcp-server-port=4420 nvme-tcp-server-nqn={NQN_PREFIX}pvc-b")).await?;
    mock.stop().await?;
    let left: Vec<String> = vm::target_entries()
        .into_iter()
        .filter(|e| !e.ends_with(foreign))
        .collect();
    ensure!(
        left.is_empty(),
        "after shutdown the target still has {left:?}"
    );
    ensure!(sub(foreign).is_dir(), "the foreign subsystem was removed");
    std::fs::remove_dir(sub(foreign))?;
    Ok(())
}

pub use super::bench::{nodestage_bench, nodestage_bench_encrypted};
pub use super::fencing::fenced_volume_admits_only_its_nodes;
