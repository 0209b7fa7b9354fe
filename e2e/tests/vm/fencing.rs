//! Storage-side fencing on the kernel target: only the nodes a volume is published to may
//! connect. The node is the Env's driver (`e2e-node`); a second, controller-only driver on the
//! same RDS publishes to it and to a second node (a controller that is not also a node takes
//! any node ID), and is restarted to show that the fence lives on the RDS.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context};
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::volume_capability::{self, access_mode, AccessMode};
use csi_proto::v1::{
    ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest, DeleteVolumeRequest,
    NodeUnstageVolumeRequest, VolumeCapability,
};
use e2e::staged::Staged;
use e2e::{create_request, poll_until, vm, Driver, Env, MIB, NODE_ID};
use tonic::transport::Channel;

use super::scenarios::{nqn, nvme_env_with, stage};

/// What the fence allowed before the key-derived identities: anyone could compute it.
const PUBLIC_CLOSED: &str = "nqn.2014-08.io.srvlab.rds-csi:fenced-no-host";
/// Hosts that are not the node: what a node that lost its attachment would be.
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e01";
const SECOND: &str = "nqn.2014-08.org.nvmexpress:uuid:5e1f0c7a-3d2b-4a6e-8f90-1a2b3c4d5e02";

fn rwx_block() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
    }
}

/// The cluster's fence key, shared by the node and both controllers.
fn fence_key_file() -> anyhow::Result<String> {
    let path = std::path::Path::new(vm::GUEST_TMP).join("fence-key");
    std::fs::write(&path, "vm-tier fence key: 32 bytes or more of secret\n")?;
    Ok(path.display().to_string())
}

async fn controller_only(env: &Env) -> anyhow::Result<Driver> {
    let mut args = vec![
        "--controller".to_string(),
        "--nvme-fencing".to_string(),
        "--fence-key-file".to_string(),
        fence_key_file()?,
    ];
    args.extend(env.mock.driver_args(&env.keys));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Driver::start(&args).await
}

fn allowed(env: &Env, volume_id: &str) -> anyhow::Result<String> {
    Ok(env
        .mock
        .disks()?
        .into_iter()
        .find(|d| d.slot == volume_id)
        .context("no disk")?
        .allowed_host)
}

async fn publish(
    ctl: &mut ControllerClient<Channel>,
    v: &Staged,
    node: &str,
) -> anyhow::Result<HashMap<String, String>> {
    Ok(ctl
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: node.into(),
            volume_capability: Some(v.cap.clone()),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .publish_context)
}

