//! The whole life of a volume through the real binaries, with the loop connector over the
//! mock's data dir: create, publish, stage, publish on the node, write, unpublish, unstage,
//! stage and publish again, read back, tear down, delete. Needs root (loop devices, mkfs, mount).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use csi_proto::v1::NodeGetVolumeStatsRequest;
use e2e::staged::{provision, retire};
use e2e::{block_cap, is_root, mount_cap, Env, BASE_PATH, MIB};
use rstest::rstest;

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    assert!(
        !e2e::vm::in_ci(),
        "{test} needs root for loop devices, mkfs and mount, and CI=true does not skip"
    );
    eprintln!("SKIPPED {test}: needs root for loop devices, mkfs and mount");
    true
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

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext4_volume_lifecycle(#[values("default", "hardware-a", "hardware-b")] profile: &str) {
    filesystem_lifecycle("ext4", "ext4", 64 * MIB, profile).await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xfs_volume_lifecycle(#[values("default", "hardware-a", "hardware-b")] profile: &str) {
    // mkfs.xfs refuses filesystems under 300 MiB; the file is sparse, so this costs nothing.
    filesystem_lifecycle("xfs", "xfs", 512 * MIB, profile).await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_volume_lifecycle(#[values("default", "hardware-a", "hardware-b")] profile: &str) {
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
