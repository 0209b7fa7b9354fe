//! The `mock-rds` binary driven by the OpenSSH client, as a person would use it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mock-rds");
const WAIT: Duration = Duration::from_secs(20);

/// Kills the server if the test fails before stopping it.
struct Server {
    child: Child,
    port: u16,
    fingerprint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command() -> Command {
    let mut c = Command::new(BIN);
    // Keep the caller's environment from changing the flags under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("MOCK_RDS_") {
            c.env_remove(k);
        }
    }
    c
}

fn spawn(args: &[&str]) -> Server {
    spawn_env(args, &[])
}

fn spawn_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
    spawn_with(args, envs, Stdio::null())
}

/// Like [`spawn_env`], its log (stderr) going to `stderr`.
fn spawn_with(args: &[&str], envs: &[(&str, &str)], stderr: Stdio) -> Server {
    let mut child = command()
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn mock-rds");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut server = Server {
        child,
        port: 0,
        fingerprint: String::new(),
    };
    let line = rx.recv_timeout(WAIT).expect("ready line");
    // mock-rds listening on 127.0.0.1:PORT host-key SHA256:...
    let rest = line
        .trim_end()
        .strip_prefix("mock-rds listening on 127.0.0.1:")
        .unwrap_or_else(|| panic!("bad ready line {line:?}"));
    let (port, fp) = rest
        .split_once(" host-key ")
        .expect("host-key in ready line");
    server.port = port.parse().unwrap();
    server.fingerprint = fp.to_string();
    assert!(server.fingerprint.starts_with("SHA256:"));
    server
}

fn keygen(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(st.success());
    key
}

/// The OpenSSH client for `server`, with `key`, checking its host key against `known_hosts`,
/// before the destination and command.
fn ssh_client(server: &Server, key: &Path, known_hosts: &Path) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-p")
        .arg(server.port.to_string())
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
        ]);
    c
}

fn ssh(server: &Server, key: &Path, known_hosts: &Path, cmd: &str) -> Output {
    ssh_client(server, key, known_hosts)
        .args(["admin@127.0.0.1", cmd])
        .stdin(Stdio::null())
        .output()
        .expect("ssh (openssh-client) must be installed")
}

fn known_hosts(server: &Server, state: &Path, dir: &Path) -> std::path::PathBuf {
    let public = std::fs::read_to_string(state.join("ssh_host_ed25519_key.pub")).unwrap();
    let mut fields = public.split_whitespace();
    let (kind, b64) = (fields.next().unwrap(), fields.next().unwrap());
    let kh = dir.join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {kind} {b64}\n", server.port)).unwrap();
    // The ready line's fingerprint is the key's.
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(state.join("ssh_host_ed25519_key.pub"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&server.fingerprint));
    kh
}

