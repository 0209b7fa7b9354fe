//! Each command over real SSH, in both output modes.

mod common;

use common::{add_cmd, start, start_with, Client, PVC};
use mock_rds::{Config, FileKind, MockRds, OutputMode};

fn flat(s: &str) -> String {
    // Undo routeros wrapping for substring checks (continuation lines start with spaces).
    s.replace("\r\n", "\n")
        .split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn add_print_remove_round_trip() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    assert_eq!(c.ok(&add_cmd(PVC, "10G")).await, "");

    let d = rds.disk(PVC).expect("disk created");
    assert_eq!(d.file_size, 10 << 30);
    assert_eq!(d.file_path, format!("/storage-pool/metal-csi/{PVC}.img"));
    assert!(d.nvme_tcp_export);
    assert_eq!(d.nvme_tcp_server_port, Some(4420));
    assert_eq!(
        d.nvme_tcp_server_nqn.as_deref(),
        Some(format!("nqn.2000-02.com.mikrotik:{PVC}").as_str())
    );

    // Unquoted and quoted values select the same disk.
    let a = c.ok(&format!("/disk print detail where slot={PVC}")).await;
    let b = c
        .ok(&format!("/disk print detail where slot=\"{PVC}\""))
        .await;
    assert_eq!(a, b);
    let f = flat(&a);
    assert!(f.contains(&format!("slot=\"{PVC}\"")), "{a}");
    assert!(f.contains("size=10 737 418 240"), "{a}");
    assert!(f.contains("file-size=10.0GiB"), "{a}");
    assert!(a.starts_with("Flags: "));
    assert!(a.contains("\r\n 0         t   type=file "), "{a:?}");
    for banned in ["status", "source-volume", "creation-time"] {
        assert!(!a.contains(banned), "{banned} in {a}");
    }

    assert_eq!(c.ok(&format!("/disk remove [find slot={PVC}]")).await, "");
    assert!(rds.disk(PVC).is_none());
    // RouterOS keeps the backing file after /disk remove.
    let path = format!("/storage-pool/metal-csi/{PVC}.img");
    assert_eq!(rds.file(&path).map(|f| f.size), Some(10 << 30));
    // Not found: the legend and nothing else.
    let gone = c.ok(&format!("/disk print detail where slot={PVC}")).await;
    assert!(
        gone.starts_with("Flags: ") && !gone.contains(" 0 "),
        "{gone}"
    );
    // Removing again is a silent no-op (empty find).
    assert_eq!(c.ok(&format!("/disk remove [find slot={PVC}]")).await, "");

    let name = format!("storage-pool/metal-csi/{PVC}.img");
    assert_eq!(
        c.ok(&format!("/file remove [find name=\"{name}\"]")).await,
        ""
    );
    assert!(rds.file(&path).is_none());
    assert_eq!(
        c.ok(&format!("/file remove [find name=\"{name}\"]")).await,
        ""
    );
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn where_filters_use_real_regexes_and_and() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    for slot in ["pvc-a", "pvc-b", "other"] {
        c.ok(&add_cmd(slot, "1G")).await;
    }
    c.ok("/disk add type=file copy-from=[find slot=pvc-a] file-path=/storage-pool/metal-csi/snap-a.img slot=snap-a")
        .await;
    let count = |s: &str| s.matches("type=file").count();
    assert_eq!(
        count(&c.ok("/disk print detail where slot~\"pvc\"").await),
        2
    );
    assert_eq!(
        count(
            &c.ok("/disk print detail where slot~\"^(pvc-b|other)$\"")
                .await
        ),
        2
    );
    assert_eq!(
        count(&c.ok("/disk print detail where slot~\"snap-\"").await),
        1
    );
    assert_eq!(
        count(
            &c.ok("/disk print detail where slot~\"pvc\" and slot=pvc-b")
                .await
        ),
        1
    );
    assert_eq!(
        count(&c.ok("/disk print detail where nvme-tcp-export=no").await),
        1,
        "the snapshot (the pool is type=raid)"
    );
    assert_eq!(
        count(&c.ok("/disk print detail where file-size=1G").await),
        4
    );
    assert_eq!(
        count(
            &c.ok("/disk print detail where slot!=other and type=file")
                .await
        ),
        3
    );
    // All disks: the pool plus four file disks, numbered from 0.
    let all = c.ok("/disk print detail").await;
    assert!(all.contains("\r\n 4  "), "{all}");
    let bad = c.run("/disk print detail where slot~\"(\"").await.unwrap();
    assert_eq!(bad.exit, Some(1));
    assert!(bad.stdout.starts_with("failure: "), "{bad:?}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_use_routeros_texts() {
    let rds = start_with(|c| c.pool_size = 100 << 30).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok(&add_cmd("pvc-1", "10G")).await;

    let cases = [
        (add_cmd("pvc-1", "1G"), "failure: disk with such slot already exists\r\n"),
        (add_cmd("pvc-2", "200G"), "failure: not enough space\r\n"),
        (
            "/disk add type=file copy-from=[find slot=nope] file-path=/storage-pool/s.img slot=s"
                .to_string(),
            "failure: no such item\r\n",
        ),
        (
            "/disk set [find slot=pvc-1] file-size=1G".to_string(),
            "failure: file-size can not be decreased\r\n",
        ),
        (
            "/disk set [find slot=pvc-1] file-size=1T".to_string(),
            "failure: not enough space\r\n",
        ),
        ("/disk set nope file-size=20G".to_string(), "failure: no such item\r\n"),
        ("/disk remove nope".to_string(), "failure: no such item\r\n"),
        ("/disk remove storage-pool".to_string(), "failure: disk is in use\r\n"),
        ("/foo bar".to_string(), "bad command name foo (line 1 column 2)\r\n"),
        (
            "/disk print detail bogus".to_string(),
            "expected end of command (line 1 column 20)\r\n",
        ),
        (
            "/disk add type=file bogus=1".to_string(),
            "expected end of command (line 1 column 21)\r\n",
        ),
        ("/disk print where slot=\"x".to_string(), "syntax error (line 1 column 24)\r\n"),
        (
            add_cmd("pvc-3", "lots"),
            "invalid value for argument file-size\r\n",
        ),
        (
            "/disk add type=file file-path=/elsewhere/x.img file-size=1G slot=x".to_string(),
            "failure: file-path is not on a mounted disk\r\n",
        ),
        (
            "/disk add type=file file-path=/storage-pool/../x.img file-size=1G slot=x".to_string(),
            "failure: invalid file-path\r\n",
        ),
        (
            "/disk add type=file file-path=/storage-pool/x.img file-size=1G nvme-tcp-export=maybe"
                .to_string(),
            "input does not match any value of nvme-tcp-export\r\n",
        ),
        (
            "/disk add type=file file-path=/storage-pool/metal-csi/pvc-1.img file-size=1G slot=pvc-9".to_string(),
            "failure: file is already used by another disk\r\n",
        ),
        ("/disk monitor-traffic storage-pool".to_string(), "failure: monitor-traffic streams until interrupted; add \"once\"\r\n"),
        ("/disk monitor-traffic nope once".to_string(), "failure: no such item\r\n"),
    ];
    for (cmd, want) in cases {
        let out = c.run(&cmd).await.unwrap();
        assert_eq!(out.stdout, want, "{cmd}");
        assert_eq!(out.exit, Some(1), "{cmd}");
    }
    // None of the failures changed anything.
    assert_eq!(rds.disks().len(), 1);
    assert_eq!(rds.disk("pvc-1").unwrap().file_size, 10 << 30);

    // An orphan file blocks a new disk at the same path.
    rds.add_orphan_file("/storage-pool/metal-csi/pvc-4.img", 1 << 20);
    let out = c.run(&add_cmd("pvc-4", "1G")).await.unwrap();
    assert_eq!(out.stdout, "failure: file already exists\r\n");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn error_exit_status_is_configurable() {
    let rds = start_with(|c| c.error_exit_status = 0).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    let out = c.run("/disk remove nope").await.unwrap();
    assert_eq!(out.exit, Some(0));
    assert_eq!(out.stdout, "failure: no such item\r\n");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn set_grows_and_capacity_follows() {
    let rds = start_with(|c| c.pool_size = 100 << 30).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    let cap = || async {
        flat(
            &c.ok("/disk print detail where mount-point=\"storage-pool\"")
                .await,
        )
    };
    let before = cap().await;
    assert!(
        before.contains("size=107 374 182 400 free=107 374 182 400 use=0%"),
        "{before}"
    );

    c.ok(&add_cmd("pvc-1", "10G")).await;
    c.ok("/disk set [find slot=pvc-1] file-size=25G").await;
    // Equal size is a no-op, not an error; plain bytes work too.
    c.ok(&format!(
        "/disk set [find slot=\"pvc-1\"] file-size={}",
        25u64 << 30
    ))
    .await;
    assert_eq!(rds.disk("pvc-1").unwrap().file_size, 25 << 30);
    assert_eq!(
        rds.file("/storage-pool/metal-csi/pvc-1.img").unwrap().size,
        25 << 30
    );
    let after = cap().await;
    assert!(after.contains("free=80 530 636 800 use=25%"), "{after}");
    assert!(after.contains("slot=\"storage-pool\""), "{after}");
    assert_eq!(rds.free_bytes(), 75 << 30);
    // Empty find: silent no-op.
    c.ok("/disk set [find slot=nope] file-size=1G").await;
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_and_restore_with_copy_from() {
    let data = tempfile::tempdir().unwrap();
    let rds = start_with(|c| c.data_dir = Some(data.path().to_path_buf())).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok(&add_cmd("pvc-src", "64M")).await;
    let src_host = data.path().join("storage-pool/metal-csi/pvc-src.img");
    assert_eq!(std::fs::metadata(&src_host).unwrap().len(), 64 << 20);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&src_host)
            .unwrap();
        f.seek(SeekFrom::Start(12345)).unwrap();
        f.write_all(b"payload").unwrap();
    }

    // Snapshot: no file-size, no export; both quoting styles of copy-from.
    c.ok("/disk add type=file copy-from=[find slot=pvc-src] file-path=/storage-pool/metal-csi/snap-1.img slot=snap-1")
        .await;
    let snap = rds.disk("snap-1").unwrap();
    assert_eq!(snap.file_size, 64 << 20);
    assert!(!snap.nvme_tcp_export);
    assert_eq!(snap.nvme_tcp_server_port, None);
    assert_eq!(snap.nvme_tcp_server_nqn, None);
    assert_eq!(snap.copied_from.as_deref(), Some("pvc-src"));
    let p = flat(&c.ok("/disk print detail where slot=snap-1").await);
    assert!(p.contains("nvme-tcp-export=no iscsi-export=no"), "{p}");
    assert!(!p.contains("nvme-tcp-server-"), "{p}");

    // Restore into a bigger, exported volume.
    c.ok(
        "/disk add type=file copy-from=[find slot=\"snap-1\"] file-path=\"/storage-pool/metal-csi/pvc-new.img\" file-size=128M slot=\"pvc-new\" nvme-tcp-export=yes nvme-tcp-server-port=4420 nvme-tcp-server-nqn=\"nqn.2000-02.com.mikrotik:pvc-new\"",
    )
    .await;
    let new = rds.disk("pvc-new").unwrap();
    assert_eq!(new.file_size, 128 << 20);
    assert!(new.nvme_tcp_export);
    let bytes = std::fs::read(data.path().join("storage-pool/metal-csi/pvc-new.img")).unwrap();
    assert_eq!(bytes.len(), 128 << 20);
    assert_eq!(&bytes[12345..12352], b"payload");
    drop(bytes);

    // Grow makes the real file bigger; /disk remove keeps it; /file remove deletes it.
    c.ok("/disk set [find slot=pvc-new] file-size=192M").await;
    let new_host = data.path().join("storage-pool/metal-csi/pvc-new.img");
    assert_eq!(std::fs::metadata(&new_host).unwrap().len(), 192 << 20);
    c.ok("/disk remove [find slot=pvc-new]").await;
    assert!(new_host.exists());
    c.ok("/file remove [find name=\"storage-pool/metal-csi/pvc-new.img\"]")
        .await;
    assert!(!new_host.exists());
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn file_print_lists_directories_and_files() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok(&add_cmd("pvc-1", "1G")).await;
    rds.add_orphan_file("/storage-pool/other/x.bin", 2048);
    let out = c
        .ok("/file print detail where name~\"storage-pool/metal-csi\"")
        .await;
    let f = flat(&out);
    assert!(
        f.contains("name=storage-pool/metal-csi type=directory last-modified="),
        "{out}"
    );
    assert!(
        f.contains(
            "name=storage-pool/metal-csi/pvc-1.img type=.img file size=1024.0MiB last-modified="
        ),
        "{out}"
    );
    assert!(!f.contains("other"), "{out}");
    let exact = c
        .ok("/file print detail where name=\"storage-pool/other/x.bin\"")
        .await;
    assert!(
        flat(&exact).contains("type=.bin file size=2.0KiB"),
        "{exact}"
    );
    assert_eq!(c.ok("/file print detail where name~\"nothing\"").await, "");
    let anchored = c
        .ok("/file print detail where name~\"^storage-pool/metal-csi/\"")
        .await;
    assert_eq!(anchored.matches("name=").count(), 1, "{anchored}");
    let kinds: Vec<FileKind> = rds.files().iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == FileKind::Directory).count(),
        2
    );
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_traffic_and_system_commands() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    let m = c.ok("/disk monitor-traffic storage-pool once").await;
    assert!(
        m.starts_with("                  slot:    storage-pool\r\n"),
        "{m:?}"
    );
    assert!(m.contains("           write-bytes: 515 659 673 600\r\n"));
    // The driver quotes every value, positional ones included.
    assert_eq!(c.ok("/disk monitor-traffic \"storage-pool\" once").await, m);
    assert_eq!(c.ok("/system identity print").await, "  name: RDS\r\n");
    let r = c.ok("/system resource print").await;
    assert!(r.contains("version: 7.16"), "{r}");
    assert!(r.contains("uptime: "), "{r}");
    // A bare menu changes context only.
    assert_eq!(c.ok("/disk").await, "");
    // RouterOS 7 slash paths and relative paths work too.
    assert_eq!(
        c.ok("/disk/print detail").await,
        c.ok("disk print detail").await
    );
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_mode_is_one_line_per_entry_with_lf() {
    let rds = start_with(|c| c.output = OutputMode::Simple).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok(&add_cmd(PVC, "10G")).await;
    let out = c.ok(&format!("/disk print detail where slot={PVC}")).await;
    assert!(!out.contains('\r'));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("0 type=file "), "{out}");
    assert!(out.contains("size=10737418240"), "{out}");
    assert!(out.contains("file-size=10737418240"), "{out}");
    assert!(out.contains(&format!("file-path=/storage-pool/metal-csi/{PVC}.img ")));
    assert_eq!(
        c.run("/foo").await.unwrap().stdout,
        "bad command name foo (line 1 column 2)\n"
    );
    assert_eq!(c.ok("/disk print detail where slot=nope").await, "");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routeros_lines_are_crlf_and_at_most_80_columns() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok(&add_cmd(PVC, "10G")).await;
    let out = c.ok("/disk print detail").await;
    assert!(out.ends_with("\r\n\r\n"));
    for line in out.split_terminator("\r\n") {
        assert!(!line.contains('\n') && !line.contains('\r'));
        assert!(line.len() <= 80, "{line:?}");
    }
    // The unquoted file-path is cut mid-token at exactly 80 columns.
    let cut = out
        .split("\r\n")
        .find(|l| l.trim_start().starts_with("file-path="))
        .unwrap();
    assert_eq!(cut.len(), 80, "{cut:?}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_host_key_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    let rds = MockRds::start(cfg.clone()).await.unwrap();
    let fp = rds.host_key_fingerprint();
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok(&add_cmd("pvc-1", "1G")).await;
    c.ok("/disk remove [find slot=pvc-1]").await;
    c.ok(&add_cmd("pvc-2", "2G")).await;
    rds.stop().await;
    rds.stop().await; // idempotent
    assert!(
        c.run("/disk print").await.is_err(),
        "stop closes live connections"
    );
    let key_file = dir.path().join("ssh_host_ed25519_key");
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    assert!(key_text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));

    let rds2 = MockRds::start(cfg).await.unwrap();
    assert_eq!(rds2.host_key_fingerprint(), fp);
    let host = russh::keys::PublicKey::from_openssh(&rds2.host_public_key_openssh()).unwrap();
    let c2 = Client::connect_with(rds2.addr(), None, Some(host))
        .await
        .unwrap();
    let out = flat(&c2.ok("/disk print detail where type=file").await);
    assert!(out.contains("slot=\"pvc-2\""), "{out}");
    assert!(!out.contains("slot=\"pvc-1\""), "{out}");
    assert!(rds2.file("/storage-pool/metal-csi/pvc-1.img").is_some());
    // Numbering continues: a new disk sorts after the restored ones.
    c2.ok(&add_cmd("pvc-3", "1G")).await;
    let slots: Vec<String> = rds2.disks().into_iter().map(|d| d.slot).collect();
    assert_eq!(slots, vec!["pvc-2", "pvc-3"]);
    rds2.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn authorized_keys_are_enforced() {
    let good = common::new_key();
    let rds =
        start_with(|c| c.auth = mock_rds::Auth::AuthorizedKeys(vec![good.public_key().clone()]))
            .await;
    assert!(
        Client::connect_with(rds.addr(), Some(common::new_key()), None)
            .await
            .is_err()
    );
    let c = Client::connect_with(rds.addr(), Some(good), None)
        .await
        .unwrap();
    assert_eq!(c.ok("/system identity print").await, "  name: RDS\r\n");

    // `none` is only accepted with AnyKey.
    let mut h = russh::client::connect(
        std::sync::Arc::new(russh::client::Config::default()),
        rds.addr(),
        common::Checker::default_any(),
    )
    .await
    .unwrap();
    assert!(!h.authenticate_none("admin").await.unwrap().success());
    rds.stop().await;

    let open = start().await;
    let mut h = russh::client::connect(
        std::sync::Arc::new(russh::client::Config::default()),
        open.addr(),
        common::Checker::default_any(),
    )
    .await
    .unwrap();
    assert!(h.authenticate_none("admin").await.unwrap().success());
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_and_a_refused_env_do_not_break_exec() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    let mut ch = c.handle().channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.set_env(true, "LANG", "C").await.unwrap();
    ch.exec(true, "/system identity print").await.unwrap();
    let mut got = Vec::new();
    let mut exit = None;
    let mut failures = 0;
    while let Some(msg) = ch.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => got.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => exit = Some(exit_status),
            russh::ChannelMsg::Failure => failures += 1,
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert_eq!(String::from_utf8(got).unwrap(), "  name: RDS\r\n");
    assert_eq!(exit, Some(0));
    assert_eq!(failures, 1, "env is refused; a terminal is taken");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_hosts_are_set_printed_and_checked() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    assert_eq!(c.ok(&add_cmd(PVC, "1G")).await, "");
    let shown = |d: &mock_rds::Disk| d.nvme_tcp_server_allow_host_name.clone();
    assert_eq!(shown(&rds.disk(PVC).unwrap()), "");
    let host = "nqn.2014-08.org.nvmexpress:uuid:6a2c0f4e-2b7d-4c55-9a61-0d2b9f3e7a10";
    let set = format!("/disk set [find slot={PVC}] nvme-tcp-server-allow-host-name=\"{host}\"");
    assert_eq!(c.ok(&set).await, "");
    assert_eq!(shown(&rds.disk(PVC).unwrap()), host);
    // Wrapped like any long value: compared without the breaks.
    let printed =
        flat(&c.ok(&format!("/disk print detail where slot={PVC}")).await).replace(' ', "");
    assert!(
        printed.contains(&format!("nvme-tcp-server-allow-host-name=\"{host}\"")),
        "{printed}"
    );
    // Not a host NQN: refused, and nothing changes.
    let bad = format!("/disk set [find slot={PVC}] nvme-tcp-server-allow-host-name=\"a b;c\"");
    let out = c.run(&bad).await.unwrap();
    assert!(out.stdout.contains("invalid value"), "{out:?}");
    assert_ne!(out.exit, Some(0));
    assert_eq!(shown(&rds.disk(PVC).unwrap()), host);
    // Emptied: any host again.
    let clear = format!("/disk set [find slot={PVC}] nvme-tcp-server-allow-host-name=\"\"");
    assert_eq!(c.ok(&clear).await, "");
    assert_eq!(shown(&rds.disk(PVC).unwrap()), "");
    // Without --nvmet there is no kernel target to show.
    let out = c.run("/mock target print").await.unwrap();
    assert!(out.stdout.contains("without --nvmet"), "{out:?}");
}
