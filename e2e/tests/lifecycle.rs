//! The whole life of a volume through the real binaries, with the loop connector over the
//! mock's data dir: create, publish, stage, publish on the node, write, unpublish, unstage,
//! stage and publish again, read back, tear down, delete. Needs root (loop devices, mkfs, mount).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use csi_proto::v1::{
    ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest, DeleteVolumeRequest,
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
};
use e2e::{block_cap, create_request, is_root, mount_cap, Env, BASE_PATH, MIB, NODE_ID};

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {test}: needs root for loop devices, mkfs and mount");
    true
}

struct Staged {
    volume_id: String,
    cap: VolumeCapability,
    volume_context: HashMap<String, String>,
    publish_context: HashMap<String, String>,
    staging: String,
    target: String,
}

impl Staged {
    async fn stage_and_publish(&self, env: &Env) {
        let mut node = env.node();
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: self.volume_id.clone(),
            publish_context: self.publish_context.clone(),
            staging_target_path: self.staging.clone(),
            volume_capability: Some(self.cap.clone()),
            volume_context: self.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            publish_context: self.publish_context.clone(),
            staging_target_path: self.staging.clone(),
            target_path: self.target.clone(),
            volume_capability: Some(self.cap.clone()),
            readonly: false,
            volume_context: self.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    async fn unpublish_and_unstage(&self, env: &Env) {
        let mut node = env.node();
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: self.volume_id.clone(),
            target_path: self.target.clone(),
        })
        .await
        .unwrap();
        assert!(!Path::new(&self.target).exists(), "target path left behind");
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: self.volume_id.clone(),
            staging_target_path: self.staging.clone(),
        })
        .await
        .unwrap();
        // Nothing of this volume stays on the host: no mount, no loop device.
        assert_eq!(env.host.leftovers(), Vec::<String>::new());
    }
}

/// Creates and controller-publishes a volume, returning what the node calls need.
async fn provision(env: &Env, suffix: &str, bytes: i64, cap: VolumeCapability) -> Staged {
    let mut ctl = env.controller();
    let name = env.name(suffix);
    let vol = ctl
        .create_volume(create_request(&name, bytes, cap.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.volume_id, name);
    let disk = env
        .mock
        .disks()
        .unwrap()
        .into_iter()
        .find(|d| d.slot == name)
        .expect("disk on the mock");
    assert_eq!(disk.file_path, format!("{BASE_PATH}/{name}.img"));
    assert!(disk.exported);
    assert_eq!(disk.file_size, bytes as u64);
    let publish_context = ctl
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: name.clone(),
            node_id: NODE_ID.into(),
            volume_capability: Some(cap.clone()),
            readonly: false,
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(
        publish_context.get("nvme_nqn").map(String::as_str),
        Some(format!("nqn.2000-02.com.mikrotik:{name}").as_str())
    );
    Staged {
        volume_id: name,
        cap,
        volume_context: vol.volume_context,
        publish_context,
        staging: env.path(&format!("staging-{suffix}")).display().to_string(),
        target: env
            .path(&format!("pods/{suffix}/target"))
            .display()
            .to_string(),
    }
}

/// Controller-unpublishes and deletes; then the mock holds neither disk nor file, and the
/// backing file is gone from the data dir.
async fn retire(env: &Env, v: &Staged) {
    let mut ctl = env.controller();
    ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: NODE_ID.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(env.mock.disks().unwrap().is_empty());
    assert!(env.mock.files().unwrap().is_empty());
    let backing = env
        .mock
        .data_dir
        .join(format!("{}/{}.img", &BASE_PATH[1..], v.volume_id));
    assert!(!backing.exists(), "{} left behind", backing.display());
    assert_eq!(env.cleanup_run().await.unwrap(), (0, 0));
}

async fn filesystem_lifecycle(test: &str, fs: &str, bytes: i64, profile: &str) {
    if skip_unless_root(test) {
        return;
    }
    let env = Env::start_profile(test, profile).await.unwrap();
    let v = provision(&env, fs, bytes, mount_cap(fs)).await;
    v.stage_and_publish(&env).await;

    let stats = env
        .node()
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: v.target.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.usage[0].total > 0 && stats.usage[0].total <= bytes);
    assert_eq!(stats.volume_condition.map(|c| c.abnormal), Some(false));
    let fs_seen = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(v.target.as_str()))
        .map(|l| l.split(" - ").nth(1).unwrap_or("").to_string())
        .expect("target is a mount point");
    assert!(fs_seen.starts_with(&format!("{fs} /dev/loop")), "{fs_seen}");

    let payload = format!("written through {} by {test}\n", v.volume_id);
    std::fs::write(Path::new(&v.target).join("data.txt"), &payload).unwrap();
    v.unpublish_and_unstage(&env).await;

    // Restage: the same filesystem comes back (not reformatted) with the data.
    v.stage_and_publish(&env).await;
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("data.txt")).unwrap(),
        payload
    );
    v.unpublish_and_unstage(&env).await;
    retire(&env, &v).await;
}

async fn ext4_volume_lifecycle(profile: &str) {
    filesystem_lifecycle("ext4", "ext4", 64 * MIB, profile).await;
}

async fn xfs_volume_lifecycle(profile: &str) {
    // mkfs.xfs refuses filesystems under 300 MiB; the file is sparse, so this costs nothing.
    filesystem_lifecycle("xfs", "xfs", 512 * MIB, profile).await;
}

e2e::profile_matrix!(
    ext4_volume_lifecycle,
    xfs_volume_lifecycle,
    block_volume_lifecycle
);

async fn block_volume_lifecycle(profile: &str) {
    if skip_unless_root("block") {
        return;
    }
    let env = Env::start_profile("block", profile).await.unwrap();
    let size = 16 * MIB;
    let v = provision(&env, "blk", size, block_cap()).await;
    v.stage_and_publish(&env).await;

    let meta = std::fs::metadata(&v.target).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_block_device(), "{meta:?}");
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let tail_at = (size as u64) - 4096;
    {
        let mut dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&v.target)
            .unwrap();
        assert_eq!(dev.seek(SeekFrom::End(0)).unwrap(), size as u64);
        dev.seek(SeekFrom::Start(0)).unwrap();
        dev.write_all(&pattern).unwrap();
        dev.seek(SeekFrom::Start(tail_at)).unwrap();
        dev.write_all(&pattern).unwrap();
        dev.sync_all().unwrap();
    }
    v.unpublish_and_unstage(&env).await;

    // The bytes reached the mock's backing file, not some other device.
    let backing = env
        .mock
        .data_dir
        .join(format!("{}/{}.img", &BASE_PATH[1..], v.volume_id));
    let on_rds = std::fs::read(&backing).unwrap();
    assert_eq!(on_rds.len() as i64, size);
    assert_eq!(&on_rds[..4096], &pattern[..]);
    assert_eq!(&on_rds[tail_at as usize..], &pattern[..]);

    v.stage_and_publish(&env).await;
    let mut back = vec![0u8; 4096];
    {
        let mut dev = std::fs::File::open(&v.target).unwrap();
        dev.read_exact(&mut back).unwrap();
        assert_eq!(back, pattern);
        dev.seek(SeekFrom::Start(tail_at)).unwrap();
        dev.read_exact(&mut back).unwrap();
        assert_eq!(back, pattern);
    }
    v.unpublish_and_unstage(&env).await;
    retire(&env, &v).await;
}
