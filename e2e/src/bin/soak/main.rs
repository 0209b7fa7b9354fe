//! A seeded soak over the real binaries: workers issue random CSI calls on a small pool of names
//! (so calls collide on the same volume), each with a fault drawn from the seed injected just
//! before it: mock-rds faults aimed at the call's RouterOS commands, restarts of mock-rds and the
//! driver, RouterOS behaviour profile switches. A model says what must hold after each reply; at
//! the end everything is cleaned up through CSI and the mock's state, the host and the logs are
//! checked.
//!
//! `cargo run --release -p e2e --bin soak -- --ops N --seed S [--workers K] [--profile P]
//! [--no-faults] [--shrink-secs T]`. Prints a line per 1,000 operations, then
//! `N operations, F faults, V violations`. On a violation it exits 1, after replaying ever shorter
//! prefixes of the run (for up to T seconds, default 300) to print the shortest that still fails.
//! `SOAK_VERBOSE=1` prints every fault injected; `SOAK_LOGS=DIR` keeps the logs of a failing
//! run. RELIABILITY.md says what is checked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::{is_root, Env, EnvOptions};
use tokio::sync::{Mutex, RwLock};

mod faults;
mod fence;
mod finish;
mod model;
mod ops;

use faults::{Adds, Counts};
use model::Model;
use ops::Soak;

#[derive(Clone)]
struct Options {
    ops: usize,
    seed: u64,
    workers: usize,
    profile: String,
    faults: bool,
    shrink: Duration,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        ops: 1000,
        seed: 1,
        workers: 4,
        profile: "default".into(),
        faults: true,
        shrink: Duration::from_secs(300),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ops" => o.ops = value()?.parse().context("--ops")?,
            "--seed" => o.seed = value()?.parse().context("--seed")?,
            "--workers" => o.workers = value()?.parse().context("--workers")?,
            "--profile" => o.profile = value()?,
            "--no-faults" => o.faults = false,
            "--shrink-secs" => {
                o.shrink = Duration::from_secs(value()?.parse().context("--shrink-secs")?)
            }
            other => anyhow::bail!(
                "unknown flag {other}: use --ops N --seed S [--workers K] [--profile P] \
                 [--no-faults] [--shrink-secs T]"
            ),
        }
    }
    anyhow::ensure!(o.workers > 0, "--workers must be at least 1");
    Ok(o)
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // A run's processes, mounts and loop devices are cleaned up when it returns, before the
    // next run or the exit status.
    match runtime.block_on(soak()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// What one run found.
struct Outcome {
    violations: Vec<(usize, String)>,
    faults: Counts,
    data_checks: u64,
    fence_checks: u64,
    adds: Adds,
}

/// The soak and, on a violation, the search for the shortest failing prefix; false when it
/// found violations.
async fn soak() -> anyhow::Result<bool> {
    let o = options()?;
    if !is_root() {
        eprintln!("soak: not root, so no stage/unstage (they need loop devices and mount)");
    }
    let started = Instant::now();
    let outcome = run(&o, true).await?;
    println!(
        "{} operations, {} faults, {} violations, fence checks: {} ({:.0} s, seed {}, {} workers, \
         profile {})",
        o.ops,
        outcome.faults.total(),
        outcome.violations.len(),
        outcome.fence_checks,
        started.elapsed().as_secs_f64(),
        o.seed,
        o.workers,
        o.profile
    );
    println!("faults by kind: {}", outcome.faults.describe());
    println!("data read back and compared: {} times", outcome.data_checks);
    println!(
        "disk adds that took effect: {} in scripts, {} alone",
        outcome.adds.scripted.load(Ordering::Relaxed),
        outcome.adds.alone.load(Ordering::Relaxed)
    );
    let Some(first) = outcome.violations.iter().map(|(op, _)| *op).min() else {
        return Ok(true);
    };
    let mut violations = outcome.violations;
    violations.sort_by_key(|(op, _)| *op);
    for (op, what) in &violations {
        println!("  operation {op}: {what}");
    }
    let shortest = shrink(&o, first).await;
    println!(
        "shortest failing prefix: {shortest} operations; replay: cargo run --release -p e2e \
         --bin soak -- --ops {shortest} --seed {} --workers {} --profile {}{}",
        o.seed,
        o.workers,
        o.profile,
        if o.faults { "" } else { " --no-faults" }
    );
    Ok(false)
}

/// Bisects the prefix length between 1 and the whole run (which failed), trying first the
/// prefix that ends at the first violation. A prefix counts as failing only if a replay of it
/// found a violation; replays stop when the time budget is spent.
async fn shrink(o: &Options, first: usize) -> usize {
    let deadline = Instant::now() + o.shrink;
    let mut failing = o.ops;
    let mut passing = 0;
    let mut next = (first + 1).min(o.ops);
    while passing + 1 < failing && Instant::now() < deadline {
        let mut replay = o.clone();
        replay.ops = next;
        let failed = match run(&replay, false).await {
            Ok(outcome) => !outcome.violations.is_empty(),
            Err(e) => {
                eprintln!("soak: replay of {next} operations: {e:#}");
                false
            }
        };
        println!(
            "replay of the first {next} operations: {}",
            if failed { "fails" } else { "passes" }
        );
        if failed {
            failing = next;
        } else {
            passing = next;
        }
        next = passing + (failing - passing) / 2;
        if next == passing {
            next = passing + 1;
        }
    }
    failing
}

/// One run of `o.ops` operations in a fresh mock and a driver with fencing on.
async fn run(o: &Options, progress: bool) -> anyhow::Result<Outcome> {
    // The fence key, as the Secret would hold it (ASCII, a trailing newline). The node reads it
    // too, though the loop connector does not use the identity.
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("fence.key");
    let key: String = (0..48)
        .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
        .collect();
    std::fs::write(&key_file, format!("{key}\n"))?;
    let key_path = key_file.display().to_string();
    let env = Env::start_with(
        "soak",
        EnvOptions {
            profile: &o.profile,
            driver_args: &[
                "--connector",
                "loop",
                "--nvme-fencing",
                "--fence-key-file",
                &key_path,
            ],
            ..EnvOptions::default()
        },
    )
    .await?;
    let soak = Arc::new(Soak {
        env: RwLock::new(env),
        model: Model::default(),
        seed: o.seed,
        next_op: Mutex::new(0),
        running: RwLock::new(()),
        oracle: fence::Oracle::from_file(&key_file)?,
        fence_checks: Default::default(),
        ops: o.ops,
        faults: Counts::default(),
        root: is_root(),
        progress,
        verbose: std::env::var_os("SOAK_VERBOSE").is_some(),
        inject: o.faults,
        data_checks: Default::default(),
        profile: o.profile.clone(),
        adds: Adds::default(),
    });
    let workers: Vec<_> = (0..o.workers)
        .map(|_| {
            let soak = Arc::clone(&soak);
            tokio::spawn(async move { soak.worker().await })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    finish::finish(&soak).await?;
    let soak = Arc::into_inner(soak).context("a worker still holds the soak")?;
    Ok(Outcome {
        violations: soak.model.violations.into_inner().unwrap(),
        faults: soak.faults,
        data_checks: soak.data_checks.into_inner(),
        fence_checks: soak.fence_checks.into_inner(),
        adds: soak.adds,
    })
}
