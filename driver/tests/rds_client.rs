//! The RDS client against an embedded mock-rds over real SSH (routeros output mode): operations,
//! lost replies, hung commands, dropped connections, host-key and auth failures.

mod common;

use std::sync::Arc;

use common::{client_for, fast_retry, new_key};
use std::time::Duration;

use mock_rds::{Fault, MockRds};
use rds_csi::rds::command::{AllocSize, DiskAdd, NvmeExport, Port, RdsPath, Slot};
use rds_csi::rds::ssh::{fingerprint, HostKeyMatch, HostKeySource};
use rds_csi::rds::{deadline_in, HostKeyPolicy, RdsClient, RdsError, TransportError};
use russh::keys::PublicKey;

const BASE: &str = "/storage-pool/metal-csi";

struct Fixture {
    mock: MockRds,
    client: RdsClient,
    _state: tempfile::TempDir,
}

async fn start_mock(auth_key: &PublicKey) -> (MockRds, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mock = common::start_mock(auth_key, Some(state.path())).await;
    (mock, state)
}

async fn fixture() -> Fixture {
    let key = new_key();
    let (mock, state) = start_mock(key.public_key()).await;
    let client = client_for(&mock, key, common::pinned(&mock), fast_retry());
    Fixture {
        mock,
        client,
        _state: state,
    }
}

fn volume(id: &str, bytes: u64) -> DiskAdd {
    let slot = Slot::new(id).unwrap();
    DiskAdd {
        file_path: RdsPath::new(format!("{BASE}/{id}.img")).unwrap(),
        size: Some(AllocSize::round_up(bytes).unwrap()),
        copy_from: None,
        export: Some(NvmeExport {
            port: Port::new(4420).unwrap(),
            nqn: slot.nqn(),
        }),
        slot,
    }
}

fn soon() -> tokio::time::Instant {
    deadline_in(Duration::from_secs(20))
}

fn adds_in_history(mock: &MockRds) -> usize {
    mock.history()
        .iter()
        .filter(|h| h.command.starts_with("/disk add"))
        .count()
}

#[tokio::test]
async fn create_get_list_resize_remove() {
    let f = fixture().await;
    let add = volume("pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8", 3 << 29); // 1.5 GiB
    let disk = f.client.create_disk(&add, soon()).await.unwrap();
    assert_eq!(disk.slot, add.slot.as_str());
    assert_eq!(
        disk.size_bytes,
        Some(3 << 29),
        "1.5 GiB is allocated exactly, not truncated"
    );
    assert_eq!(disk.file_path.as_deref(), Some(add.file_path.as_str()));
    assert!(disk.nvme_export);
    assert_eq!(disk.nqn.as_deref(), Some(add.slot.nqn().as_str()));
    assert_eq!(f.mock.disk(add.slot.as_str()).unwrap().file_size, 3 << 29);

    let got = f.client.get_disk(&add.slot, soon()).await.unwrap().unwrap();
    assert_eq!(got, disk);
    assert!(f
        .client
        .get_disk(&Slot::new("pvc-missing").unwrap(), soon())
        .await
        .unwrap()
        .is_none());

    f.client
        .create_disk(&volume("pvc-b", 1 << 30), soon())
        .await
        .unwrap();
    let mut slots: Vec<String> = f
        .client
        .list_disks(soon())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.slot)
        .collect();
    slots.sort();
    assert!(
        slots.contains(&"pvc-b".to_string()) && slots.contains(&add.slot.to_string()),
        "{slots:?}"
    );

    let grown = f
        .client
        .resize_disk(&add.slot, AllocSize::round_up(2 << 30).unwrap(), soon())
        .await
        .unwrap();
    assert_eq!(grown.size_bytes, Some(2 << 30));

    let base = RdsPath::new(BASE).unwrap();
    let files = f.client.list_files(&base, soon()).await.unwrap();
    assert!(
        files
            .iter()
            .any(|x| x.path == add.file_path.as_str() && x.size_bytes.is_some()),
        "{files:?}"
    );
    let file = f
        .client
        .get_file(&add.file_path, soon())
        .await
        .unwrap()
        .unwrap();
    assert!(file.last_modified.is_some());

    f.client.remove_disk(&add.slot, soon()).await.unwrap();
    assert!(f.mock.disk(add.slot.as_str()).is_none());
    // RouterOS keeps the file after /disk remove; the client removes it explicitly.
    assert!(f
        .client
        .get_file(&add.file_path, soon())
        .await
        .unwrap()
        .is_some());
    f.client.remove_file(&add.file_path, soon()).await.unwrap();
    assert!(f
        .client
        .get_file(&add.file_path, soon())
        .await
        .unwrap()
        .is_none());
    // Both removals are idempotent.
    f.client.remove_disk(&add.slot, soon()).await.unwrap();
    f.client.remove_file(&add.file_path, soon()).await.unwrap();

    let cap = f.client.capacity(&base, soon()).await.unwrap();
    assert!(
        cap.total_bytes > cap.free_bytes && cap.free_bytes > 0,
        "{cap:?}"
    );
    assert!(!f.client.identity(soon()).await.unwrap().is_empty());
    f.client
        .traffic(&Slot::new("storage-pool").unwrap(), soon())
        .await
        .unwrap();
}

