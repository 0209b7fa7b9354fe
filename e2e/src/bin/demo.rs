//! `make run`: a narrated tour of rds-csi on this machine. Starts mock-rds and the real driver,
//! provisions a volume through CSI, (as root) stages, publishes, writes and reads a file through
//! a loop device, shows the RDS state, and tears everything down.

use std::collections::HashMap;
use std::time::Duration;

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;
use e2e::{is_root, Driver, Keys, Mock};
use nix::sys::signal::Signal;

fn step(text: &str) {
    println!("\n==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    step("generating an SSH client key and the mock RDS's host key");
    let keys = Keys::generate()?;

    step("starting mock-rds (a RouterOS 7 simulator) on 127.0.0.1, port chosen by the OS");
    let mock = Mock::start(&keys).await?;
    println!(
        "    mock-rds at {} with host key {}",
        mock.addr, mock.fingerprint
    );
    println!(
        "    talk to it yourself: ssh -p {} -i {} admin@127.0.0.1 '/disk print detail'",
        mock.addr.port(),
        keys.client_key.display()
    );
    println!(
        "    or check it as the driver sees it: {} doctor --rds-address 127.0.0.1 --rds-port {} \
         --rds-key-file {} --rds-host-key {}",
        e2e::binary("rds-csi").display(),
        mock.addr.port(),
        keys.client_key.display(),
        mock.fingerprint
    );

    let root = is_root();
    let work = tempfile::tempdir()?;
    let state_dir = work.path().join("node-state");
    let mut args: Vec<String> = vec![
        "--controller".into(),
        "--driver-name".into(),
        "rds.csi.srvlab.io".into(),
    ];
    args.extend(mock.driver_args(&keys));
    if root {
        step("starting rds-csi as controller and node (loop connector: volumes attach as loop devices)");
        args.extend(
            [
                "--node",
                "--node-id",
                "demo-node",
                "--connector",
                "loop",
                "--kubelet-dir",
                "",
            ]
            .map(String::from),
        );
        args.push("--node-state-dir".into());
        args.push(state_dir.display().to_string());
    } else {
        step("starting rds-csi as controller only (not root: no loop devices or mounts)");
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut driver = Driver::start(&arg_refs).await?;
    println!("    CSI socket {}", driver.socket.display());
    let info = IdentityClient::new(driver.channel.clone())
        .get_plugin_info(GetPluginInfoRequest {})
        .await?
        .into_inner();
    println!("    GetPluginInfo: {} {}", info.name, info.vendor_version);

    let mut controller = ControllerClient::new(driver.channel.clone());
    let mut node = NodeClient::new(driver.channel.clone());
    let cap = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
    };

    step("CreateVolume pvc-demo-volume (a provisioner-style name, so also its ID), 64 MiB: the driver runs `/disk add type=file ...` over SSH");
    let volume = controller
        .create_volume(CreateVolumeRequest {
            name: "pvc-demo-volume".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .volume
        .ok_or_else(|| anyhow::anyhow!("no volume in the reply"))?;
    println!(
        "    volume {} of {} bytes",
        volume.volume_id, volume.capacity_bytes
    );
    let mut context: Vec<_> = volume.volume_context.iter().collect();
    context.sort();
    for (k, v) in context {
        println!("    {k} = {v}");
    }

    let staging = work.path().join("staging");
    let target = work.path().join("target");
    if root {
        step("ControllerPublish + NodeStage: attach the backing file, mkfs.ext4, mount at the staging path");
        let publish = controller
            .controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                node_id: "demo-node".into(),
                volume_capability: Some(cap.clone()),
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .publish_context;
        std::fs::create_dir_all(&staging)?;
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            publish_context: publish.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await?;
        step("NodePublish: bind-mount it where a pod would see it");
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            publish_context: publish,
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await?;
        step("writing and reading a file on the volume");
        let file = target.join("hello.txt");
        std::fs::write(&file, "hello from rds-csi\n")?;
        print!(
            "    {}: {}",
            file.display(),
            std::fs::read_to_string(&file)?
        );
        let stats = node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: volume.volume_id.clone(),
                volume_path: target.display().to_string(),
                staging_target_path: String::new(),
            })
            .await?
            .into_inner();
        for usage in stats.usage {
            println!(
                "    usage: {} of {} ({:?})",
                usage.used,
                usage.total,
                usage.unit()
            );
        }
    }

    step("the RDS's view: /disk print detail and /file print detail (as RouterOS prints them)");
    print!(
        "{}",
        mock.exec(
            &keys,
            &format!("/disk print detail where slot={}", volume.volume_id)
        )
        .await?
    );
    print!(
        "{}",
        mock.exec(
            &keys,
            "/file print detail where name~\"storage-pool/metal-csi\""
        )
        .await?
    );

    if root {
        step("NodeUnpublish + NodeUnstage: unmount and detach the loop device");
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await?;
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await?;
        controller
            .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                node_id: "demo-node".into(),
                secrets: HashMap::new(),
            })
            .await?;
    }

    step("DeleteVolume: `/disk remove` and `/file remove` on the RDS");
    controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: volume.volume_id.clone(),
            ..Default::default()
        })
        .await?;
    let left = mock
        .exec(
            &keys,
            &format!("/disk print detail where slot={}", volume.volume_id),
        )
        .await?;
    anyhow::ensure!(
        !left.contains(&volume.volume_id),
        "the disk is still there:\n{left}"
    );
    println!(
        "    volume {} deleted; nothing left on the RDS",
        volume.volume_id
    );

    step("stopping the driver (SIGTERM) and mock-rds");
    driver.process.signal(Signal::SIGTERM)?;
    let status = driver.process.wait_exit(Duration::from_secs(20)).await?;
    anyhow::ensure!(status.success(), "driver exited with {status}");
    drop(mock);
    println!("\ndone.");
    Ok(())
}
