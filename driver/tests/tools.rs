//! The operator commands, run as the real binary against an embedded mock-rds.

use std::path::Path;

use mock_rds::{Auth, Config, Fault, MockRds};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

struct Setup {
    mock: MockRds,
    dir: tempfile::TempDir,
    /// The file holding the mock's public key line.
    host_pub: String,
}

impl Setup {
    /// `--rds-host-key` with the file holding the mock's public key line.
    fn key_file_pin(&self) -> [&str; 2] {
        ["--rds-host-key", &self.host_pub]
    }

    /// The client's private key file.
    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("id")
    }

    /// `command` against the mock, logging in with `key` and pinning its host key, then `extra`.
    fn args(&self, command: &str, key: &Path, extra: &[&str]) -> Vec<String> {
        self.args_at(self.mock.addr().port(), command, key, extra)
    }

    /// [`Setup::args`] against `port` instead of the mock's.
    fn args_at(&self, port: u16, command: &str, key: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            command.into(),
            "--rds-address".into(),
            "127.0.0.1".into(),
            "--rds-port".into(),
            port.to_string(),
            "--rds-key-file".into(),
            key.display().to_string(),
        ];
        args.extend(self.key_file_pin().iter().map(|a| a.to_string()));
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }
}

/// A loopback port nothing listens on (the OS chose it and it was let go).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn setup() -> Setup {
    setup_with("default").await
}