#[tokio::test]
async fn duplicate_and_failures_are_classified() {
    let f = fixture().await;
    let add = volume("pvc-dup", 1 << 30);
    f.client.create_disk(&add, soon()).await.unwrap();
    // Same disk again: it exists and matches, so the create converges.
    f.client.create_disk(&add, soon()).await.unwrap();
    // A different disk in the same slot is a conflict.
    let mut other = add.clone();
    other.size = Some(AllocSize::round_up(2 << 30).unwrap());
    assert!(matches!(
        f.client.create_disk(&other, soon()).await,
        Err(RdsError::AlreadyExists(_))
    ));

    // A failure printed with exit status 0 is still a failure, with its text kept.
    f.mock.inject(Fault::Fail {
        pattern: "^/disk add".into(),
        times: Some(1),
        message: "failure: not enough space".into(),
        exit_status: 0,
    });
    match f
        .client
        .create_disk(&volume("pvc-full", 1 << 30), soon())
        .await
    {
        Err(RdsError::OutOfSpace(text)) => assert!(text.contains("not enough space")),
        other => panic!("expected OutOfSpace, got {other:?}"),
    }
    // Non-transport failures are not retried.
    assert_eq!(adds_in_history(&f.mock), 4);
}

#[tokio::test]
async fn lost_reply_on_add_is_reconciled_without_duplicate() {
    let f = fixture().await;
    f.mock.inject(Fault::DropAfterRun {
        pattern: "^/disk add".into(),
        times: Some(1),
    });
    let add = volume("pvc-lost-reply", 1 << 30);
    let disk = f.client.create_disk(&add, soon()).await.unwrap();
    assert_eq!(disk.slot, "pvc-lost-reply");
    assert_eq!(
        adds_in_history(&f.mock),
        1,
        "the add must not be sent twice"
    );
    assert_eq!(
        f.mock
            .disks()
            .iter()
            .filter(|d| d.slot == "pvc-lost-reply")
            .count(),
        1
    );
    assert_eq!(f.client.transport().reconnects(), 1);
}

