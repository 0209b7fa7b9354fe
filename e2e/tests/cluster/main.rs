//! The cluster tier: the driver's Kubernetes half under a real control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler), with the stock CSI sidecars run
//! from the rendered deploy manifests under the manifests' own ServiceAccount and RBAC, against
//! mock-rds. All on 127.0.0.1 as host processes; Node objects stand for most nodes, and two run a
//! real kubelet on containerd with the node plugin (the `kubelet_*` scenarios).
//! One cluster for every scenario, in order; everything it started is stopped and its
//! directory removed, pass or fail, and a hard deadline ends a hung run.

mod control_plane;
mod failover;
mod kubelet;
mod migrate;
mod pods;
mod scenarios;
mod tier;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tier::{Manifests, Tier};

type Scenario = for<'a> fn(&'a mut Tier) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("provision_attach_detach", |t| {
        Box::pin(scenarios::provision_attach_detach(t))
    }),
    ("expand", |t| Box::pin(scenarios::expand(t))),
    ("snapshot_restore_clone", |t| {
        Box::pin(scenarios::snapshot_restore_clone(t))
    }),
    ("rwx_block_on_two_nodes", |t| {
        Box::pin(scenarios::rwx_block_on_two_nodes(t))
    }),
    ("controller_crash_keeps_attachments", |t| {
        Box::pin(scenarios::controller_crash_keeps_attachments(t))
    }),
    ("deleted_node_attachment_cleared", |t| {
        Box::pin(scenarios::deleted_node_attachment_cleared(t))
    }),
    ("orphans_against_real_objects", |t| {
        Box::pin(scenarios::orphans_against_real_objects(t))
    }),
    ("encrypted_class_needs_its_node_stage_secret", |t| {
        Box::pin(scenarios::encrypted_class_needs_its_node_stage_secret(t))
    }),
    ("delete_removes_everything", |t| {
        Box::pin(scenarios::delete_removes_everything(t))
    }),
    ("no_forbidden_in_logs", |t| {
        Box::pin(scenarios::no_forbidden_in_logs(t))
    }),
    ("api_server_restart", |t| {
        Box::pin(scenarios::api_server_restart(t))
    }),
    ("kubelet_registers_the_driver", |t| {
        Box::pin(kubelet::kubelet_registers_the_driver(t))
    }),
    ("kubelet_data_follows_the_claim", |t| {
        Box::pin(kubelet::kubelet_data_follows_the_claim(t))
    }),
    ("kubelet_read_only_and_fs_group", |t| {
        Box::pin(kubelet::kubelet_read_only_and_fs_group(t))
    }),
    ("kubelet_online_expansion", |t| {
        Box::pin(kubelet::kubelet_online_expansion(t))
    }),
    ("kubelet_and_node_plugin_restarts", |t| {
        Box::pin(kubelet::kubelet_and_node_plugin_restarts(t))
    }),
    ("kubelet_leaves_nothing_behind", |t| {
        Box::pin(kubelet::kubelet_leaves_nothing_behind(t))
    }),
    // Kills one replica for good: the scenario after it needs no controller.
    ("failover", |t| Box::pin(failover::failover(t))),
    // Last: it leaves the Go driver's objects and the snapshot controllers frozen.
    ("migrate_check_against_go_driver_objects", |t| {
        Box::pin(migrate::migrate_check_against_go_driver_objects(t))
    }),
];

/// The whole tier, set-up and clean-up included; past it the run is killed.
const DEADLINE: Duration = Duration::from_secs(40 * 60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Every scenario under each way the project deploys the driver.
    let all: Vec<(Manifests, String, Scenario)> = [Manifests::Kustomize, Manifests::Helm]
        .into_iter()
        .flat_map(|m| {
            SCENARIOS
                .iter()
                .map(move |(name, s)| (m, format!("{}/{name}", m.name()), *s))
        })
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (_, name, _) in &all {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|(_, name, _)| {
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .collect();
    if chosen.is_empty() {
        return ExitCode::SUCCESS;
    }
    let bin = match e2e::k8s::bin_dir() {
        Ok(bin) => bin,
        Err(e) if e2e::vm::in_ci() => {
            eprintln!("cluster tier FAILED: the Kubernetes components: {e:#}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "cluster tier SKIPPED: the Kubernetes components: {e:#} (CI=true fails instead)"
            );
            return ExitCode::SUCCESS;
        }
    };
    let dir = match tempfile::Builder::new()
        .prefix("rds-csi-cluster.")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cluster tier FAILED: a temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A hung run is ended here; the processes it started die with it (parent-death signal).
    let watched = dir.path().to_path_buf();
    std::thread::spawn(move || {
        std::thread::sleep(DEADLINE);
        eprintln!("cluster tier FAILED: not done within {DEADLINE:?}");
        e2e::k8s::kubelet::clean_all();
        let _ = std::fs::remove_dir_all(&watched);
        std::process::exit(1);
    });
    // One thread spawns every process: the parent-death signal follows the spawning thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cluster tier FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = runtime.block_on(async {
        let mut failed = 0;
        for manifests in [Manifests::Kustomize, Manifests::Helm] {
            let scenarios: Vec<_> = chosen
                .iter()
                .filter(|(m, ..)| m.name() == manifests.name())
                .collect();
            if scenarios.is_empty() {
                continue;
            }
            let dir = dir.path().join(manifests.name());
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("cluster tier FAILED: {e}");
                return 1;
            }
            let started = Instant::now();
            let mut tier = match Tier::start(&bin, &dir, manifests).await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("cluster tier ({}) FAILED to start: {e:#}", manifests.name());
                    print_logs(&dir);
                    failed += scenarios.len();
                    continue;
                }
            };
            eprintln!(
                "cluster: up in {:.0?} ({})",
                started.elapsed(),
                manifests.name()
            );
            for (container, image) in &tier.skipped {
                eprintln!("cluster: not run here: container {container} ({image})");
            }
            for (_, name, scenario) in scenarios {
                let t0 = Instant::now();
                let result = match scenario(&mut tier).await {
                    Ok(()) => tier.check_alive(),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => eprintln!("test {name} ... ok ({:.1?})", t0.elapsed()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("test {name} ... FAILED ({:.1?}): {e:#}", t0.elapsed());
                        eprintln!("{}", tier.log_tails(25));
                        eprintln!("{}", tier.diagnostics().await);
                    }
                }
            }
        }
        failed
    });
    drop(runtime);
    // For a post-mortem: the processes are stopped, their logs stay.
    if std::env::var_os("RDS_CSI_CLUSTER_KEEP").is_some() {
        eprintln!("cluster: logs kept in {}", dir.keep().display());
    }
    if failed > 0 {
        eprintln!("cluster tier: {failed} scenario(s) FAILED");
        return ExitCode::FAILURE;
    }
    eprintln!("cluster tier: ok");
    ExitCode::SUCCESS
}

/// Every log under the tier's directory, for a set-up failure.
fn print_logs(dir: &std::path::Path) {
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&entry).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {}", entry.display());
            for l in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("{l}");
            }
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
