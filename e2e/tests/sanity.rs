//! csi-sanity, the kubernetes-csi conformance suite (csi-test v5, built from the version
//! e2e/cluster/go pins), against the real binary: controller and node in one process with the
//! loop connector and an attach limit, on mock-rds. Any failure of the suite fails the test.

use std::time::Duration;

use e2e::{Env, EnvOptions};

/// The suite's own run is a few minutes; past this it is killed and the test fails.
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_sanity_passes_against_the_combined_driver() {
    if !e2e::is_root() {
        assert!(
            !e2e::vm::in_ci(),
            "csi-sanity needs root (loop devices, mount)"
        );
        eprintln!("SKIPPED: csi-sanity needs root (loop devices, mount)");
        return;
    }
    let bin = match e2e::k8s::bin_dir() {
        Ok(bin) => bin,
        Err(e) if e2e::vm::in_ci() => panic!("csi-sanity: {e:#}"),
        Err(e) => {
            eprintln!("SKIPPED: csi-sanity: {e:#} (CI=true fails instead)");
            return;
        }
    };
    let env = Env::start_with(
        "sanity",
        EnvOptions {
            driver_args: &["--connector", "loop", "--max-volumes-per-node", "2"],
            ..EnvOptions::default()
        },
    )
    .await
    .unwrap();
    let (staging, mount) = (env.path("sanity-staging"), env.path("sanity-mount"));
    let mut cmd = tokio::process::Command::new(bin.join("csi-sanity"));
    cmd.arg(format!("--csi.endpoint={}", env.driver.socket.display()))
        .arg(format!("--csi.stagingdir={}", staging.display()))
        .arg(format!("--csi.mountdir={}", mount.display()))
        .arg(format!("--csi.testvolumesize={}", 64 << 20))
        .arg(format!("--csi.testvolumeexpandsize={}", 128 << 20))
        .arg("--csi.testnodevolumeattachlimit")
        .arg("--ginkgo.no-color")
        .kill_on_drop(true);
    let out = tokio::time::timeout(SUITE_DEADLINE, cmd.output())
        .await
        .expect("csi-sanity did not finish in time")
        .expect("starting csi-sanity");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("[FAIL]") || l.contains("Ran ") || l.contains("Passed"))
        .collect();
    eprintln!("csi-sanity: {}", summary.join("\n"));
    assert!(
        out.status.success(),
        "csi-sanity failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