#[tokio::test]
async fn hung_command_hits_deadline_then_next_command_works() {
    let f = fixture().await;
    f.mock.inject(Fault::Hang {
        pattern: "^/disk print".into(),
        times: Some(1),
    });
    let slot = Slot::new("pvc-x").unwrap();
    let started = std::time::Instant::now();
    let err = f
        .client
        .get_disk(&slot, deadline_in(Duration::from_millis(1500)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RdsError::Transport(TransportError::Timeout { .. })),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(f.client.get_disk(&slot, soon()).await.unwrap().is_none());

    // With a longer deadline, the hung attempt times out and a retry answers.
    f.mock.inject(Fault::Hang {
        pattern: "^/disk print".into(),
        times: Some(1),
    });
    assert!(f.client.get_disk(&slot, soon()).await.unwrap().is_none());
}

#[tokio::test]
async fn dropped_connection_reconnects() {
    let f = fixture().await;
    f.client.identity(soon()).await.unwrap();
    f.mock.drop_all_connections();
    f.client.identity(soon()).await.unwrap();
    assert_eq!(f.client.transport().reconnects(), 1);

    f.mock.inject(Fault::RefuseConnections(true));
    f.mock.drop_all_connections();
    let err = f
        .client
        .identity(deadline_in(Duration::from_millis(800)))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    f.mock.inject(Fault::RefuseConnections(false));
    f.client.identity(soon()).await.unwrap();
}

#[tokio::test]
async fn stalled_handshake_times_out() {
    let f = fixture().await;
    f.mock.inject(Fault::StallHandshake(true));
    let err = f
        .client
        .identity(deadline_in(Duration::from_millis(800)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RdsError::Transport(TransportError::Timeout { .. })),
        "{err:?}"
    );
    f.mock.inject(Fault::StallHandshake(false));
    f.client.identity(soon()).await.unwrap();
}

#[tokio::test]
async fn wrong_host_key_is_refused_naming_both_fingerprints() {
    let key = new_key();
    let (mock, _state) = start_mock(key.public_key()).await;
    let wrong = new_key().public_key().clone();
    let client = client_for(
        &mock,
        key,
        HostKeyPolicy::Pinned(vec![wrong.clone()]),
        fast_retry(),
    );
    let err = client.identity(soon()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            RdsError::Transport(TransportError::HostKeyMismatch { .. })
        ),
        "{text}"
    );
    assert!(text.contains(&fingerprint(&wrong)), "{text}");
    assert!(text.contains(&mock.host_key_fingerprint()), "{text}");
    assert!(!err.is_retryable());
    assert!(
        mock.history().is_empty(),
        "nothing may be sent to an unverified host"
    );
}

#[tokio::test]
async fn fingerprint_pin_connects_and_a_wrong_one_names_both_fingerprints() {
    let key = new_key();
    let (mock, _state) = start_mock(key.public_key()).await;
    let pin = |value: &str| HostKeySource::parse(value).unwrap().policy().unwrap();
    let printed = mock.host_key_fingerprint();
    for value in [printed.clone(), format!("{printed}=")] {
        let client = client_for(&mock, key.clone(), pin(&value), fast_retry());
        client.identity(soon()).await.unwrap();
        let accepted = client.transport().accepted_host_key().unwrap();
        assert_eq!(accepted.matched, HostKeyMatch::Fingerprint, "{value}");
        assert_eq!(accepted.fingerprint, printed);
    }

    let wrong = fingerprint(new_key().public_key());
    let client = client_for(&mock, key, pin(&wrong), fast_retry());
    let err = client.identity(soon()).await.unwrap_err();
    let text = err.to_string();
    let RdsError::Transport(TransportError::HostKeyMismatch {
        expected, actual, ..
    }) = &err
    else {
        panic!("{text}")
    };
    assert_eq!((expected, actual), (&wrong, &printed));
    assert!(text.contains(&wrong) && text.contains(&printed), "{text}");
    assert!(!err.is_retryable());
    assert!(client.transport().accepted_host_key().is_none());
    let commands = mock.history().len();
    assert_eq!(
        commands, 2,
        "only the two pinned clients' identity commands"
    );
}

