//! The VM tier: the node's NVMe/TCP connector against the real kernel. On the host this test
//! boots a VM (see `e2e::vm`) and runs itself inside it; inside, it runs each scenario through
//! CSI on the real `rds-csi --connector nvme-tcp` against `mock-rds --nvmet`, one at a time, and
//! after each one checks that nothing is left: no NVMe connection, kernel target entry or mount.
//!
//! `cargo test -p e2e --test vm [-- NAME...]` runs the scenarios whose names contain a NAME.
//! Under `CI=true` a missing tool fails the tier; elsewhere it is skipped, naming what is missing.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use e2e::vm;

mod bench;
mod encryption;
mod fencing;
mod scenarios;

type Run = fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

macro_rules! scenarios {
    ($($name:ident),+ $(,)?) => {
        &[$((stringify!($name), || Box::pin(scenarios::$name()) as Pin<Box<dyn Future<Output = anyhow::Result<()>>>>)),+]
    };
}

const SCENARIOS: &[(&str, Run)] = scenarios![
    target_follows_the_disks,
    lifecycle_ext4,
    lifecycle_xfs,
    lifecycle_block,
    expansion_ext4,
    expansion_xfs,
    renumbered_devices,
    foreign_connection_untouched,
    block_consumer_survives_restage,
    target_outage_while_mounted,
    host_identity_files,
    fenced_volume_admits_only_its_nodes,
    encrypted_filesystem,
    encrypted_snapshot_restore,
    encrypted_block,
    nodestage_bench,
    nodestage_bench_encrypted,
];

/// One scenario's limit inside the VM (software emulation varies: an encrypted scenario of 2
/// minutes once took 3.5).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(360);
/// The whole VM's limit, boot included; `RDS_CSI_VM_TIMEOUT` (seconds) overrides it.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const SUMMARY: &str = "vm tier:";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in SCENARIOS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    // Test-harness flags cargo or a user may pass; the rest are name filters.
    let filters: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    if vm::in_vm() {
        guest(&filters)
    } else {
        host(&filters)
    }
}

fn host(filters: &[String]) -> ExitCode {
    let missing = vm::requirements();
    if !missing.is_empty() {
        let list = missing.join("; ");
        if vm::in_ci() {
            eprintln!("vm tier FAILED: missing {list} (make test installs them)");
            return ExitCode::FAILURE;
        }
        eprintln!(
            "vm tier SKIPPED: missing {list} (make test installs them; CI=true fails instead)"
        );
        return ExitCode::SUCCESS;
    }
    // Built here, on the host: the VM only runs them.
    e2e::binary("rds-csi");
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("vm tier FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = std::env::var("RDS_CSI_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(VM_TIMEOUT, Duration::from_secs);
    match vm::boot(&exe, filters, timeout) {
        // The guest's own summary must be there: a VM that died early proves nothing.
        Ok((ok, lines))
            if ok
                && lines
                    .iter()
                    .any(|l| l.starts_with(SUMMARY) && l.ends_with(" 0 failed")) =>
        {
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("vm tier FAILED (see the vm| lines above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vm tier FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn guest(filters: &[String]) -> ExitCode {
    if let Err(e) = vm::guest_setup() {
        println!("{SUMMARY} set-up failed: {e:#}");
        return ExitCode::FAILURE;
    }
    let chosen: Vec<&(&str, Run)> = SCENARIOS
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, run) in chosen {
        let started = Instant::now();
        println!("test {name} ...");
        let outcome = run_one(*run);
        // Whatever it left is a failure, and is removed before the next scenario.
        let left = vm::sweep();
        let outcome = match outcome {
            Ok(()) if !left.is_empty() => Err(format!("left behind: {}", left.join(", "))),
            other => other,
        };
        let secs = started.elapsed().as_secs_f32();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({secs:.1}s)");
            }
            Err(e) => {
                println!("test {name} ... FAILED ({secs:.1}s): {e}");
                failed.push(*name);
            }
        }
    }
    println!(
        "{SUMMARY} {passed} passed, {} failed{}",
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_one(run: Run) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async { tokio::time::timeout(SCENARIO_TIMEOUT, run()).await })
    }));
    rt.shutdown_timeout(Duration::from_secs(10));
    match result {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("{e:#}")),
        Ok(Err(_)) => Err(format!("did not finish within {SCENARIO_TIMEOUT:?}")),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
    }
}
