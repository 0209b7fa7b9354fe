//! Fault injection from Rust and over SSH (`/mock ...`), history, and concurrency.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add_cmd, eventually, start, Client};
use mock_rds::{Disposition, Fault};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn fail_answers_with_the_chosen_text_and_status_n_times() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    rds.inject(Fault::Fail {
        pattern: "^/disk add".into(),
        times: Some(2),
        message: "failure: disk is busy".into(),
        exit_status: 0,
    });
    for _ in 0..2 {
        let out = c.run(&add_cmd("pvc-1", "1G")).await.unwrap();
        assert_eq!(out.exit, Some(0));
        assert_eq!(out.stdout, "failure: disk is busy\r\n");
    }
    assert!(rds.disk("pvc-1").is_none(), "a failed command is not run");
    c.ok("/disk print detail").await; // not matched
    c.ok(&add_cmd("pvc-1", "1G")).await; // the rule is used up
    assert!(rds.disk("pvc-1").is_some());

    rds.inject(Fault::Fail {
        pattern: "remove".into(),
        times: None,
        message: "failure: execution error".into(),
        exit_status: 1,
    });
    for _ in 0..3 {
        let out = c.run("/disk remove [find slot=pvc-1]").await.unwrap();
        assert_eq!(
            (out.exit, out.stdout.as_str()),
            (Some(1), "failure: execution error\r\n")
        );
    }
    rds.clear_faults();
    c.ok("/disk remove [find slot=pvc-1]").await;

    let h = rds.history();
    let dispositions: Vec<Disposition> = h.iter().map(|e| e.disposition).collect();
    assert_eq!(
        dispositions
            .iter()
            .filter(|d| **d == Disposition::Failed)
            .count(),
        5
    );
    assert_eq!(h[0].command, add_cmd("pvc-1", "1G"));
    assert_eq!(h[0].exit_status, Some(0));
    assert_eq!(h[0].output, "failure: disk is busy\r\n");
    assert_eq!(h.last().unwrap().disposition, Disposition::Answered);
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hang_accepts_and_never_answers_while_other_channels_work() {
    let rds = start().await;
    let c = Arc::new(Client::connect(rds.addr()).await.unwrap());
    rds.inject(Fault::Hang {
        pattern: "^/disk print".into(),
        times: Some(1),
    });
    let hung = {
        let c = c.clone();
        tokio::spawn(async move { c.run("/disk print detail").await })
    };
    assert!(
        eventually(WAIT, || rds
            .history()
            .iter()
            .any(|h| h.disposition == Disposition::Hung))
        .await
    );
    // The same connection still serves other channels.
    assert_eq!(c.ok("/system identity print").await, "  name: RDS\r\n");
    assert!(!hung.is_finished());
    let h = rds.history();
    assert_eq!(h[0].exit_status, None);

    // Cutting the connection ends the hung command with an error (no exit status).
    rds.drop_all_connections();
    let res = tokio::time::timeout(WAIT, hung).await.unwrap().unwrap();
    assert!(res.map(|o| o.exit.is_none()).unwrap_or(true));
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_after_run_changes_state_then_cuts_the_connection() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    rds.inject(Fault::DropAfterRun {
        pattern: "^/disk add".into(),
        times: Some(1),
    });
    let res = c.run(&add_cmd("pvc-1", "1G")).await;
    assert!(
        res.as_ref().map(|o| o.exit.is_none()).unwrap_or(true),
        "no reply: {res:?}"
    );
    assert!(rds.disk("pvc-1").is_some(), "the command ran");
    assert!(eventually(WAIT, || c.is_closed()).await);
    assert_eq!(rds.history()[0].disposition, Disposition::Dropped);

    // A retry on a new connection sees the disk already there.
    let c2 = Client::connect(rds.addr()).await.unwrap();
    let out = c2.run(&add_cmd("pvc-1", "1G")).await.unwrap();
    assert!(out.stdout.contains("already exists"), "{out:?}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_and_stall_new_connections() {
    let rds = start().await;
    let before = Client::connect(rds.addr()).await.unwrap();

    rds.inject(Fault::RefuseConnections(true));
    assert!(Client::connect(rds.addr()).await.is_err());
    // Existing connections keep working.
    before.ok("/system identity print").await;
    rds.inject(Fault::RefuseConnections(false));
    Client::connect(rds.addr()).await.unwrap();

    rds.inject(Fault::StallHandshake(true));
    let stalled =
        tokio::time::timeout(Duration::from_millis(300), Client::connect(rds.addr())).await;
    assert!(stalled.is_err(), "handshake must not complete");
    rds.clear_faults();
    let after = Client::connect(rds.addr()).await.unwrap();
    after.ok("/system identity print").await;

    // With `for=`, a shell's stall undoes itself: new connections are answered again after it.
    after.ok("/mock fault stall-handshake for=1s").await;
    assert!(after
        .ok("/mock fault print")
        .await
        .contains("stall-handshake"));
    let stalled =
        tokio::time::timeout(Duration::from_millis(300), Client::connect(rds.addr())).await;
    assert!(stalled.is_err(), "handshake must not complete");
    let deadline = Instant::now() + WAIT;
    while after
        .ok("/mock fault print")
        .await
        .contains("stall-handshake")
    {
        assert!(Instant::now() < deadline, "the stall did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Client::connect(rds.addr())
        .await
        .unwrap()
        .ok("/system identity print")
        .await;
    rds.stop().await;
    assert!(eventually(WAIT, || rds.connection_count() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_delays_matching_commands() {
    let rds = common::start_with(|c| c.latency_seed = 7).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    rds.inject(Fault::Latency {
        pattern: "identity".into(),
        min: Duration::from_millis(150),
        max: Duration::from_millis(200),
    });
    let t = Instant::now();
    c.ok("/system identity print").await;
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mock_commands_over_ssh() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok("/mock orphan-file path=/storage-pool/metal-csi/pvc-orphan.img size=1G")
        .await;
    assert_eq!(
        rds.file("/storage-pool/metal-csi/pvc-orphan.img")
            .map(|f| f.size),
        Some(1 << 30)
    );
    c.ok("/mock orphan-disk slot=pvc-nofile file-path=/storage-pool/metal-csi/pvc-nofile.img size=2G")
        .await;
    let d = rds.disk("pvc-nofile").unwrap();
    assert_eq!(d.file_size, 2 << 30);
    assert!(rds.file(&d.file_path).is_none());

    c.ok("/mock fault fail pattern=\"^/disk remove\" times=1 message=\"failure: disk is in use\" exit-status=0")
        .await;
    c.ok("/mock fault latency pattern=print min=1ms max=2ms")
        .await;
    // (The listing quotes the failure message, so `ok`'s failure check does not apply.)
    let faults = c.run("/mock fault print").await.unwrap().stdout;
    assert!(faults.contains("fail exit-status=0"), "{faults}");
    assert!(faults.contains("latency"), "{faults}");
    let out = c.run("/disk remove [find slot=pvc-nofile]").await.unwrap();
    assert_eq!(
        (out.exit, out.stdout.as_str()),
        (Some(0), "failure: disk is in use\r\n")
    );
    c.ok("/mock fault clear").await;
    assert_eq!(c.ok("/mock fault print").await, "no faults set\r\n");

    c.ok("/mock fault hang pattern=never-matches").await;
    c.ok("/mock fault drop pattern=never-matches times=3").await;
    c.ok("/mock fault refuse-connections enabled=no").await;
    c.ok("/mock fault stall-handshake enabled=no").await;
    let bad = c.run("/mock fault fail pattern=\"(\"").await.unwrap();
    assert!(bad.stdout.starts_with("failure: bad pattern"), "{bad:?}");

    let hist = c.ok("/mock history count=2").await;
    assert_eq!(hist.lines().count(), 2, "{hist}");
    assert!(hist.contains("/mock fault stall-handshake"), "{hist}");

    c.ok("/mock reset").await;
    assert!(rds.disks().is_empty() && rds.files().is_empty());
    assert_eq!(c.ok("/mock fault print").await, "no faults set\r\n");

    // /mock commands bypass faults, so a person can always undo one.
    rds.inject(Fault::Fail {
        pattern: "".into(),
        times: None,
        message: "failure: x".into(),
        exit_status: 1,
    });
    c.ok("/mock fault clear").await;
    c.ok("/system identity print").await;

    // drop-connections cuts this very connection after replying.
    c.ok("/mock drop-connections").await;
    assert!(eventually(WAIT, || c.is_closed()).await);
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_helpers_from_rust_and_reset() {
    let data = tempfile::tempdir().unwrap();
    let rds = common::start_with(|c| c.data_dir = Some(data.path().to_path_buf())).await;
    rds.add_orphan_file("/storage-pool/metal-csi/pvc-x.img", 4096);
    rds.add_orphan_disk("pvc-y", "/storage-pool/metal-csi/pvc-y.img", 1 << 20);
    assert!(data
        .path()
        .join("storage-pool/metal-csi/pvc-x.img")
        .exists());
    let c = Client::connect(rds.addr()).await.unwrap();
    let listed = c.ok("/disk print detail where slot=pvc-y").await;
    assert!(
        listed.contains("nqn.2000-02.com.mikrotik:pvc-y"),
        "{listed}"
    );
    rds.remove_file("/storage-pool/metal-csi/pvc-x.img");
    assert!(!data
        .path()
        .join("storage-pool/metal-csi/pvc-x.img")
        .exists());
    rds.reset();
    assert!(rds.disks().is_empty());
    assert!(rds.history().is_empty());
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_adds_of_distinct_slots_over_8_connections_all_land() {
    let rds = start().await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Arc::new(Client::connect(rds.addr()).await.unwrap()));
    }
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = clients[i % 8].clone();
        tasks.push(tokio::spawn(async move {
            c.run(&add_cmd(&format!("pvc-{i}"), "1G")).await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap().unwrap();
        assert_eq!(out.exit, Some(0), "{out:?}");
        assert_eq!(out.stdout, "");
    }
    assert_eq!(rds.disks().len(), 64);
    let listed = clients[0]
        .ok("/disk print detail where slot~\"^pvc-\"")
        .await;
    assert_eq!(listed.matches("type=file").count(), 64);
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_adds_of_one_slot_give_exactly_one_success() {
    let rds = start().await;
    let mut tasks = Vec::new();
    let clients: Vec<Arc<Client>> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Arc::new(Client::connect(rds.addr()).await.unwrap()));
        }
        v
    };
    for i in 0..16 {
        let c = clients[i % 4].clone();
        tasks.push(tokio::spawn(async move {
            c.run(&add_cmd("pvc-same", "1G")).await
        }));
    }
    let mut ok = 0;
    let mut dup = 0;
    for t in tasks {
        let out = t.await.unwrap().unwrap();
        match out.exit {
            Some(0) => ok += 1,
            _ if out.stdout.contains("already exists") => dup += 1,
            _ => panic!("unexpected: {out:?}"),
        }
    }
    assert_eq!((ok, dup), (1, 15));
    assert_eq!(rds.disks().len(), 1);
    assert_eq!(rds.free_bytes(), mock_rds::DEFAULT_POOL_SIZE - (1 << 30));
    rds.stop().await;
}