/// A mock playing the behaviour `profile` (a mock-rds variant or combined profile).
async fn setup_with(profile: &str) -> Setup {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("id"),
        key.to_openssh(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let mock = MockRds::start(Config {
        auth: Auth::AuthorizedKeys(vec![key.public_key().clone()]),
        profile: mock_rds::Profile::parse(profile).unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let host_pub = dir.path().join("host.pub");
    std::fs::write(&host_pub, mock.host_public_key_openssh()).unwrap();
    let host_pub = host_pub.to_str().unwrap().to_string();
    Setup {
        mock,
        dir,
        host_pub,
    }
}

/// Runs `command` against `mock`, verifying its host key with the `pin` flags.
async fn run(
    command: &str,
    mock: &MockRds,
    dir: &Path,
    pin: &[&str],
) -> (i32, serde_json::Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rds-csi"))
        .arg(command)
        .args([
            "--output",
            "json",
            "--rds-address",
            "127.0.0.1",
            "--rds-port",
        ])
        .arg(mock.addr().port().to_string())
        .arg("--rds-key-file")
        .arg(dir.join("id"))
        .args(pin)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout:?} {}", String::from_utf8_lossy(&out.stderr)));
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {doc}"))
}

/// The check `name` failed, its detail and its fix saying what they should.
fn assert_fails(doc: &serde_json::Value, name: &str, detail: &str, fix: &str) {
    let c = check(doc, name);
    assert_eq!(c["result"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains(detail), "{c}");
    assert!(c["fix"].as_str().unwrap().contains(fix), "{c}");
}

#[tokio::test]
async fn doctor_passes_against_a_healthy_rds() {
    let s = setup().await;
    let (code, doc, stderr) = run("doctor", &s.mock, s.dir.path(), &s.key_file_pin()).await;
    assert_eq!(code, 0, "{doc} {stderr}");
    assert_eq!(doc["ok"], true);
    for c in doc["checks"].as_array().unwrap() {
        assert_eq!(c["result"], "pass", "{c}");
    }
    assert!(check(&doc, "capacity")["detail"]
        .as_str()
        .unwrap()
        .contains("GiB free"));
}

#[tokio::test]
async fn doctor_names_the_pin_that_matched() {
    let s = setup().await;
    let fingerprint = s.mock.host_key_fingerprint();
    let known_hosts = s.dir.path().join("known_hosts");
    std::fs::write(&known_hosts, s.mock.known_hosts_line() + "\n").unwrap();
    let key_line = s.mock.host_public_key_openssh();
    let padded = format!("{fingerprint}=");
    for (pin, says) in [
        (
            ["--rds-host-key", fingerprint.as_str()],
            "matches the pinned fingerprint",
        ),
        (
            ["--rds-host-key", padded.as_str()],
            "matches the pinned fingerprint",
        ),
        (
            ["--rds-host-key", key_line.as_str()],
            "matches the pinned key",
        ),
        (s.key_file_pin(), "matches the pinned key"),
        (
            ["--rds-known-hosts", known_hosts.to_str().unwrap()],
            "matches known_hosts",
        ),
    ] {
        let (code, doc, stderr) = run("doctor", &s.mock, s.dir.path(), &pin).await;
        assert_eq!(code, 0, "{pin:?}: {doc} {stderr}");
        let detail = check(&doc, "host key")["detail"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            detail.contains(says) && detail.contains(&fingerprint),
            "{pin:?}: {detail}"
        );
    }
    let (code, doc, stderr) = run(
        "doctor",
        &s.mock,
        s.dir.path(),
        &["--rds-insecure-skip-verify"],
    )
    .await;
    assert_eq!(code, 0, "{doc} {stderr}");
    let detail = check(&doc, "host key")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("NOT verified")
            && detail.contains(&format!("--rds-host-key {fingerprint}")),
        "{detail}"
    );
}

#[tokio::test]
async fn doctor_names_both_fingerprints_when_the_pinned_one_is_wrong() {
    let s = setup().await;
    let other = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let wrong = other
        .public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let (code, doc, _) = run("doctor", &s.mock, s.dir.path(), &["--rds-host-key", &wrong]).await;
    assert_eq!(code, 1);
    let host = check(&doc, "host key");
    assert_eq!(host["result"], "fail");
    let detail = host["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("expected {wrong}"))
            && detail.contains(&format!("got {}", s.mock.host_key_fingerprint())),
        "{host}"
    );
    assert!(s.mock.history().is_empty());
}

#[tokio::test]
async fn doctor_refuses_a_host_key_of_no_known_form_before_connecting() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rds-csi"))
        .args([
            "doctor",
            "--rds-address",
            "127.0.0.1",
            "--rds-host-key",
            "ssh-ed25519",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--rds-host-key")
            && stderr.contains("SHA256:")
            && !stderr.contains("No such file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn doctor_names_a_wrong_host_key_and_sends_nothing() {
    let s = setup().await;
    let other = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let wrong = s.dir.path().join("wrong.pub");
    std::fs::write(&wrong, other.public_key().to_openssh().unwrap()).unwrap();
    let (code, doc, _) = run(
        "doctor",
        &s.mock,
        s.dir.path(),
        &["--rds-host-key", wrong.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(doc["ok"], false);
    let host = check(&doc, "host key");
    assert_eq!(host["result"], "fail");
    assert!(
        host["detail"]
            .as_str()
            .unwrap()
            .contains(&s.mock.host_key_fingerprint()),
        "{host}"
    );
    assert!(
        host["fix"].as_str().unwrap().contains("--rds-host-key"),
        "{host}"
    );
    assert_eq!(check(&doc, "capacity")["result"], "skipped");
    assert!(s.mock.history().is_empty());
}

#[tokio::test]
async fn doctor_reports_a_rejected_command_with_its_fix() {
    let s = setup().await;
    s.mock.inject(Fault::Fail {
        pattern: "monitor-traffic".into(),
        times: None,
        message: "bad command name monitor-traffic (line 1 column 7)".into(),
        exit_status: 1,
    });
    let (code, doc, _) = run("doctor", &s.mock, s.dir.path(), &s.key_file_pin()).await;
    assert_eq!(code, 1);
    assert_fails(&doc, "traffic", "bad command name", "RouterOS 7");
    assert_eq!(check(&doc, "capacity")["result"], "pass");
}

const EXPORTED: &str = "/disk add type=file file-path=/storage-pool/metal-csi/pvc-a.img \
    file-size=1G slot=pvc-a nvme-tcp-export=yes";

#[tokio::test]
async fn doctor_fails_fencing_on_an_rds_without_the_allow_host_property() {
    let s = setup_with("no-allow-host").await;
    s.mock.execute(EXPORTED);
    let (code, doc, _) = run("doctor", &s.mock, s.dir.path(), &s.key_file_pin()).await;
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["ok"], false);
    assert_fails(&doc, "fencing", "missing on 1 of 1", "--nvme-fencing");
}

#[tokio::test]
async fn doctor_fencing_says_whether_it_could_tell() {
    let s = setup().await;
    let (code, doc, _) = run("doctor", &s.mock, s.dir.path(), &s.key_file_pin()).await;
    assert_eq!(code, 0, "{doc}");
    let unknown = check(&doc, "fencing");
    assert_eq!(unknown["result"], "pass", "{unknown}");
    assert!(
        unknown["detail"].as_str().unwrap().contains("cannot tell"),
        "{unknown}"
    );
    s.mock.execute(EXPORTED);
    let (code, doc, _) = run("doctor", &s.mock, s.dir.path(), &s.key_file_pin()).await;
    assert_eq!(code, 0, "{doc}");
    let shown = check(&doc, "fencing");
    assert_eq!(shown["result"], "pass", "{shown}");
    let detail = shown["detail"].as_str().unwrap();
    assert!(detail.contains("on the 1 exported disk ("), "{detail}");
    assert!(!detail.contains("  "), "a run of spaces: {detail:?}");
}

#[tokio::test]
async fn volumes_lists_managed_volumes_and_snapshots_only() {
    let s = setup().await;
    for cmd in [
        "/disk add type=file file-path=/storage-pool/metal-csi/pvc-a.img file-size=1G slot=pvc-a nvme-tcp-export=yes",
        "/disk add type=file copy-from=[find slot=pvc-a] file-path=/storage-pool/metal-csi/snap-1.from-pvc-a.img slot=snap-1",
        "/disk add type=file file-path=/storage-pool/other/pvc-x.img file-size=1G slot=pvc-x",
        "/disk add type=file file-path=/storage-pool/metal-csi/pvc-b.img file-size=1G slot=pvc-b nvme-tcp-export=no",
    ] {
        let reply = s.mock.execute(cmd);
        assert_eq!(reply.exit_status, 0, "{cmd}: {reply:?}");
    }
    let (code, doc, stderr) = run("volumes", &s.mock, s.dir.path(), &s.key_file_pin()).await;
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<(String, String)> = doc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("snapshot".to_string(), "snap-1".to_string()),
            ("volume".to_string(), "pvc-a".to_string()),
            ("volume".to_string(), "pvc-b".to_string())
        ]
    );
    assert_eq!(doc["volumes"][0]["source"], "pvc-a");
    // Each volume's condition as its disk shows it; a snapshot has none.
    assert_eq!(doc["volumes"][0]["condition"], serde_json::Value::Null);
    assert_eq!(doc["volumes"][1]["condition"], "healthy", "{doc}");
    let unexported = doc["volumes"][2]["condition"].as_str().unwrap();
    assert!(unexported.contains("not exported"), "{unexported}");
}

/// A one-shot command's stderr, as a pipe sees it, against an RDS that refuses `print terse`
/// (a normal answer to the driver's probe).
async fn stderr_of_volumes(extra: &[&str]) -> (i32, String) {
    let s = setup_with("terse-error").await;
    rds_csi(&s.args("volumes", &s.key(), extra), &[]).await
}

#[tokio::test]
async fn a_successful_one_shot_command_logs_nothing_and_never_in_colour() {
    let (code, stderr) = stderr_of_volumes(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "", "a successful `volumes` wrote to stderr");

    // Asked for everything: the probe's refusal is debug, not a failure, and a pipe gets no
    // escape sequences.
    let (code, stderr) = stderr_of_volumes(&["--log-level", "debug"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("RDS probe refused"), "{stderr}");
    assert!(!stderr.contains("RDS command failed"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour escapes into a pipe: {stderr:?}"
    );

    // `warning` is `warn`; a level that is none is refused before anything runs.
    let (code, stderr) = stderr_of_volumes(&["--log-level", "warning"]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = stderr_of_volumes(&["--log-level", "warnin"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown level `warnin`"), "{stderr}");
}

/// The binary with `args` and `env` only (none of the caller's `RDS_CSI_*`, nor `NO_COLOR`):
/// exit code, stderr.
async fn rds_csi(args: &[impl AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> (i32, String) {
    let (code, _, stderr) = rds_csi_output(args, env).await;
    (code, stderr)
}

/// Like [`rds_csi`], with stdout: exit code, stdout, stderr.
async fn rds_csi_output(
    args: &[impl AsRef<std::ffi::OsStr>],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rds-csi"));
    for (k, _) in std::env::vars() {
        if k.starts_with("RDS_CSI_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn flag_values_follow_one_duration_grammar_and_strict_ranges() {
    // The seconds flags take units too; `-o` is `--output`.
    let (code, stderr) = stderr_of_volumes(&["--rds-connect-timeout", "10s", "-o", "json"]).await;
    assert_eq!(code, 0, "{stderr}");

    let refused = |args: &'static [&'static str],
                   env: &'static [(&'static str, &'static str)],
                   says: &'static str| async move {
        let (code, stderr) = rds_csi(args, env).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    // A bare number could be seconds or minutes: with --delete that matters.
    refused(
        &[
            "orphans",
            "--rds-address",
            "127.0.0.1",
            "--grace-period",
            "5",
        ],
        &[],
        "a unit is required",
    )
    .await;
    // No host key to check against: how to learn it.
    refused(
        &["volumes", "--rds-address", "10.0.0.1", "--rds-port", "2222"],
        &[],
        "ssh-keyscan -p 2222 10.0.0.1 | ssh-keygen -lf -",
    )
    .await;
    refused(
        &["volumes", "--rds-address", "127.0.0.1", "--rds-port", "0"],
        &[],
        "--rds-port",
    )
    .await;
    refused(
        &[
            "volumes",
            "--rds-address",
            "127.0.0.1",
            "--rds-connect-timeout",
            "10m",
        ],
        &[],
        "out of range",
    )
    .await;
    refused(
        &[
            "serve",
            "--node",
            "--node-id",
            "n1",
            "--attachment-reconcile-interval",
            "0s",
        ],
        &[],
        "longer than zero",
    )
    .await;
    // Compound durations are durations.
    let (code, stderr) = rds_csi(
        &[
            "serve",
            "--node",
            "--node-id",
            "n1",
            "--orphan-check-interval",
            "1h30m",
            "--kubelet-dir",
            "rel",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--kubelet-dir must be an absolute path"),
        "{stderr}"
    );

    // Boolean environment variables take 1 and 0 as well as true and false: the controller
    // role is on, so the RDS address is what is missing.
    let (code, stderr) = rds_csi(&["serve"], &[("RDS_CSI_CONTROLLER", "1")]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.contains("invalid value"), "{stderr}");
    assert!(stderr.contains("--rds-address"), "{stderr}");
    let (code, stderr) = rds_csi(&["serve"], &[("RDS_CSI_CONTROLLER", "0")]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nothing to serve"), "{stderr}");
}

#[tokio::test]
async fn reports_say_when_there_is_nothing_and_count_in_words() {
    let s = setup().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rds-csi"))
        .arg("volumes")
        .args(["--rds-address", "127.0.0.1", "--rds-port"])
        .arg(s.mock.addr().port().to_string())
        .arg("--rds-key-file")
        .arg(s.dir.path().join("id"))
        .args(s.key_file_pin())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no volumes or snapshots of this driver on the RDS\n"
    );

    s.mock
        .add_orphan_file("/storage-pool/metal-csi/pvc-gone.img", 1 << 20);
    let (code, doc, stderr) = run("doctor", &s.mock, s.dir.path(), &s.key_file_pin()).await;
    assert_eq!(code, 0, "{doc} {stderr}");
    let detail = check(&doc, "file listing")["detail"].as_str().unwrap();
    assert!(detail.starts_with("1 file under "), "{detail}");
    let detail = check(&doc, "disk listing")["detail"].as_str().unwrap();
    // The mock's own system disk.
    assert!(detail.starts_with("1 disk, "), "{detail}");
}

#[tokio::test]
async fn a_metrics_address_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let d = dir.path().to_str().unwrap();
    let socket = format!("{d}/csi.sock");
    let args = [
        "serve",
        "--node",
        "--node-id",
        "n1",
        "--connector",
        "loop",
        "--loop-root",
        d,
        "--kubelet-dir",
        "",
        "--node-state-dir",
        d,
        "--endpoint",
        &socket,
        "--metrics-address",
        &addr,
    ];
    let (code, stderr) =
        tokio::time::timeout(std::time::Duration::from_secs(30), rds_csi(&args, &[]))
            .await
            .expect("serve started although its metrics address is taken");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("--metrics-address: listening on {addr}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn errors_name_their_cause_once() {
    let s = setup().await;
    let key = s.dir.path().join("id");
    let key = key.to_str().unwrap();
    let (code, stderr) = rds_csi(&s.args_at(closed_port(), "volumes", &s.key(), &[]), &[]).await;
    assert_eq!(code, 3, "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.contains("RDS unreachable: connecting to 127.0.0.1:"),
        "{error}"
    );
    assert_eq!(error.matches("Connection refused").count(), 1, "{error}");

    // Another key pinned: the RDS answered, and is not to be trusted.
    let other = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let other_pub = s.dir.path().join("other.pub");
    std::fs::write(&other_pub, other.public_key().to_openssh().unwrap()).unwrap();
    let port = s.mock.addr().port().to_string();
    let (code, stderr) = rds_csi(
        &[
            "volumes",
            "--rds-address",
            "127.0.0.1",
            "--rds-port",
            &port,
            "--rds-host-key",
            other_pub.to_str().unwrap(),
            "--rds-key-file",
            key,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 3, "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.contains("RDS host key not trusted: SSH host key of"),
        "{error}"
    );
    assert!(!error.contains("unreachable"), "{error}");
    assert_eq!(error.matches("does not match").count(), 1, "{error}");
}

#[tokio::test]
async fn orphans_are_listed_with_sizes_people_read() {
    let s = setup().await;
    s.mock
        .add_orphan_file("/storage-pool/metal-csi/pvc-gone.img", 3 << 19);
    let args = s.args("orphans", &s.key(), &["--grace-period", "0s"]);
    let (code, stdout, stderr) = rds_csi_output(&args, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(" 1.5 MiB "), "{stdout}");
    assert!(stdout.contains("1 orphan found;"), "{stdout}");
}

#[tokio::test]
async fn serve_says_when_it_creates_the_sockets_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let socket = dir.path().join("new/dir/csi.sock");
    let log = dir.path().join("serve.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rds-csi"))
        .args([
            "serve",
            "--node",
            "--node-id",
            "n1",
            "--connector",
            "loop",
            "--loop-root",
            d,
        ])
        .args([
            "--kubelet-dir",
            "",
            "--node-state-dir",
            d,
            "--metrics-address",
            "",
        ])
        .arg("--endpoint")
        .arg(&socket)
        .env_remove("NO_COLOR")
        .env_remove("RDS_CSI_LOG_LEVEL")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no socket");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("creating the socket's directory")
            && text.contains(&dir.path().join("new/dir").display().to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn a_public_key_given_as_the_key_file_is_named_as_such() {
    let s = setup().await;
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let public = s.dir.path().join("id.pub");
    std::fs::write(&public, key.public_key().to_openssh().unwrap() + "\n").unwrap();
    let (code, stderr) = rds_csi(&s.args("volumes", &public, &[]), &[]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--rds-key-file {} holds a public key",
            public.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_timeout_is_told_in_whole_units() {
    let s = setup().await;
    s.mock.inject(Fault::StallHandshake(true));
    let args = s.args("volumes", &s.key(), &["--rds-connect-timeout", "1s"]);
    let (code, stderr) =
        tokio::time::timeout(std::time::Duration::from_secs(60), rds_csi(&args, &[]))
            .await
            .expect("volumes hung past its connect timeouts");
    assert_eq!(code, 3, "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.contains("RDS not answering: timed out after 1s "),
        "{error}"
    );
}

/// Every check of `doctor`'s JSON report, by name, in order.
fn check_names(doc: &serde_json::Value) -> Vec<&str> {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn skipped_because(doc: &serde_json::Value, name: &str, reason: &str) {
    let c = check(doc, name);
    assert_eq!(c["result"], "skipped", "{c}");
    assert!(c["detail"].as_str().unwrap().contains(reason), "{c}");
}

/// `doctor` JSON, within a hard bound: its --timeout must end it.
async fn doctor_json(args: &[String]) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        rds_csi_output(args, &[]),
    )
    .await
    .expect("doctor outlived its --timeout");
    let doc =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?} {stderr}"));
    (code, doc, stderr)
}

#[tokio::test]
async fn doctor_after_a_hang_reports_silence_not_missing_policies() {
    let s = setup().await;
    s.mock.inject(Fault::Hang {
        pattern: "^/file print".into(),
        times: None,
    });
    let args = s.args("doctor", &s.key(), &["-o", "json", "--timeout", "3s"]);
    let (code, doc, stderr) = doctor_json(&args).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        check_names(&doc),
        rds_csi::operator::doctor::CHECKS,
        "{doc}"
    );
    assert_eq!(doc["ok"], false);
    assert_eq!(check(&doc, "disk listing")["result"], "pass");
    assert_fails(&doc, "file listing", "RDS not answering", "--rds-address");
    skipped_because(&doc, "capacity", "the RDS stopped answering");
    skipped_because(&doc, "traffic", "the RDS stopped answering");
    assert!(!doc.to_string().contains("policies"), "{doc}");
}

#[tokio::test]
async fn doctor_reports_every_check_whatever_fails() {
    let s = setup().await;
    // Nothing listens: connect fails, the rest is skipped for it.
    let args = s.args_at(closed_port(), "doctor", &s.key(), &["-o", "json"]);
    let (code, doc, stderr) = doctor_json(&args).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        check_names(&doc),
        rds_csi::operator::doctor::CHECKS,
        "{doc}"
    );
    assert_fails(&doc, "connect", "RDS unreachable", "--rds-port");
    skipped_because(&doc, "host key", "no connection");
    skipped_because(&doc, "traffic", "no connection");

    // A key the RDS does not know: connect and host key say what they saw, not just `ok`.
    let stranger = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let stranger_file = s.dir.path().join("stranger");
    std::fs::write(
        &stranger_file,
        stranger.to_openssh(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let args = s.args("doctor", &stranger_file, &["-o", "json"]);
    let (code, doc, stderr) = doctor_json(&args).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        check_names(&doc),
        rds_csi::operator::doctor::CHECKS,
        "{doc}"
    );
    let port = s.mock.addr().port();
    assert_eq!(
        check(&doc, "connect")["detail"],
        format!("reached 127.0.0.1:{port}")
    );
    assert!(
        check(&doc, "host key")["detail"]
            .as_str()
            .unwrap()
            .contains("matches the pinned key"),
        "{doc}"
    );
    assert_fails(&doc, "login", "refused", "/user ssh-keys import");
    skipped_because(&doc, "disk listing", "not logged in");

    // A bad base path: the first row, and all the others are there too.
    let args = s.args(
        "doctor",
        &s.key(),
        &["-o", "json", "--rds-volume-base-path", "relative"],
    );
    let (code, doc, stderr) = doctor_json(&args).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        check_names(&doc),
        rds_csi::operator::doctor::CHECKS,
        "{doc}"
    );
    assert_eq!(check(&doc, "base path")["result"], "fail");
}

#[tokio::test]
async fn a_silent_rds_ends_at_the_timeout_with_exit_status_3() {
    let s = setup().await;
    s.mock.inject(Fault::Hang {
        pattern: "^/disk print".into(),
        times: None,
    });
    let args = s.args("volumes", &s.key(), &["--timeout", "2s"]);
    let (code, stderr) =
        tokio::time::timeout(std::time::Duration::from_secs(30), rds_csi(&args, &[]))
            .await
            .expect("volumes outlived its --timeout");
    assert_eq!(code, 3, "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.contains("RDS not answering") || error.contains("gave up after 2s (--timeout)"),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_once_and_says_so() {
    let s = setup().await;
    let args = s.args_at(closed_port(), "volumes", &s.key(), &[]);
    let (code, stderr) = rds_csi(&args, &[]).await;
    assert_eq!(code, 3, "{stderr}");
    let retries: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("trying again in"))
        .collect();
    assert_eq!(retries.len(), 1, "{stderr}");
    assert!(retries[0].contains("RDS unreachable"), "{stderr}");
    assert!(retries[0].contains("(attempt 2 of 2)"), "{stderr}");
    assert_eq!(
        stderr.lines().count(),
        2,
        "one retry line, one error: {stderr}"
    );
}

#[tokio::test]
async fn migrate_check_cannot_read_its_kubeconfig_exit_status_3_cause_once() {
    let s = setup().await;
    let missing = s.dir.path().join("no-kubeconfig");
    let args = s.args(
        "migrate-check",
        &s.key(),
        &["--kubeconfig", missing.to_str().unwrap()],
    );
    let (code, stderr) = rds_csi(&args, &[]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}
