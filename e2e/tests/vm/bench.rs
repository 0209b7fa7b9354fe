//! The NodeStage bench of the VM tier: what the driver's NodeStage (connect, find the device in
//! sysfs, mkfs, mount) costs against the same steps as a bare command sequence, in the same VM
//! and run, as a ratio; and the same for a new encrypted volume (LUKS2 header, open, then the
//! same). It checks only that both work; the figures go to BENCHMARKS.md. Run it with `--release`
//! for them: the tier's own runs use the debug build of the driver.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use csi_proto::v1::NodeUnstageVolumeRequest;
use e2e::staged::{provision, provision_with, Staged};
use e2e::{mount_cap, poll_until, vm, MIB};

use super::scenarios::{nqn, nvme_env, stage};

// Even, so that each side goes first equally often.
const ROUNDS: usize = 6;

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    ensure!(out.status.success(), "{program} {args:?}: {out:?}");
    Ok(())
}

/// Connects `b` bare and waits for its namespace: its device.
async fn bare_connect(b: &Staged) -> anyhow::Result<String> {
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
    poll_until("the namespace", Duration::from_secs(30), || async {
        vm::connection(&n)
            .and_then(|c| c.namespaces.first().cloned())
            .map(|ns| format!("/dev/{ns}"))
            .filter(|p| std::path::Path::new(p).exists())
    })
    .await
}

/// The bare sequence for `b`: connect, wait for the namespace, mkfs, mount.
async fn bare_stage(b: &Staged) -> anyhow::Result<()> {
    let dev = bare_connect(b).await?;
    run("mkfs.ext4", &["-q", &dev])?;
    std::fs::create_dir_all(&b.staging)?;
    run("mount", &["-t", "ext4", &dev, &b.staging])
}

/// The bare sequence of an encrypted volume: connect, wait, write a LUKS2 header with the
/// driver's key derivation, open, mkfs on the mapping, mount.
async fn bare_encrypted_stage(b: &Staged) -> anyhow::Result<()> {
    let dev = bare_connect(b).await?;
    let mapping = format!("bench-{}", b.volume_id);
    let mut format = vec!["luksFormat", "--type", "luks2", "--batch-mode"];
    format.extend_from_slice(DRIVER_PBKDF);
    format.extend(["--key-file", PASSPHRASE_FILE, &dev]);
    run("cryptsetup", &format)?;
    run(
        "cryptsetup",
        &[
            "open",
            "--type",
            "luks2",
            "--disable-keyring",
            "--key-file",
            PASSPHRASE_FILE,
            &dev,
            &mapping,
        ],
    )?;
    let mapped = format!("/dev/mapper/{mapping}");
    run("mkfs.ext4", &["-q", &mapped])?;
    std::fs::create_dir_all(&b.staging)?;
    run("mount", &["-t", "ext4", &mapped, &b.staging])
}

/// The key derivation the driver gives new volumes (`PBKDF_ARGS` in driver/src/node/crypt.rs;
/// this crate sees the driver as a black box), so that both sides pay the same.
const DRIVER_PBKDF: &[&str] = &[
    "--pbkdf",
    "argon2id",
    "--pbkdf-memory",
    "65536",
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-parallel",
    "2",
];

/// The bare sequence's passphrase, in a file: the bench's own sequence, not the driver's.
const PASSPHRASE_FILE: &str = "/run/rds-e2e/bench-passphrase";
const PASSPHRASE: &str = "a passphrase for the NodeStage bench";

