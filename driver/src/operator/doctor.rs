//! `rds-csi doctor`: checks, in order, everything the driver needs from the RDS, and says how
//! to fix what fails.

use serde::Serialize;

use super::{count, emit, gib, OutputFormat, RdsTarget};
use crate::ids::classify_disk;
use crate::rds::ssh::{AcceptedHostKey, HostKeyMatch};
use crate::rds::{deadline_in, RdsError, Slot, TransportError};

pub struct DoctorOptions {
    pub rds: RdsTarget,
    pub output: OutputFormat,
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

fn skipped(name: &'static str, reason: &str) -> Check {
    Check {
        name,
        result: Verdict::Skipped,
        detail: format!("skipped: {reason}"),
        fix: String::new(),
    }
}

/// Every check, in the order they run: a report always has all of them, skipped with a reason
/// when an earlier one stopped the run.
pub const CHECKS: [&str; 10] = [
    "base path",
    "credentials",
    "connect",
    "host key",
    "login",
    "disk listing",
    "fencing",
    "file listing",
    "capacity",
    "traffic",
];

/// `checks` completed with every check not run, skipped for `reason`, in [`CHECKS`] order.
fn skip_the_rest(mut checks: Vec<Check>, reason: &str) -> Vec<Check> {
    for name in CHECKS {
        if !checks.iter().any(|c| c.name == name) {
            checks.push(skipped(name, reason));
        }
    }
    checks.sort_by_key(|c| CHECKS.iter().position(|n| *n == c.name));
    checks
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

const CONNECT_FIX: &str =
    "check --rds-address and --rds-port, the network path to the RDS, and that its SSH \
    service is enabled (`/ip service print`); a port that accepts connections but never \
    answers may not be the SSH service, or RouterOS may be hung";

const STOPPED_ANSWERING: &str = "the RDS stopped answering";

const FENCING_FIX: &str =
    "this RouterOS does not show the property storage-side fencing sets, so fenced volumes \
    could not be published: leave --nvme-fencing off and `nvmeFencing` out of StorageClasses, \
    or run a RouterOS 7 build whose `/disk print detail` shows nvme-tcp-server-allow-host-name \
    (`rds-csi validate` tells whether it takes a host NQN)";

/// Runs every check in order, within the command's --timeout; a check that cannot run because
/// an earlier one failed is skipped, saying why.
pub async fn run_checks(options: &DoctorOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    let bases = match options.rds.base_paths() {
        Ok(b) => b,
        Err(e) => {
            checks.push(fail(
                "base path",
                format!("{e:#}"),
                "set --rds-volume-base-path to an absolute path such as /storage-pool/metal-csi",
            ));
            return skip_the_rest(checks, "no valid base path");
        }
    };
    let base = bases[0].clone();
    checks.push(pass(
        "base path",
        bases
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    ));
    let rds = match options.rds.client() {
        Ok(rds) => {
            checks.push(pass(
                "credentials",
                format!("key {} loaded", options.rds.key_file.display()),
            ));
            rds
        }
        Err(e) => {
            checks.push(fail(
                "credentials",
                format!("{e:#}"),
                "point --rds-key-file at an unencrypted OpenSSH or PEM private key (ed25519, RSA or ECDSA) \
                 and give --rds-host-key the RDS's host key fingerprint (`SHA256:...`), public key \
                 line (`ssh-ed25519 AAAA...`) or a file holding either",
            ));
            return skip_the_rest(checks, "no usable credentials");
        }
    };
    let deadline = deadline_in(options.rds.timeout);
    let addr = rds.transport().address();
    let reached = || pass("connect", format!("reached {addr}"));
    match rds.identity(deadline).await {
        Ok(name) => {
            checks.push(reached());
            checks.push(pass(
                "host key",
                host_key_detail(rds.transport().accepted_host_key()),
            ));
            checks.push(pass(
                "login",
                format!("logged in as {}; identity `{name}`", rds.transport().user()),
            ));
        }
        Err(RdsError::Transport(
            e @ (TransportError::HostKeyMismatch { .. } | TransportError::HostKeyUnknown { .. }),
        )) => {
            checks.push(reached());
            checks.push(fail(
                "host key",
                e.to_string(),
                "the RDS presented a different host key: confirm its fingerprint on the RDS console \
                 (`/ip ssh print`), then update the fingerprint, key or file given to --rds-host-key, \
                 or the --rds-known-hosts file. If nobody changed the RDS, someone may be \
                 intercepting the connection",
            ));
            return skip_the_rest(checks, "the RDS's host key is not trusted");
        }
        Err(RdsError::Transport(e @ TransportError::AuthRejected { .. })) => {
            checks.push(reached());
            checks.push(pass(
                "host key",
                host_key_detail(rds.transport().accepted_host_key()),
            ));
            checks.push(fail(
                "login",
                e.to_string(),
                "the RDS refused the key: import its public key for the user on the RDS \
                 (`/user ssh-keys import public-key-file=... user=...`) or fix --rds-user",
            ));
            return skip_the_rest(checks, "not logged in");
        }
        Err(e @ RdsError::Transport(_)) => {
            checks.push(fail("connect", e.to_string(), CONNECT_FIX));
            return skip_the_rest(checks, "no connection");
        }
        Err(e) => {
            // Logged in: the identity command itself was refused.
            checks.push(reached());
            checks.push(pass(
                "host key",
                host_key_detail(rds.transport().accepted_host_key()),
            ));
            checks.push(fail("login", e.to_string(), REJECTED_FIX));
            return skip_the_rest(checks, "RouterOS refused the first command");
        }
    }
    // A transport failure now is the RDS going silent or away, not a missing policy: the rest
    // is skipped rather than blamed on RouterOS.
    let rds_failure = |name: &'static str, e: RdsError| match e {
        RdsError::Transport(_) => fail(name, e.to_string(), CONNECT_FIX),
        e => fail(name, e.to_string(), REJECTED_FIX),
    };
    let stopped = |checks: &[Check]| {
        checks
            .last()
            .is_some_and(|c| c.result == Verdict::Fail && c.fix == CONNECT_FIX)
    };
    checks.push(match rds.list_disks(deadline).await {
        Ok(disks) => {
            let managed = disks
                .iter()
                .filter(|d| classify_disk(&bases, d).is_some())
                .count();
            pass(
                "disk listing",
                format!(
                    "{}, {managed} managed by this driver",
                    count(disks.len(), "disk")
                ),
            )
        }
        Err(e) => rds_failure("disk listing", e),
    });
    if stopped(&checks) {
        return skip_the_rest(checks, STOPPED_ANSWERING);
    }
    checks.push(fencing_check(&rds, deadline).await);
    if stopped(&checks) {
        return skip_the_rest(checks, STOPPED_ANSWERING);
    }
    checks.push(match rds.list_files(&base, deadline).await {
        Ok(files) => pass(
            "file listing",
            format!("{} under {base}", count(files.len(), "file")),
        ),
        Err(e) => rds_failure("file listing", e),
    });
    if stopped(&checks) {
        return skip_the_rest(checks, STOPPED_ANSWERING);
    }
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
        Err(e) => rds_failure("capacity", e),
    });
    if stopped(&checks) {
        return skip_the_rest(checks, STOPPED_ANSWERING);
    }
    checks.push(match Slot::new(base.mount_point()) {
        Ok(slot) => match rds.traffic(&slot, deadline).await {
            Ok(t) => pass(
                "traffic",
                format!("{} reads, {} writes so far", t.read_ops, t.write_ops),
            ),
            Err(e) => rds_failure("traffic", e),
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
        Err(e @ RdsError::Transport(_)) => return fail("fencing", e.to_string(), CONNECT_FIX),
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
                "the RDS shows {KEY} on {} {} ({fenced} limited to a host): \
                 --nvme-fencing can set it",
                if n == 1 { "the" } else { "all" },
                count(n, "exported disk")
            ),
        ),
        (n, s) => fail(
            "fencing",
            format!(
                "{KEY} is missing on {} of {}: --nvme-fencing would fail on this RDS",
                n - s,
                count(n, "exported disk")
            ),
            FENCING_FIX,
        ),
    }
}

pub async fn run(options: DoctorOptions) -> anyhow::Result<()> {
    let checks = run_checks(&options).await;
    let failed = checks.iter().filter(|c| c.result == Verdict::Fail).count();
    emit(
        options.output,
        &serde_json::json!({ "ok": failed == 0, "checks": checks }),
        |out| {
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
            Ok(())
        },
    )?;
    if failed > 0 {
        return Err(super::NeedsAction(format!("{} failed", count(failed, "check"))).into());
    }
    Ok(())
}
