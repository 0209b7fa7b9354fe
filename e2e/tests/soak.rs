//! The short soaks CI runs on every run: the soak binary (built by cargo for this test) over
//! the real rds-csi and mock-rds, a fixed seed, under every fault kind. They must end with no
//! violation and fenced disks must have been checked. The run under the default profile
//! (400 operations, where the driver sends its changes as scripts) must inject every kind of
//! fault, and seed 2 also catches the re-introduced bugs RELIABILITY.md lists; the run under
//! `scripting-refused` (an RDS that runs no scripts) must have sent adds command by command.

use std::process::Command;
use std::time::Instant;

const SEED: &str = "2";

/// What one soak printed, after checking the assertions every run shares.
struct Run {
    stdout: String,
    summary: String,
}

impl Run {
    fn line_after(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{}", self.stdout))
    }

    /// `(in scripts, alone)`: the adds that took effect, as the soak counted them.
    fn adds(&self) -> (u64, u64) {
        let line = self.line_after("disk adds that took effect: ");
        let mut numbers = line
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok());
        match (numbers.next(), numbers.next()) {
            (Some(scripted), Some(alone)) => (scripted, alone),
            _ => panic!("no add counts in: {line}"),
        }
    }
}

fn soak(ops: &str, profile: &str) -> Run {
    // Builds rds-csi and mock-rds once (the soak itself skips the build).
    e2e::binary("rds-csi");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--ops", ops, "--seed", SEED, "--workers", "4"])
        .args(["--profile", profile, "--shrink-secs", "0"])
        .env("E2E_SKIP_BUILD", "1")
        .output()
        .expect("running the soak");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\nsoak took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "the soak failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{ops} operations, ")))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"))
        .to_string();
    assert!(
        summary.contains(" faults, 0 violations"),
        "summary: {summary}"
    );
    // Fenced disks compared with what their holders need, at quiet points and at the end.
    let fence_checks = summary
        .split_once("fence checks: ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no fence check count in: {summary}"));
    assert!(fence_checks > 0, "no fence was checked: {summary}");
    let run = Run { stdout, summary };
    if e2e::is_root() {
        let checks = run
            .line_after("data read back and compared: ")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(checks > 0, "no data was read back:\n{}", run.stdout);
    }
    run
}

#[test]
fn short_soak_under_every_fault_kind_finds_no_violation() {
    let run = soak("400", "default");
    let kinds = run.line_after("faults by kind: ");
    for pair in kinds.split_whitespace() {
        let (kind, n) = pair.split_once('=').expect("kind=N");
        let n: u64 = n.parse().expect("a count");
        assert!(n > 0, "no {kind} fault was injected: {kinds}");
    }
    assert!(kinds.split_whitespace().count() >= 11, "{kinds}");
    let (scripted, _) = run.adds();
    assert!(scripted > 0, "no add was sent in a script: {}", run.summary);
}

#[test]
fn short_soak_on_an_rds_that_runs_no_scripts_finds_no_violation() {
    let run = soak("200", "scripting-refused");
    let (_, alone) = run.adds();
    assert!(alone > 0, "no add was sent alone: {}", run.summary);
}