/// Stages `rounds + 1` volumes each way, alternating which goes first, and returns the time per
/// stage of the driver and of the bare sequence; round 0 warms both up and is not counted.
async fn alternate<'a, F, Fut>(
    env: &e2e::Env,
    driver_vols: &[Staged],
    bare_vols: &'a [Staged],
    bare: F,
) -> anyhow::Result<(f64, f64)>
where
    F: Fn(&'a Staged) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (mut driver_total, mut bare_total) = (Duration::ZERO, Duration::ZERO);
    for (round, (d, b)) in driver_vols.iter().zip(bare_vols).enumerate() {
        // Each goes first in every other round, so neither always finds the warmer caches.
        let (mut took_driver, mut took_bare) = (Duration::ZERO, Duration::ZERO);
        for driver_now in [round % 2 == 0, round % 2 == 1] {
            let t = Instant::now();
            if driver_now {
                stage(env, d, &d.staging, &d.cap).await?;
                took_driver = t.elapsed();
            } else {
                bare(b).await?;
                took_bare = t.elapsed();
            }
        }
        if round > 0 {
            driver_total += took_driver;
            bare_total += took_bare;
        }
    }
    let rounds = (driver_vols.len() - 1) as f64;
    Ok((
        driver_total.as_secs_f64() / rounds,
        bare_total.as_secs_f64() / rounds,
    ))
}

async fn unstage_all(env: &e2e::Env, driver_vols: &[Staged]) -> anyhow::Result<()> {
    for d in driver_vols {
        env.node()
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: d.volume_id.clone(),
                staging_target_path: d.staging.clone(),
            })
            .await?;
    }
    Ok(())
}

pub async fn nodestage_bench() -> anyhow::Result<()> {
    let env = nvme_env("vmbench", &[]).await?;
    let mut driver_vols = Vec::new();
    let mut bare_vols = Vec::new();
    for i in 0..=ROUNDS {
        driver_vols.push(provision(&env, &format!("d{i}"), 64 * MIB, mount_cap("ext4")).await);
        bare_vols.push(provision(&env, &format!("b{i}"), 64 * MIB, mount_cap("ext4")).await);
    }
    let (driver, bare) = alternate(&env, &driver_vols, &bare_vols, bare_stage).await?;
    println!(
        "bench nodestage (ext4, 64 MiB, {ROUNDS} rounds): driver {driver:.3} s/op, bare sequence \
         {bare:.3} s/op, ratio {:.0}%",
        100.0 * bare / driver
    );
    unstage_all(&env, &driver_vols).await?;
    for b in &bare_vols {
        run("umount", &[&b.staging])?;
        run("nvme", &["disconnect", "-n", &nqn(&b.volume_id)]).context("bare disconnect")?;
    }
    Ok(())
}

/// NodeStage of a new encrypted volume (LUKS2 header, open, mkfs on the mapping, mount) against
/// the same steps bare; two Argon2id derivations each, so fewer rounds than the plain bench.
pub async fn nodestage_bench_encrypted() -> anyhow::Result<()> {
    const ENCRYPTED_ROUNDS: usize = 4;
    let env = nvme_env("vmbenchcrypt", &[]).await?;
    std::fs::write(PASSPHRASE_FILE, PASSPHRASE)?;
    let mut driver_vols = Vec::new();
    let mut bare_vols = Vec::new();
    for i in 0..=ENCRYPTED_ROUNDS {
        let mut d = provision_with(
            &env,
            &format!("d{i}"),
            64 * MIB,
            mount_cap("ext4"),
            &[("encrypted", "true")],
        )
        .await;
        d.secrets = [("encryptionPassphrase".to_string(), PASSPHRASE.to_string())].into();
        driver_vols.push(d);
        bare_vols.push(provision(&env, &format!("b{i}"), 64 * MIB, mount_cap("ext4")).await);
    }
    let (driver, bare) = alternate(&env, &driver_vols, &bare_vols, bare_encrypted_stage).await?;
    println!(
        "bench nodestage encrypted (LUKS2 + ext4, 64 MiB, {ENCRYPTED_ROUNDS} rounds): driver \
         {driver:.3} s/op, bare sequence {bare:.3} s/op, ratio {:.0}%",
        100.0 * bare / driver
    );
    unstage_all(&env, &driver_vols).await?;
    for b in &bare_vols {
        run("umount", &[&b.staging])?;
        run("cryptsetup", &["close", &format!("bench-{}", b.volume_id)])?;
        run("nvme", &["disconnect", "-n", &nqn(&b.volume_id)]).context("bare disconnect")?;
    }
    std::fs::remove_file(PASSPHRASE_FILE)?;
    Ok(())
}
