//! The NodeStage bench of the VM tier: what the driver's NodeStage (connect, find the device in
//! sysfs, mkfs, mount) costs against the same steps as a bare command sequence, in the same VM
//! and run, as a ratio. It checks only that both work; the figures go to BENCHMARKS.md. Run it
//! with `--release` for them: the tier's own runs use the debug build of the driver.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use csi_proto::v1::NodeUnstageVolumeRequest;
use e2e::staged::{provision, Staged};
use e2e::{mount_cap, poll_until, vm, MIB};

use super::scenarios::{nqn, nvme_env, stage};

// Even, so that each side goes first equally often.
const ROUNDS: usize = 6;

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    ensure!(out.status.success(), "{program} {args:?}: {out:?}");
    Ok(())
}

/// The bare sequence for `b`: connect, wait for the namespace, mkfs, mount.
async fn bare_stage(b: &Staged) -> anyhow::Result<()> {
    let host = "nqn.2014-08.org.nvmexpress:uuid:7d0c3b59-96f4-4a38-8a51-2f2c64d0b001";
    let n = nqn(&b.volume_id);
    run(
        "nvme",
        &[
            "connect",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            "4420",
            "-n",
            &n,
            "--hostnqn",
            host,
        ],
    )?;
    let dev = poll_until("the namespace", Duration::from_secs(30), || async {
        vm::connection(&n)
            .and_then(|c| c.namespaces.first().cloned())
            .map(|ns| format!("/dev/{ns}"))
            .filter(|p| std::path::Path::new(p).exists())
    })
    .await?;
    run("mkfs.ext4", &["-q", &dev])?;
    std::fs::create_dir_all(&b.staging)?;
    run("mount", &["-t", "ext4", &dev, &b.staging])
}

pub async fn nodestage_bench() -> anyhow::Result<()> {
    let env = nvme_env("vmbench", &[]).await?;
    let mut driver_vols = Vec::new();
    let mut bare_vols = Vec::new();
    // Round 0 warms both up (the first connect loads the initiator's module) and is not counted.
    for i in 0..=ROUNDS {
        driver_vols.push(provision(&env, &format!("d{i}"), 64 * MIB, mount_cap("ext4")).await);
        bare_vols.push(provision(&env, &format!("b{i}"), 64 * MIB, mount_cap("ext4")).await);
    }
    let (mut driver, mut bare) = (Duration::ZERO, Duration::ZERO);
    for (round, (d, b)) in driver_vols.iter().zip(&bare_vols).enumerate() {
        // Each goes first in every other round, so neither always finds the warmer caches.
        let (mut took_driver, mut took_bare) = (Duration::ZERO, Duration::ZERO);
        for driver_now in [round % 2 == 0, round % 2 == 1] {
            let t = Instant::now();
            if driver_now {
                stage(&env, d, &d.staging, &d.cap).await?;
                took_driver = t.elapsed();
            } else {
                bare_stage(b).await?;
                took_bare = t.elapsed();
            }
        }
        if round > 0 {
            driver += took_driver;
            bare += took_bare;
        }
    }
    let per = |d: Duration| d.as_secs_f64() / ROUNDS as f64;
    println!(
        "bench nodestage (ext4, 64 MiB, {ROUNDS} rounds): driver {:.3} s/op, bare sequence {:.3} s/op, ratio {:.0}%",
        per(driver),
        per(bare),
        100.0 * bare.as_secs_f64() / driver.as_secs_f64()
    );
    for d in &driver_vols {
        env.node()
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: d.volume_id.clone(),
                staging_target_path: d.staging.clone(),
            })
            .await?;
    }
    for b in &bare_vols {
        run("umount", &[&b.staging])?;
        run("nvme", &["disconnect", "-n", &nqn(&b.volume_id)]).context("bare disconnect")?;
    }
    Ok(())
}