/// A mock-rds taking any key, with its state in a temporary directory: that directory, the
/// server, a client key and a known_hosts file for it.
fn any_key_server() -> (
    tempfile::TempDir,
    Server,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let state = dir.path().join("state");
    let server = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--allow-any-key",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let kh = known_hosts(&server, &state, dir.path());
    (dir, server, key, kh)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "mock-rds did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn openssh_round_trip_restart_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = keygen(dir.path());
    let auth = dir.path().join("authorized_keys");
    std::fs::copy(key.with_extension("pub"), &auth).unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
        "--authorized-keys",
        auth.to_str().unwrap(),
    ];
    let server = spawn(&args);
    let kh = known_hosts(&server, &state, dir.path());

    let slot = "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8";
    let add = ssh(
        &server,
        &key,
        &kh,
        &format!(
            "/disk add type=file file-path=\"/storage-pool/metal-csi/{slot}.img\" file-size=1073741824 slot=\"{slot}\" nvme-tcp-export=yes nvme-tcp-server-port=4420 nvme-tcp-server-nqn=\"nqn.2000-02.com.mikrotik:{slot}\""
        ),
    );
    assert!(add.status.success(), "{add:?}");
    assert!(add.stdout.is_empty());

    let print = ssh(
        &server,
        &key,
        &kh,
        &format!("/disk print detail where slot={slot}"),
    );
    assert!(print.status.success());
    let text = String::from_utf8(print.stdout).unwrap();
    assert!(text.starts_with("Flags: "), "{text}");
    assert!(text.contains(&format!("slot=\"{slot}\"")), "{text}");
    assert!(text.contains("file-size=1024.0MiB"), "{text}");
    assert!(text.contains("\r\n"));

    let bad = ssh(&server, &key, &kh, "/disk frobnicate");
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&bad.stdout),
        "bad command name frobnicate (line 1 column 7)\r\n"
    );

    // An "RDS reboot": SIGTERM, clean exit, restart on the same state dir.
    let mut server = server;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_exit(&mut server.child).success());
    let fingerprint = server.fingerprint.clone();

    // Same port again (as an RDS keeps its address across a reboot).
    let listen = format!("127.0.0.1:{}", server.port);
    drop(server);
    let mut args = args;
    args[1] = &listen;
    let server = spawn(&args);
    assert_eq!(server.fingerprint, fingerprint, "host key persists");
    let kh = known_hosts(&server, &state, dir.path());
    let print = ssh(&server, &key, &kh, "/disk print detail where slot~\"pvc\"");
    assert!(String::from_utf8_lossy(&print.stdout).contains(slot));

    let remove = ssh(
        &server,
        &key,
        &kh,
        &format!("/disk remove [find slot={slot}]"),
    );
    assert!(
        remove.status.success() && remove.stdout.is_empty(),
        "{remove:?}"
    );
    let print = ssh(
        &server,
        &key,
        &kh,
        &format!("/disk print detail where slot={slot}"),
    );
    assert!(!String::from_utf8_lossy(&print.stdout).contains(slot));

    // A key that is not authorized is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other = keygen(other_dir.path());
    let denied = ssh(&server, &other, &kh, "/system identity print");
    assert_eq!(denied.status.code(), Some(255), "{denied:?}");
}

#[test]
fn refuses_to_start_without_client_authentication() {
    let out = command()
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-any-key"));
    assert!(out.stdout.is_empty());
}

#[test]
fn allow_any_key_and_simple_output_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let state = dir.path().join("state");
    let server = spawn_env(
        &["--listen", "127.0.0.1:0"],
        &[
            ("MOCK_RDS_ALLOW_ANY_KEY", "true"),
            ("MOCK_RDS_OUTPUT", "simple"),
            ("MOCK_RDS_STATE_DIR", state.to_str().unwrap()),
        ],
    );
    let kh = known_hosts(&server, &dir.path().join("state"), dir.path());
    let out = ssh(&server, &key, &kh, "/disk print detail where slot=nope");
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "simple mode prints no legend");
    let out = ssh(&server, &key, &kh, "/system identity print");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "  name: RDS\n");
}

#[test]
fn its_log_into_a_file_has_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let state = dir.path().join("state");
    let log = dir.path().join("mock-rds.log");
    let server = spawn_with(
        &["--listen", "127.0.0.1:0", "--allow-any-key"],
        &[("MOCK_RDS_STATE_DIR", state.to_str().unwrap())],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let kh = known_hosts(&server, &state, dir.path());
    assert!(ssh(&server, &key, &kh, "/disk print detail")
        .status
        .success());
    // A refused command is logged with its exit status and its reply, not as if it ran.
    let refused = ssh(&server, &key, &kh, "/disk frobnicate");
    assert!(!refused.status.success());
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "nothing logged: {text:?}");
    assert!(!text.contains('\x1b'), "colour escapes in a file: {text:?}");
    let line = text
        .lines()
        .find(|l| l.contains("/disk frobnicate"))
        .unwrap_or_else(|| panic!("the refused command is not logged: {text}"));
    assert!(line.contains("disposition=Refused"), "{line}");
    assert!(!line.contains("exit_status=0"), "{line}");
    assert!(line.contains("bad command name"), "{line}");
}

/// The OpenSSH client in console mode: `flags` (`-T` or `-tt`), `input` as its stdin.
fn ssh_console(
    server: &Server,
    key: &Path,
    known_hosts: &Path,
    flags: &[&str],
    input: &[u8],
) -> Output {
    let mut child = ssh_client(server, key, known_hosts)
        .args(flags)
        .arg("admin@127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh (openssh-client) must be installed");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input).unwrap();
    // `-T` reads to the end of its input; `-tt` leaves on `/quit` and keeps stdin open.
    if flags == ["-T"] {
        drop(stdin);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(WAIT)
        .expect("the console did not end")
        .unwrap()
}

