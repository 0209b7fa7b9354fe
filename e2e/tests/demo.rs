//! `make run` works: the demo runs end to end and narrates each step.

#[test]
fn demo_runs_end_to_end() {
    // Build the binaries the demo starts before timing anything.
    e2e::binary("rds-csi");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("==> CreateVolume pvc-demo-volume"),
        "{stdout}"
    );
    assert!(
        stdout.contains("volume pvc-demo-volume deleted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("slot=\"pvc-demo-volume\""),
        "the RDS state is shown: {stdout}"
    );
    if e2e::is_root() {
        assert!(stdout.contains("hello from rds-csi"), "{stdout}");
    }
    assert!(stdout.ends_with("done.\n"));
}
