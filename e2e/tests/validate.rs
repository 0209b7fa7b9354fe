//! `rds-csi validate` as an operator runs it: the real binary against the real mock-rds, with a
//! bundle and JSON output, and interrupted with Ctrl-C (SIGINT) half-way.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{binary, Keys, Mock, BASE_PATH};

fn validate(mock: &Mock, keys: &Keys) -> Command {
    let mut cmd = Command::new(binary("rds-csi"));
    cmd.arg("validate").args(mock.rds_args(keys));
    cmd
}

async fn mock_with_base(keys: &Keys, profile: &str) -> Mock {
    let mock = Mock::start_profile(keys, profile).await.unwrap();
    mock.exec_ok(
        keys,
        &format!("/file add type=directory name={}", &BASE_PATH[1..]),
    )
    .await
    .unwrap();
    mock
}

#[tokio::test]
async fn validate_reports_the_profile_and_writes_a_bundle() {
    let keys = Keys::generate().unwrap();
    let mock = mock_with_base(&keys, "hardware-b").await;
    let before = (mock.disks().unwrap(), mock.files().unwrap());
    let bundle = tempfile::tempdir().unwrap();
    let out = validate(&mock, &keys)
        .args(["--output", "json", "--bundle"])
        .arg(bundle.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("[1/16] version"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let variants: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["variants"].as_array().unwrap().iter())
        .filter_map(|v| v.as_str())
        .collect();
    for v in [
        "exit-none",
        "errors-unknown",
        "sessions-cap",
        "clock-east",
        "regex-no-anchors",
        "scripting-refused",
    ] {
        assert!(variants.contains(&v), "{v} not found: {report:#}");
    }
    let exact = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["step"] == "exact-size")
        .expect("an exact-size finding");
    assert!(
        exact["observed"]
            .as_str()
            .unwrap()
            .starts_with("refused: command rejected: bad command name put"),
        "{exact:#}"
    );
    for name in [
        "disk-print-detail-single.txt",
        "file-exact-size.txt",
        "commands.txt",
        "expected.json",
        "report.json",
    ] {
        assert!(
            bundle.path().join(name).exists(),
            "{name} missing from the bundle"
        );
    }
    assert_eq!((mock.disks().unwrap(), mock.files().unwrap()), before);
}

#[tokio::test]
async fn ctrl_c_half_way_removes_what_was_made() {
    let keys = Keys::generate().unwrap();
    let mock = mock_with_base(&keys, "copy-async").await;
    let before = (mock.disks().unwrap(), mock.files().unwrap());
    let mut child = validate(&mock, &keys)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stderr = child.stderr.take().unwrap();
    let log = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.starts_with("[11/") {
                // Mid-copy: the scratch directory holds disks and files by now.
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
            }
            seen.push(line);
        }
        seen
    });
    let log = tokio::time::timeout(Duration::from_secs(60), log)
        .await
        .expect("validate did not stop after SIGINT")
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "an interrupted run must not exit 0: {log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("interrupted")), "{log:#?}");
    assert!(log.iter().any(|l| l == "clean-up"), "{log:#?}");
    assert_eq!((mock.disks().unwrap(), mock.files().unwrap()), before);
}
