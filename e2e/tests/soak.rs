//! The short soak CI runs on every run: the soak binary (built by cargo for this test) over the
//! real rds-csi and mock-rds, a fixed seed, 400 operations under every fault kind. It must end
//! with no violation, every kind of fault must really have been injected, and fenced disks
//! must have been checked. Seed 2 also
//! catches the re-introduced bugs RELIABILITY.md lists.

use std::process::Command;
use std::time::Instant;

const OPS: &str = "400";
const SEED: &str = "2";

#[test]
fn short_soak_under_every_fault_kind_finds_no_violation() {
    // Builds rds-csi and mock-rds once (the soak itself skips the build).
    e2e::binary("rds-csi");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--ops", OPS, "--seed", SEED, "--workers", "4"])
        .args(["--shrink-secs", "0"])
        .env("E2E_SKIP_BUILD", "1")
        .output()
        .expect("running the soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\nsoak took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "the soak failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{OPS} operations, ")))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
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
    let kinds = stdout
        .lines()
        .find_map(|l| l.strip_prefix("faults by kind: "))
        .unwrap_or_else(|| panic!("no fault counts in:\n{stdout}"));
    for pair in kinds.split_whitespace() {
        let (kind, n) = pair.split_once('=').expect("kind=N");
        let n: u64 = n.parse().expect("a count");
        assert!(n > 0, "no {kind} fault was injected: {kinds}");
    }
    assert!(kinds.split_whitespace().count() >= 11, "{kinds}");
    if e2e::is_root() {
        let checks = stdout
            .lines()
            .find_map(|l| l.strip_prefix("data read back and compared: "))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(checks > 0, "no data was read back:\n{stdout}");
    }
}