#[test]
fn the_console_runs_the_exec_commands_with_and_without_a_terminal() {
    let (_dir, server, key, kh) = any_key_server();

    // No terminal (`ssh -T host < commands`): answers only, the last line without its newline.
    let out = ssh_console(
        &server,
        &key,
        &kh,
        &["-T"],
        b"/mock orphan-file path=/storage-pool/left.img size=1M\n/mock state",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("files: 1"), "{stdout}");
    assert!(stdout.contains("/storage-pool/left.img"), "{stdout}");
    assert!(
        !stdout.contains("mock-rds] >"),
        "a prompt without a terminal: {stdout}"
    );

    // A terminal, as a person at a keyboard gets: banner, prompt, echo, CR LF, /quit.
    let out = ssh_console(
        &server,
        &key,
        &kh,
        &["-tt"],
        b"/mock stat\x7fte\r/file print\r/quit\r",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("/mock help"), "no banner: {stdout}");
    assert!(
        stdout.contains("[admin@mock-rds] > "),
        "no prompt: {stdout}"
    );
    assert!(stdout.contains("files: 1\r\n"), "{stdout:?}");
    assert!(stdout.contains("left.img"), "{stdout}");

    // A command with a terminal (`ssh -t host cmd`): its output arrives, in CR LF lines.
    let out = ssh_client(&server, &key, &kh)
        .args(["-tt", "admin@127.0.0.1", "/mock state"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("files: 1\r\n"), "{stdout:?}");
}

#[test]
fn a_state_dir_serves_one_mock_rds_and_the_data_dir_must_be_writable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--allow-any-key",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let first = spawn(&args);
    // Killed on drop, should it serve after all.
    let mut second = Server {
        child: command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        port: 0,
        fingerprint: String::new(),
    };
    assert!(!wait_exit(&mut second.child).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "state dir {} is in use by another mock-rds (pid {})",
            state.display(),
            first.child.id()
        )),
        "{stderr}"
    );
    // Once the first is gone the directory is free.
    drop(first);
    drop(spawn(&args));

    let out = command()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allow-any-key",
            "--data-dir",
            "/proc",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("data dir /proc is not writable"),
        "{stderr}"
    );
}

#[test]
fn the_mock_menu_explains_itself_and_sighup_clears_every_fault() {
    let (_dir, server, key, kh) = any_key_server();
    let run = |cmd: &str| {
        let out = ssh(&server, &key, &kh, cmd);
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for cmd in ["/mock", "/mock help"] {
        let help = run(cmd);
        for sub in [
            "orphan-file",
            "fault print | fault clear",
            "history",
            "SIGHUP",
            "help",
        ] {
            assert!(help.contains(sub), "{cmd} lacks {sub}: {help}");
        }
    }
    assert!(run("/mock fault print").contains("no faults set"));

    // A fault no new connection could undo: SIGHUP to the process clears it.
    run("/mock fault hang pattern=^/file");
    run("/mock fault refuse-connections");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ssh(&server, &key, &kh, "/mock fault print");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no faults set") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "faults still set after SIGHUP: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Answered: the hang is gone too.
    run("/file print");
}

#[test]
fn a_private_key_given_as_authorized_keys_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let private = keygen(dir.path());
    let out = command()
        .args(["--listen", "127.0.0.1:0", "--authorized-keys"])
        .arg(&private)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} holds a private key", private.display())),
        "{stderr}"
    );
}

#[test]
fn lists_profiles_and_rejects_unknown_ones() {
    let out = command().arg("--list-profiles").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8(out.stdout).unwrap();
    for (_, name, _) in mock_rds::profile::VARIANTS {
        let line = listing
            .lines()
            .find(|l| l.split_once(' ').map(|(n, _)| n) == Some(*name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"));
        assert!(line.len() > name.len() + 10, "{line}");
    }
    assert!(listing.lines().any(|l| l.starts_with("hardware-a ")));
    let bad = command()
        .args(["--allow-any-key", "--profile", "wrap-hyphen,nonsense"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`nonsense`"));
}