async fn unpublish(
    ctl: &mut ControllerClient<Channel>,
    id: &str,
    node: &str,
) -> anyhow::Result<()> {
    ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// The kernel target refuses `host` (connecting from a loopback address of its own); nothing of
/// it is left connected.
fn refused(volume_id: &str, host: &str, what: &str) -> anyhow::Result<()> {
    let addr = if host == STRANGER {
        "127.0.0.2"
    } else {
        "127.0.0.4"
    };
    let before = vm::connection(&nqn(volume_id)).map_or(0, |c| c.controllers.len());
    let err = match vm::nvme_connect(&nqn(volume_id), addr, 4420, host) {
        Ok(()) => anyhow::bail!("{what}: {host} could connect"),
        Err(e) => format!("{e:#}"),
    };
    // Refused by the target, not by nvme-cli on this side.
    ensure!(!err.contains("already connected"), "{what}: {err}");
    let after = vm::connection(&nqn(volume_id)).map_or(0, |c| c.controllers.len());
    ensure!(after == before, "{what}: a controller appeared for {host}");
    Ok(())
}

/// The controller `host` connected with to this volume's subsystem.
fn controller_of(volume_id: &str, host: &str) -> Option<String> {
    vm::connection(&nqn(volume_id))?
        .controllers
        .into_iter()
        .find(|c| vm::controller_hostnqn(c).as_deref() == Some(host))
}

pub async fn fenced_volume_admits_only_its_nodes() -> anyhow::Result<()> {
    // The node has a host NQN of its own, as nodes with /etc/nvme/hostnqn do: a fenced volume
    // must still be connected with the identity derived from the node ID.
    let own = std::path::Path::new(vm::GUEST_TMP).join("fence-hostnqn");
    std::fs::write(
        &own,
        "nqn.2014-08.org.nvmexpress:uuid:0c0c0c0c-1111-4222-8333-444444444444\n",
    )?;
    let own = own.display().to_string();
    // The target listens on every loopback address: each identity connects from its own.
    let env = nvme_env_with(
        "vmfence",
        &["--nvmet", "--nvme-listen", "0.0.0.0"],
        &[
            "--nvme-fencing",
            "--nvme-hostnqn-file",
            &own,
            "--fence-key-file",
            &fence_key_file()?,
        ],
    )
    .await?;
    let mut ctl2 = controller_only(&env).await?;
    let mut ctl = ControllerClient::new(ctl2.channel.clone());
    let name = env.name("blk");
    let mut req = create_request(&name, 32 * MIB, rwx_block());
    req.parameters.insert("nvmeFencing".into(), "true".into());
    let vol = ctl
        .create_volume(req)
        .await?
        .into_inner()
        .volume
        .context("no volume")?;
    ensure!(vol.volume_context.get("nvmeFencing").map(String::as_str) == Some("true"));
    let v = Staged {
        volume_id: name.clone(),
        cap: rwx_block(),
        volume_context: vol.volume_context,
        publish_context: HashMap::new(),
        secrets: HashMap::new(),
        staging: env.path("staging-blk").display().to_string(),
        target: env.path("pods/blk/target").display().to_string(),
    };
    // Nobody holds it: closed, to an NQN derived from the cluster's key.
    let closed = allowed(&env, &name)?;
    ensure!(
        closed.starts_with("nqn.") && closed != PUBLIC_CLOSED,
        "a new fenced volume allows {closed:?}"
    );
    refused(&name, STRANGER, "before any publish")?;
    refused(
        &name,
        PUBLIC_CLOSED,
        "before any publish, the old public closed NQN",
    )?;

    // Published to the node: the node stages it; a stranger still cannot connect.
    let mut v = v;
    v.publish_context = publish(&mut ctl, &v, NODE_ID).await?;
    let node_host = allowed(&env, &name)?;
    ensure!(
        node_host.starts_with("nqn.2014-08.org.nvmexpress:uuid:"),
        "published, the fence is {node_host:?}"
    );
    stage(&env, &v, &v.staging, &v.cap).await?;
    let ctrl = controller_of(&name, &node_host)
        .context("the published node did not connect with the fenced identity")?;
    refused(&name, STRANGER, "published to the node")?;

    // A live migration: a second node is published, and both may connect.
    publish(&mut ctl, &v, "node-b").await?;
    ensure!(
        allowed(&env, &name)?.is_empty(),
        "during the migration the fence is {:?}",
        allowed(&env, &name)?
    );
    vm::nvme_connect(&nqn(&name), "127.0.0.3", 4420, SECOND)
        .context("the migration target could not connect")?;
    let second = poll_until(
        "the second node's controller",
        Duration::from_secs(30),
        || async { controller_of(&name, SECOND) },
    )
    .await?;
    std::process::Command::new("nvme")
        .args(["disconnect", "-d", &second])
        .status()?;
    unpublish(&mut ctl, &name, "node-b").await?;
    ensure!(
        allowed(&env, &name)? == node_host,
        "after the migration the fence is {:?}",
        allowed(&env, &name)?
    );
    refused(&name, SECOND, "after the migration")?;
    ensure!(
        controller_of(&name, &node_host) == Some(ctrl.clone()),
        "the node's connection was lost"
    );

    // The controller restarts (its table is in memory here): the fence holds on the RDS, and
    // publish and unpublish still work.
    ctl2.process.signal(nix::sys::signal::Signal::SIGTERM)?;
    ctl2.process.wait_exit(Duration::from_secs(30)).await?;
    ctl2 = controller_only(&env).await?;
    let mut ctl = ControllerClient::new(ctl2.channel.clone());
    ensure!(
        allowed(&env, &name)? == node_host,
        "after a controller restart the fence is {:?}",
        allowed(&env, &name)?
    );
    refused(&name, STRANGER, "after a controller restart")?;
    publish(&mut ctl, &v, NODE_ID).await?;
    ensure!(allowed(&env, &name)? == node_host);

    // Unstaged and unpublished: the node's own identity cannot reconnect.
    env.node()
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: name.clone(),
            staging_target_path: v.staging.clone(),
        })
        .await?;
    ensure!(
        vm::connection(&nqn(&name)).is_none(),
        "still connected after unstage"
    );
    unpublish(&mut ctl, &name, NODE_ID).await?;
    ensure!(
        allowed(&env, &name)? == closed,
        "unpublished, the fence is {:?}",
        allowed(&env, &name)?
    );
    refused(&name, &node_host, "after unpublish, the old node")?;

    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: name,
        ..Default::default()
    })
    .await?;
    Ok(())
}
