//! Operator commands: `rds-csi orphans`, `rds-csi doctor`, `rds-csi volumes`, `rds-csi validate`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::{OrphansArgs, OutputFormat, ToolArgs, ValidateArgs};
use crate::ids::{classify_disk, ManagedFile};
use crate::orphans::{self, OrphanKind};
use crate::rds::ssh::{AcceptedHostKey, HostKeyMatch};
use crate::rds::{deadline_in, RdsPath};
use crate::rds::{RdsError, Slot, TransportError};

/// Long enough to list a large pool over a slow link.
const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// The cluster's references, when `--kubeconfig` names one.
async fn cluster_references(
    client: Option<&::kube::Client>,
    driver_name: &str,
) -> anyhow::Result<Option<orphans::References>> {
    match client {
        Some(client) => Ok(Some(
            crate::kube::orphans::cluster_references(client, driver_name)
                .await
                .context(
                    "listing PersistentVolumes, VolumeAttachments and VolumeSnapshotContents",
                )?,
        )),
        None => Ok(None),
    }
}

/// An orphan found but not deleted, and why.
#[derive(Serialize)]
struct Kept<'a> {
    orphan: &'a orphans::Orphan,
    reason: &'static str,
}

pub async fn orphans(args: OrphansArgs) -> anyhow::Result<()> {
    let rds = crate::server::rds_client(args.rds.ssh_config()?);
    let bases = args.rds.volume_base_paths()?;
    let deadline = deadline_in(TOOL_DEADLINE);
    // With a cluster, also disks without PV; files the cluster references are never orphans.
    let client = match &args.kubeconfig {
        Some(path) => Some(
            crate::kube::connect(Some(path))
                .await?
                .context("--kubeconfig gave no client")?,
        ),
        None => None,
    };
    let refs = cluster_references(client.as_ref(), &args.driver_name).await?;
    let found = orphans::scan_at(
        &rds,
        &bases,
        args.grace_period,
        refs.as_ref(),
        std::time::SystemTime::now(),
        deadline,
    )
    .await?;
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    if args.delete && !found.is_empty() {
        // The reconciler's rules: references read again after the scan (a volume created
        // meanwhile has its PV only now), and a second scan, so only what both saw exactly as
        // it was (path, size, time: not a file still being written) is deleted.
        let refs_after = cluster_references(client.as_ref(), &args.driver_name).await?;
        let again = orphans::scan_at(
            &rds,
            &bases,
            args.grace_period,
            refs_after.as_ref(),
            std::time::SystemTime::now(),
            deadline,
        )
        .await?;
        let readings: Vec<&orphans::References> = refs.iter().chain(refs_after.iter()).collect();
        // Drawn only on a terminal: quiet in CI and in pipes.
        let progress = ProgressBar::new(found.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} removing orphans")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        for orphan in &found {
            progress.inc(1);
            let reason = if again.contains(orphan) {
                orphans::keep_reason(&bases, orphan, &readings)
            } else {
                Some("it changed or went away between two scans")
            };
            if let Some(reason) = reason {
                kept.push(Kept { orphan, reason });
                continue;
            }
            orphans::delete(&rds, orphan, deadline)
                .await
                .with_context(|| format!("removing {orphan:?}"))?;
            deleted.push(orphan.clone());
        }
        progress.finish_and_clear();
    }
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => {
            let doc =
                serde_json::json!({ "orphans": found, "deleted": deleted.len(), "kept": kept });
            writeln!(out, "{doc}")?;
        }
        OutputFormat::Text => {
            if found.is_empty() {
                let dirs: Vec<&str> = bases.iter().map(RdsPath::as_str).collect();
                writeln!(out, "no orphans under {}", dirs.join(", "))?;
            }
            for o in &found {
                let what = match o.kind {
                    OrphanKind::FileWithoutDisk => "file without disk",
                    OrphanKind::DiskWithoutFile => "disk without file",
                    OrphanKind::DiskWithoutPv => "disk without PV",
                };
                writeln!(
                    out,
                    "{what:<18} {:<64} {:>16} {}",
                    o.slot.as_deref().or(o.path.as_deref()).unwrap_or("-"),
                    o.size_bytes.map_or("-".into(), |s| s.to_string()),
                    o.last_modified.as_deref().unwrap_or("")
                )?;
            }
            for k in &kept {
                writeln!(
                    out,
                    "kept {}: {}",
                    k.orphan
                        .slot
                        .as_deref()
                        .or(k.orphan.path.as_deref())
                        .unwrap_or("-"),
                    k.reason
                )?;
            }
            if args.delete {
                writeln!(out, "removed {} orphan(s)", deleted.len())?;
            } else if !found.is_empty() {
                writeln!(
                    out,
                    "{} orphan(s) found; run again with --delete to remove them",
                    found.len()
                )?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub result: Verdict,
    pub detail: String,
    /// What to do about a failure.
    pub fix: String,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        result: Verdict::Pass,
        detail: detail.into(),
        fix: String::new(),
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        result: Verdict::Fail,
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn skipped(name: &'static str) -> Check {
    Check {
        name,
        result: Verdict::Skipped,
        detail: "skipped: an earlier check failed".into(),
        fix: String::new(),
    }
}

/// Which pin the RDS's host key matched, or that nothing was checked.
fn host_key_detail(accepted: Option<AcceptedHostKey>) -> String {
    let Some(AcceptedHostKey {
        fingerprint,
        matched,
    }) = accepted
    else {
        return "accepted (no record of which pin matched)".into();
    };
    match matched {
        HostKeyMatch::Key => format!("{fingerprint} matches the pinned key (--rds-host-key)"),
        HostKeyMatch::Fingerprint => {
            format!("{fingerprint} matches the pinned fingerprint (--rds-host-key)")
        }
        HostKeyMatch::KnownHosts(path) => {
            format!("{fingerprint} matches known_hosts {}", path.display())
        }
        HostKeyMatch::NotVerified => format!(
            "NOT verified (--rds-insecure-skip-verify); the RDS presented {fingerprint}: \
             pin it with --rds-host-key {fingerprint}"
        ),
    }
}

const REJECTED_FIX: &str =
    "RouterOS rejected a command the driver needs: the RDS must run RouterOS 7 \
    with ROSE storage, and the SSH user needs the read and write policies";

const FENCING_FIX: &str =
    "this RouterOS does not show the property storage-side fencing sets, so fenced volumes \
    could not be published: leave --nvme-fencing off and `nvmeFencing` out of StorageClasses, \
    or run a RouterOS 7 build whose `/disk print detail` shows nvme-tcp-server-allow-host-name \
    (`rds-csi validate` tells whether it takes a host NQN)";

/// Runs every check in order; a check that cannot run because an earlier one failed is skipped.
pub async fn run_checks(args: &ToolArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let bases = match args.rds.volume_base_paths() {
        Ok(b) => b,
        Err(e) => {
            checks.push(fail(
                "base path",
                format!("{e:#}"),
                "set --rds-volume-base-path to an absolute path such as /storage-pool/metal-csi",
            ));
            return checks;
        }
    };
    let base = bases[0].clone();
    let rds = match args.rds.ssh_config() {
        Ok(config) => {
            checks.push(pass(
                "credentials",
                format!("key {} loaded", args.rds.rds_key_file.display()),
            ));
            crate::server::rds_client(config)
        }
        Err(e) => {
            checks.push(fail(
                "credentials",
                format!("{e:#}"),
                "point --rds-key-file at an unencrypted OpenSSH or PEM private key (ed25519, RSA or ECDSA) \
                 and give --rds-host-key the RDS's host key fingerprint (`SHA256:...`), public key \
                 line (`ssh-ed25519 AAAA...`) or a file holding either",
            ));
            return checks;
        }
    };
    let deadline = deadline_in(Duration::from_secs(30));
    let addr = rds.transport().address();
    match rds.identity(deadline).await {
        Ok(name) => {
            checks.push(pass("connect", format!("reached {addr}")));
            checks.push(pass(
                "host key",
                host_key_detail(rds.transport().accepted_host_key()),
            ));
            checks.push(pass(
                "login",
                format!("logged in as {}; identity `{name}`", args.rds.rds_user),
            ));
        }
        Err(e) => {
            let (failed, fix) = match &e {
                RdsError::Transport(TransportError::HostKeyMismatch { .. } | TransportError::HostKeyUnknown { .. }) => (
                    "host key",
                    "the RDS presented a different host key: confirm its fingerprint on the RDS console \
                     (`/ip ssh print`), then update the fingerprint, key or file given to --rds-host-key, \
                     or the --rds-known-hosts file. If nobody changed the RDS, someone may be \
                     intercepting the connection",
                ),
                RdsError::Transport(TransportError::AuthRejected { .. }) => (
                    "login",
                    "the RDS refused the key: import its public key for the user on the RDS \
                     (`/user ssh-keys import public-key-file=... user=...`) or fix --rds-user",
                ),
                RdsError::Transport(_) => (
                    "connect",
                    "check --rds-address and --rds-port, the network path to the RDS, and that its SSH \
                     service is enabled (`/ip service print`)",
                ),
                _ => ("identity", REJECTED_FIX),
            };
            for name in ["connect", "host key", "login"] {
                if name == failed {
                    checks.push(fail(name, e.to_string(), fix));
                    break;
                }
                checks.push(pass(name, "ok"));
            }
            for name in [
                "host key",
                "login",
                "disk listing",
                "file listing",
                "capacity",
                "traffic",
            ] {
                if !checks.iter().any(|c| c.name == name) {
                    checks.push(skipped(name));
                }
            }
            return checks;
        }
    }
    let rejected = |name: &'static str, e: RdsError| fail(name, e.to_string(), REJECTED_FIX);
    checks.push(match rds.list_disks(deadline).await {
        Ok(disks) => {
            let managed = disks
                .iter()
                .filter(|d| classify_disk(&bases, d).is_some())
                .count();
            pass(
                "disk listing",
                format!("{} disks, {managed} managed by this driver", disks.len()),
            )
        }
        Err(e) => rejected("disk listing", e),
    });
    checks.push(fencing_check(&rds, deadline).await);
    checks.push(match rds.list_files(&base, deadline).await {
        Ok(files) => pass(
            "file listing",
            format!("{} files under {base}", files.len()),
        ),
        Err(e) => rejected("file listing", e),
    });
    checks.push(match rds.capacity(&base, deadline).await {
        Ok(c) if c.free_bytes > 0 => pass(
            "capacity",
            format!("{:.1} GiB free of {:.1} GiB on {}", gib(c.free_bytes), gib(c.total_bytes), base.mount_point()),
        ),
        Ok(_) => fail("capacity", "the pool is full", "free space on the RDS pool, or point --rds-volume-base-path at another pool"),
        Err(RdsError::NotFound(e)) => fail(
            "capacity",
            e,
            format!("no disk is mounted at `{}`: --rds-volume-base-path must start with the pool's mount point", base.mount_point()),
        ),
        Err(e) => rejected("capacity", e),
    });
    checks.push(match Slot::new(base.mount_point()) {
        Ok(slot) => match rds.traffic(&slot, deadline).await {
            Ok(t) => pass(
                "traffic",
                format!("{} reads, {} writes so far", t.read_ops, t.write_ops),
            ),
            Err(e) => rejected("traffic", e),
        },
        Err(e) => fail(
            "traffic",
            e.to_string(),
            "the pool's mount point must be a valid slot name",
        ),
    });
    checks
}

/// Whether the RDS shows `nvme-tcp-server-allow-host-name` on its exported disks, which
/// `--nvme-fencing` sets and reads back: a failure when they do not, a pass that says it cannot
/// tell when no disk is exported. Read-only: whether RouterOS also enforces it is for
/// `rds-csi validate` (which sets it on a scratch disk) and hardware to tell.
async fn fencing_check(rds: &crate::rds::RdsClient, deadline: tokio::time::Instant) -> Check {
    use crate::rds::command::{Command, DiskFilter};
    const KEY: &str = "nvme-tcp-server-allow-host-name";
    let entries = match rds
        .run(&Command::DiskPrint(DiskFilter::All), deadline)
        .await
    {
        Ok(text) => crate::rds::parse::parse_detail(&text),
        Err(e) => return fail("fencing", e.to_string(), REJECTED_FIX),
    };
    let entries = match entries {
        Ok(e) => e,
        Err(e) => {
            return fail(
                "fencing",
                format!("the disk listing did not parse: {e}"),
                REJECTED_FIX,
            )
        }
    };
    let exported: Vec<_> = entries
        .iter()
        .filter(|e| e.get("nvme-tcp-export") == Some("yes"))
        .collect();
    let shown = exported.iter().filter(|e| e.get(KEY).is_some()).count();
    let fenced = exported
        .iter()
        .filter(|e| e.get(KEY).is_some_and(|v| !v.is_empty()))
        .count();
    match (exported.len(), shown) {
        (0, _) => pass(
            "fencing",
            format!(
                "cannot tell: no disk is exported, and {KEY} is read from exported disks; \
                 run again once a volume exists, or run `rds-csi validate`"
            ),
        ),
        (n, s) if s == n => pass(
            "fencing",
            format!(
                "the RDS shows {KEY} on all {n} exported disks ({fenced} limited to a host): \
                 --nvme-fencing can set it"
            ),
        ),
        (n, s) => fail(
            "fencing",
            format!(
                "{KEY} is missing on {} of {n} exported disks: --nvme-fencing would fail on this RDS",
                n - s
            ),
            FENCING_FIX,
        ),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

pub async fn doctor(args: ToolArgs) -> anyhow::Result<()> {
    let checks = run_checks(&args).await;
    let failed = checks.iter().filter(|c| c.result == Verdict::Fail).count();
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "ok": failed == 0, "checks": checks })
            )?;
        }
        OutputFormat::Text => {
            writeln!(out, "{:<14} {:<7} DETAIL", "CHECK", "RESULT")?;
            for c in &checks {
                let verdict = match c.result {
                    Verdict::Pass => "PASS",
                    Verdict::Fail => "FAIL",
                    Verdict::Skipped => "SKIP",
                };
                writeln!(out, "{:<14} {verdict:<7} {}", c.name, c.detail)?;
            }
            for c in checks.iter().filter(|c| c.result == Verdict::Fail) {
                writeln!(out, "\nfix {}: {}", c.name, c.fix)?;
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

#[derive(Debug, Serialize)]
struct ListedVolume {
    kind: &'static str,
    id: String,
    size_bytes: Option<u64>,
    file_path: Option<String>,
    nqn: Option<String>,
    source: Option<String>,
}

pub async fn volumes(args: ToolArgs) -> anyhow::Result<()> {
    let rds = crate::server::rds_client(args.rds.ssh_config()?);
    let bases = args.rds.volume_base_paths()?;
    let disks = rds.list_disks(deadline_in(TOOL_DEADLINE)).await?;
    let mut listed: Vec<ListedVolume> = disks
        .iter()
        .filter_map(|d| {
            let (kind, source) = match classify_disk(&bases, d)? {
                ManagedFile::Volume(_) => ("volume", None),
                ManagedFile::Snapshot { source, .. } => ("snapshot", source.map(|s| s.to_string())),
            };
            Some(ListedVolume {
                kind,
                id: d.slot.clone(),
                size_bytes: d.size_bytes,
                file_path: d.file_path.clone(),
                nqn: d.nqn.clone(),
                source,
            })
        })
        .collect();
    listed.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::json!({ "volumes": listed }))?,
        OutputFormat::Text => {
            writeln!(out, "{:<9} {:<64} {:>10} FILE", "KIND", "ID", "SIZE(GiB)")?;
            for v in &listed {
                writeln!(
                    out,
                    "{:<9} {:<64} {:>10.2} {}{}",
                    v.kind,
                    v.id,
                    gib(v.size_bytes.unwrap_or_default()),
                    v.file_path.as_deref().unwrap_or("-"),
                    v.source
                        .as_deref()
                        .map(|s| format!(" (from {s})"))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}

pub async fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let rds = crate::server::rds_client(args.rds.ssh_config()?);
    let base = args.rds.volume_base_path()?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: removing what was made, then stopping");
            on_interrupt.cancel();
        }
    });
    let (report, bundle) =
        crate::validate::run(&rds, &base, cancel, |line| eprintln!("{line}")).await?;
    if let Some(dir) = &args.bundle {
        bundle.write(dir, &report)?;
        eprintln!(
            "bundle written to {}; add it as fixtures/routeros/hardware/{}/",
            dir.display(),
            report
                .routeros_version
                .as_deref()
                .unwrap_or("unknown")
                .split_whitespace()
                .next()
                .unwrap_or("unknown")
        );
    }
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        OutputFormat::Text => {
            writeln!(
                out,
                "{:<14} {:<8} {:<56} observed",
                "step", "handled", "assumption"
            )?;
            for f in &report.findings {
                let handled = match f.handled {
                    crate::validate::Handled::Yes => "yes",
                    crate::validate::Handled::No => "NO",
                };
                writeln!(
                    out,
                    "{:<14} {handled:<8} {:<56} {}",
                    f.step, f.assumption, f.observed
                )?;
            }
            let variants = report.variants();
            writeln!(
                out,
                "\nmock-rds profile matching this RDS: --profile {}",
                if variants.is_empty() {
                    "default".to_string()
                } else {
                    variants.join(",")
                }
            )?;
            for l in &report.leftovers {
                writeln!(out, "NOT REMOVED, remove by hand: {l}")?;
            }
        }
    }
    let unhandled = report
        .findings
        .iter()
        .any(|f| f.handled == crate::validate::Handled::No);
    if report.interrupted {
        anyhow::bail!("interrupted before every step ran");
    }
    if !report.leftovers.is_empty() {
        anyhow::bail!(
            "{} thing(s) could not be removed (listed above)",
            report.leftovers.len()
        );
    }
    if unhandled {
        anyhow::bail!(
            "the RDS did something the driver does not handle (marked NO): please report it"
        );
    }
    Ok(())
}
