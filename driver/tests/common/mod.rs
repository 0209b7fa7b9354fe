//! Shared by the driver's integration tests: an embedded mock-rds and an RDS client for it.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod controller;
#[macro_use]
pub mod loop_host;

use std::path::Path;
use std::time::Duration;

use mock_rds::{Auth, Config, MockRds};
use rds_csi::rds::{HostKeyPolicy, RdsClient, RetryPolicy, SshConfig, Transport};
use russh::keys::{Algorithm, PrivateKey, PublicKey};

pub fn new_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

/// mock-rds on 127.0.0.1:0 that accepts only `client_key`, with its state in `state_dir`.
pub async fn start_mock(client_key: &PublicKey, state_dir: Option<&Path>) -> MockRds {
    MockRds::start(Config {
        state_dir: state_dir.map(Path::to_path_buf),
        auth: Auth::AuthorizedKeys(vec![client_key.clone()]),
        ..Config::default()
    })
    .await
    .unwrap()
}

/// mock-rds for the `rds-csi` binary: the client key it accepts at `dir/id` and its host key
/// at `dir/host.pub`, as `--rds-key-file` and `--rds-host-key` take them.
pub async fn start_mock_for_binary(dir: &Path) -> MockRds {
    let key = new_key();
    std::fs::write(
        dir.join("id"),
        key.to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let mock = start_mock(key.public_key(), None).await;
    std::fs::write(dir.join("host.pub"), mock.host_public_key_openssh()).unwrap();
    mock
}

/// The mock's own host key, pinned.
pub fn pinned(mock: &MockRds) -> HostKeyPolicy {
    let blob = mock
        .host_public_key_openssh()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    HostKeyPolicy::Pinned(vec![russh::keys::parse_public_key_base64(&blob).unwrap()])
}

/// Retries and attempts short enough for tests that inject hangs and drops.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(2),
    }
}

/// A client of `mock` with fast reconnects.
pub fn client_for(
    mock: &MockRds,
    key: PrivateKey,
    policy: HostKeyPolicy,
    retry: RetryPolicy,
) -> RdsClient {
    let addr = mock.addr();
    let mut config = SshConfig::new(addr.ip().to_string(), addr.port(), "admin", key, policy);
    config.connect_timeout = Duration::from_secs(5);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    // Reporting to the process-wide metrics, as the binary's clients do.
    RdsClient::new(
        Transport::with_observer(config, rds_csi::metrics::rds_observer()),
        retry,
    )
}

/// Checks a `rds-csi validate` bundle (as it would sit in `fixtures/routeros/hardware/<v>/`)
/// with the driver's parser: the scratch disk reads back exactly as `expected.json` says, the
/// listings parse, every captured failure reads as a failure even with exit status 0, and the
/// clock parses. Panics naming the file that does not hold.
pub fn check_bundle(dir: &Path) {
    use rds_csi::rds::error::{classify, ExecOutput};
    use rds_csi::rds::model::{Disk, FileInfo, RdsClock};
    use rds_csi::rds::parse::parse_detail;

    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
    };
    let expected: serde_json::Value = serde_json::from_str(&read("expected.json")).unwrap();
    let want = |k: &str| expected[k].clone();
    let parse = |name: &str| {
        parse_detail(&read(name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
    };

    let disks: Vec<Disk> = parse("disk-print-detail-single.txt")
        .iter()
        .filter_map(Disk::from_entry)
        .collect();
    assert_eq!(disks.len(), 1, "{}: one disk", dir.display());
    let disk = &disks[0];
    assert_eq!(disk.inconsistency(), None, "{}", dir.display());
    assert_eq!(serde_json::json!(disk.slot), want("slot"));
    assert_eq!(serde_json::json!(disk.file_path), want("file_path"));
    assert_eq!(serde_json::json!(disk.size_bytes), want("size_bytes"));
    assert_eq!(serde_json::json!(disk.nqn), want("nqn"));

    let listed: Vec<Disk> = parse("disk-print-detail-list.txt")
        .iter()
        .filter_map(Disk::from_entry)
        .collect();
    assert!(
        listed
            .iter()
            .any(|d| serde_json::json!(d.slot) == want("slot")),
        "{}: the listing lacks the scratch disk",
        dir.display()
    );
    let files: Vec<FileInfo> = parse("file-print-detail.txt")
        .iter()
        .filter_map(FileInfo::from_entry)
        .collect();
    assert!(
        files
            .iter()
            .any(|f| serde_json::json!(f.path) == want("file_path")),
        "{}: the file listing lacks the scratch disk's file",
        dir.display()
    );
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("error-") {
            let out = ExecOutput {
                stdout: read(&name),
                stderr: String::new(),
                exit_status: Some(0),
            };
            assert!(
                classify(out, true).is_err(),
                "{}/{name} would read as success",
                dir.display()
            );
        }
    }
    RdsClock::parse(&read("system-clock-print.txt"))
        .unwrap_or_else(|e| panic!("{}/system-clock-print.txt: {e}", dir.display()));
}
