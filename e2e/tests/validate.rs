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
    assert!(stderr.contains("[1/18] version"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The verdict and the profile are fields of their own; `handled` is a boolean.
    assert_eq!(report["ok"], true, "{report:#}");
    let profile = report["profile"].as_str().expect("a profile");
    assert!(profile.contains("exit-none"), "{profile}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["handled"].is_boolean()),
        "{report:#}"
    );
    assert!(!report.to_string().contains("Some("), "{report:#}");
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let report = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
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
    assert_eq!(
        status.code(),
        Some(130),
        "an interrupted run exits 130, as shells report Ctrl-C: {log:#?}"
    );
    // The report of what ran is printed, without a profile it could not settle.
    let report = report.join().unwrap();
    assert!(report.contains("version"), "{report}");
    assert!(!report.contains("profile matching"), "{report}");
    assert!(log.iter().any(|l| l.contains("interrupted")), "{log:#?}");
    assert!(log.iter().any(|l| l == "clean-up"), "{log:#?}");
    assert_eq!((mock.disks().unwrap(), mock.files().unwrap()), before);
}

#[tokio::test]
async fn an_unwritable_bundle_is_refused_before_anything_runs() {
    let keys = Keys::generate().unwrap();
    let mock = mock_with_base(&keys, "default").await;
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let bundle = not_a_dir.join("bundle");
    let out = validate(&mock, &keys)
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("--bundle {}", bundle.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("[1/"), "a step ran: {stderr}");
    let commands = mock.history(&keys).await.unwrap();
    assert!(
        commands.iter().all(|c| !c.command.starts_with("/disk")),
        "{commands:?}"
    );
}

#[tokio::test]
async fn the_timeout_stops_a_hung_step_and_still_cleans_up() {
    let keys = Keys::generate().unwrap();
    let mock = mock_with_base(&keys, "default").await;
    let before = (mock.disks().unwrap(), mock.files().unwrap());
    mock.exec_ok(&keys, "/mock fault hang pattern=copy-from")
        .await
        .unwrap();
    let mut cmd = validate(&mock, &keys);
    cmd.args(["--timeout", "5s", "-o", "json"]);
    // Well under the 60 s a step's command may take: the timeout must cut the step itself.
    let out = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("validate outlived its --timeout and clean-up")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .contains("gave up after 5s (--timeout)"),
        "{stderr}"
    );
    assert!(stderr.contains("clean-up"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["profile"], serde_json::Value::Null);
    assert_eq!(report["interrupted"], true);
    assert_eq!((mock.disks().unwrap(), mock.files().unwrap()), before);
}