#[tokio::test]
async fn known_hosts_file_is_honoured() {
    let key = new_key();
    let (mock, state) = start_mock(key.public_key()).await;
    let known = state.path().join("known_hosts");
    let host_key = mock.host_public_key_openssh();
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {host_key}\n", mock.addr().port()),
    )
    .unwrap();
    let client = client_for(
        &mock,
        key.clone(),
        HostKeyPolicy::KnownHosts(known.clone()),
        fast_retry(),
    );
    client.identity(soon()).await.unwrap();

    std::fs::write(&known, "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n").unwrap();
    let client = client_for(&mock, key, HostKeyPolicy::KnownHosts(known), fast_retry());
    let err = client.identity(soon()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RdsError::Transport(TransportError::HostKeyUnknown { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn auth_failure_is_clear_and_not_retried() {
    let (mock, _state) = start_mock(new_key().public_key()).await;
    let pinned = russh::keys::parse_public_key_base64(
        mock.host_public_key_openssh()
            .split_whitespace()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    let client = client_for(
        &mock,
        new_key(),
        HostKeyPolicy::Pinned(vec![pinned]),
        fast_retry(),
    );
    let err = client.identity(soon()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RdsError::Transport(TransportError::AuthRejected { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("admin"));
}

#[tokio::test]
async fn many_concurrent_commands_share_the_connection() {
    let f = Arc::new(fixture().await);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                f.client
                    .create_disk(&volume(&format!("pvc-c{i}"), 1 << 20), soon())
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        f.mock
            .disks()
            .iter()
            .filter(|d| d.slot.starts_with("pvc-c"))
            .count(),
        40
    );
    assert_eq!(f.client.transport().reconnects(), 0);
}

#[tokio::test]
async fn a_copy_that_times_out_is_not_sent_again() {
    let f = fixture().await;
    f.client
        .create_disk(&volume("pvc-src", 1 << 30), soon())
        .await
        .unwrap();
    f.mock.inject(Fault::Hang {
        pattern: "copy-from".into(),
        times: Some(1),
    });
    let slot = Slot::new("snap-slow").unwrap();
    let copy = DiskAdd {
        file_path: RdsPath::new(format!("{BASE}/snap-slow.img")).unwrap(),
        size: None,
        copy_from: Some(Slot::new("pvc-src").unwrap()),
        export: None,
        slot,
    };
    // Longer than one capped attempt (2 s in this fixture): a copy gets the whole deadline.
    let started = std::time::Instant::now();
    let err = f
        .client
        .create_disk(&copy, deadline_in(Duration::from_millis(3000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RdsError::Transport(TransportError::Timeout { .. })),
        "{err:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    let copies = f
        .mock
        .history()
        .iter()
        .filter(|h| h.command.contains("copy-from"))
        .count();
    assert_eq!(copies, 1, "the copy is never sent twice");
}

/// Output is buffered up to a limit: a command that prints without end fails with a clear
/// error instead of filling the controller's memory, and is not retried.
#[tokio::test]
async fn output_past_the_limit_fails_the_command_and_is_not_retried() {
    let f = fixture().await;
    let limit = rds_csi::rds::ssh::MAX_OUTPUT_BYTES;
    f.mock.inject(Fault::Fail {
        pattern: "^/system identity print".into(),
        times: Some(1),
        message: "x".repeat(limit + 1024),
        exit_status: 0,
    });
    let err = f.client.identity(soon()).await.unwrap_err();
    assert!(
        err.to_string().contains("output exceeds"),
        "not the output limit: {}",
        &err.to_string()[..200.min(err.to_string().len())]
    );
    let sent = f
        .mock
        .history()
        .iter()
        .filter(|h| h.command == "/system identity print")
        .count();
    assert_eq!(sent, 1, "retrying would only read it all again");
    // The connection is still good for the next command.
    f.client.identity(soon()).await.unwrap();
}

fn copy_of(source: &DiskAdd, id: &str) -> DiskAdd {
    DiskAdd {
        slot: Slot::new(id).unwrap(),
        file_path: RdsPath::new(format!("{BASE}/{id}.img")).unwrap(),
        size: None,
        copy_from: Some(source.slot.clone()),
        export: None,
    }
}

/// A command that times out makes the transport probe its connection; a probe that fails too
/// must not cut off the other commands on that connection, such as a long `copy-from`.
#[tokio::test]
async fn a_failed_liveness_probe_never_cuts_off_a_copy_in_flight() {
    let f = fixture().await;
    let source = volume("pvc-src", 1 << 20);
    f.client.create_disk(&source, soon()).await.unwrap();
    // The copy takes longer than the timed-out command plus its probe (5 s at most).
    f.mock.inject(Fault::Latency {
        pattern: "copy-from".into(),
        min: Duration::from_secs(8),
        max: Duration::from_secs(8),
    });
    // The command, and the probe after it, never answer.
    f.mock.inject(Fault::Hang {
        pattern: "^/system identity print".into(),
        times: None,
    });
    let copy = copy_of(&source, "pvc-copy");
    let copying = f
        .client
        .create_disk(&copy, deadline_in(Duration::from_secs(30)));
    let hung = async {
        let r = f
            .client
            .identity(deadline_in(Duration::from_millis(500)))
            .await;
        assert!(r.is_err(), "{r:?}");
    };
    let (copied, ()) = tokio::join!(copying, hung);
    let disk = copied.expect("the copy was cut off by the liveness probe");
    assert_eq!(disk.slot, "pvc-copy");
    let copies = f
        .mock
        .history()
        .iter()
        .filter(|h| h.command.contains("copy-from"))
        .count();
    assert_eq!(copies, 1, "the copy was cut off and sent again");
    let probes = f
        .mock
        .history()
        .iter()
        .filter(|h| h.command == "/system identity print")
        .count();
    assert!(
        probes >= 2,
        "the probe ran while the copy did ({probes} identity commands)"
    );
}

/// A copy whose connection is lost may still be running on the RDS, like a timed-out one: it is
/// neither sent again nor taken as done because its slot exists.
#[tokio::test]
async fn a_lost_copy_is_neither_retried_nor_accepted() {
    let f = fixture().await;
    let source = volume("pvc-src", 1 << 20);
    f.client.create_disk(&source, soon()).await.unwrap();
    f.mock.inject(Fault::DropAfterRun {
        pattern: "copy-from".into(),
        times: Some(1),
    });
    let err = f
        .client
        .create_disk(&copy_of(&source, "pvc-copy"), soon())
        .await
        .expect_err("a lost copy was taken as done");
    assert!(
        matches!(err, RdsError::Transport(TransportError::ConnectionLost(_))),
        "{err:?}"
    );
    let sent = f
        .mock
        .history()
        .iter()
        .filter(|h| h.command.contains("copy-from"))
        .count();
    assert_eq!(sent, 1, "a lost copy was sent again");
}

/// An RDS that leaves a channel open unanswered while another is pending
/// (`sessions-one-open`): the open window the driver earns on prompt answers meets it once, the
/// driver gives up that connection and opens one at a time from then on; every command
/// completes within its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn an_rds_that_serves_one_open_at_a_time_costs_one_reconnect() {
    let key = new_key();
    let mock = common::start_mock(key.public_key(), None).await;
    mock.set_profile(mock_rds::Profile::parse("sessions-one-open").unwrap());
    let retry = rds_csi::rds::RetryPolicy {
        attempt_timeout: Duration::from_secs(10),
        ..fast_retry()
    };
    let rds = Arc::new(client_for(&mock, key, common::pinned(&mock), retry));
    // One at a time, the window is always full and the answers prompt: it widens.
    for _ in 0..40 {
        rds.identity(deadline_in(Duration::from_secs(10)))
            .await
            .unwrap();
    }
    let burst = || {
        let runs: Vec<_> = (0..32)
            .map(|_| {
                let rds = rds.clone();
                tokio::spawn(
                    async move { rds.identity(deadline_in(Duration::from_secs(20))).await },
                )
            })
            .collect();
        async move {
            for r in runs {
                r.await.unwrap().unwrap();
            }
        }
    };
    let before = rds.transport().generation();
    burst().await;
    let after_first = rds.transport().generation();
    assert_eq!(
        after_first - before,
        1,
        "the widened window met the RDS's limit once, and that connection was given up"
    );
    burst().await;
    assert_eq!(
        rds.transport().generation(),
        after_first,
        "one at a time from then on: nothing more is given up"
    );
}
