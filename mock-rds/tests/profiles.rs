//! Each behaviour variant, as a client over SSH sees it.

mod common;

use std::time::Duration;

use common::{add_cmd, eventually, start, start_with, Client, PVC};
use mock_rds::profile::{COPY_DURATION, SESSION_LIMIT};
use mock_rds::{CopyShort, MockRds, Profile};

async fn with(spec: &str) -> (MockRds, Client) {
    let profile = Profile::parse(spec).unwrap();
    let rds = start_with(|c| c.profile = profile).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    (rds, c)
}

fn long_slot() -> String {
    // Long enough that file-path and the NQN do not fit on one line.
    format!("pvc-{}", "0f923194-922a-5dd8-b376-c2c6ccb56dd8")
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_switches_at_run_time_and_rejects_nonsense() {
    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    assert_eq!(c.ok("/mock profile").await, "profile: default\r\n");
    assert_eq!(
        c.ok("/mock profile set=exit-zero,regex-no-anchors").await,
        "profile: exit-zero,regex-no-anchors\r\n"
    );
    assert!(rds.profile().has(mock_rds::Variant::ExitZero));
    let bad = c
        .run("/mock profile set=exit-zero,exit-none")
        .await
        .unwrap();
    assert_eq!(bad.exit, Some(1), "{bad:?}");
    assert!(bad.stdout.contains("cannot be combined"), "{bad:?}");
    c.ok("/mock profile set=default").await;
    assert_eq!(rds.profile(), Profile::default());
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrap_hyphen_starts_continuations_with_a_hyphen() {
    let (rds, c) = with("wrap-hyphen").await;
    c.ok(&add_cmd(&long_slot(), "1G")).await;
    let out = c.ok("/disk print detail where slot~\"pvc\"").await;
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("-") && l.starts_with("   ")),
        "{out}"
    );
    assert!(out.lines().all(|l| l.len() <= 81), "{out}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trailing_spaces_end_lines_broken_between_tokens() {
    let (rds, c) = with("wrap-trailing-space").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    let out = c.ok("/disk print detail where slot~\"pvc\"").await;
    assert!(out.contains(" \r\n"), "{out:?}");
    let files = c.ok("/file print detail").await;
    assert!(files.contains(" \r\n"), "{files:?}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn digit_groups_can_be_cut_across_lines() {
    let (rds, c) = with("wrap-digit-groups").await;
    // Some slot length puts the size's digit groups across a line end.
    let mut seen = false;
    for n in 1..40 {
        let slot = format!("v{}", "a".repeat(n));
        c.ok(&add_cmd(&slot, "50G")).await;
        let out = c
            .ok(&format!("/disk print detail where slot=\"{slot}\""))
            .await;
        seen |= out.lines().any(|l| {
            let t = l.trim_start();
            l.starts_with("    ") && t.starts_with(|ch: char| ch.is_ascii_digit())
        });
    }
    assert!(seen, "no size was cut between digit groups");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terse_is_one_line_or_a_syntax_error() {
    let (rds, c) = with("terse-supported").await;
    c.ok(&add_cmd(&long_slot(), "1G")).await;
    let out = c.ok("/disk print terse").await;
    assert!(!out.contains("Flags:"), "{out}");
    assert_eq!(
        out.lines().count(),
        2,
        "pool + one disk, one line each: {out}"
    );
    rds.stop().await;

    let (rds, c) = with("terse-error").await;
    let out = c.run("/disk print terse").await.unwrap();
    assert!(out.stdout.starts_with("syntax error"), "{out:?}");
    rds.stop().await;

    let rds = start().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    let out = c.run("/disk print terse").await.unwrap();
    assert!(out.stdout.starts_with("expected end of command"), "{out:?}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_status_variants() {
    let (rds, c) = with("exit-zero").await;
    let out = c.run("/disk remove nothing-here").await.unwrap();
    assert_eq!(out.exit, Some(0));
    assert_eq!(out.stdout, "failure: no such item\r\n");
    rds.stop().await;

    let (rds, c) = with("exit-none").await;
    let out = c.run("/disk remove nothing-here").await.unwrap();
    assert_eq!(out.exit, None, "{out:?}");
    assert_eq!(out.stdout, "failure: no such item\r\n");
    // Success still carries its status.
    assert_eq!(c.run("/disk print").await.unwrap().exit, Some(0));
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn error_text_variants() {
    let (rds, c) = with("errors-bare").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    let dup = c
        .run(&add_cmd("other", "1G").replace("other.img", &format!("{PVC}.img")))
        .await;
    assert_eq!(dup.unwrap().stdout, "file already exists\r\n");
    let pool = c.run("/disk remove storage-pool").await.unwrap();
    assert_eq!(pool.stdout, "disk is in use\r\n");
    let bad = c.run(&add_cmd("x", "lots")).await.unwrap();
    assert_eq!(bad.stdout, "invalid parameter\r\n");
    rds.stop().await;

    let (rds, c) = with("errors-unknown").await;
    let out = c.run("/disk remove nothing-here").await.unwrap();
    assert_eq!(out.stdout, "command rejected: no such item\r\n");
    // /mock commands keep their plain texts.
    let out = c.run("/mock fault nonsense").await.unwrap();
    assert!(out.stdout.starts_with("input does not match"), "{out:?}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serialised_opens_leave_a_burst_unanswered() {
    let (rds, _) = with("sessions-serial-open").await;
    let burst = 3 * SESSION_LIMIT;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(std::sync::Arc::new(
            Client::connect(rds.addr()).await.unwrap(),
        ));
    }
    // Opens on several connections at once: more pending opens than the RDS serves.
    let opens: Vec<_> = (0..burst)
        .map(|i| {
            let c = clients[i % 2].clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), c.handle().channel_open_session())
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut answered = 0;
    for o in opens {
        answered += usize::from(o.await.unwrap());
    }
    assert!(
        answered >= 1 && answered < burst,
        "{answered} of {burst} answered"
    );
    // Opened one after another, every one is answered.
    let c = Client::connect(rds.addr()).await.unwrap();
    for _ in 0..burst {
        c.ok("/system identity print").await;
    }
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_cap_refuses_channels_over_the_limit() {
    let (rds, c) = with("sessions-cap").await;
    let mut held = Vec::new();
    for _ in 0..SESSION_LIMIT {
        held.push(c.handle().channel_open_session().await.unwrap());
    }
    assert!(c.handle().channel_open_session().await.is_err());
    let first = held.remove(0);
    first.close().await.unwrap();
    // Once one closes, a new one is accepted.
    let mut reopened = false;
    for _ in 0..200 {
        if c.handle().channel_open_session().await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reopened);
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_lock_runs_one_command_at_a_time() {
    let (rds, c) = with("cli-lock").await;
    let c = std::sync::Arc::new(c);
    let started = std::time::Instant::now();
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.ok(&add_cmd(&format!("v{i}"), "1G")).await })
        })
        .collect();
    for r in runs {
        r.await.unwrap();
    }
    // Four adds of 30 ms each, one after another.
    assert!(started.elapsed() >= Duration::from_millis(120));
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clock_variants_print_local_time_and_offset() {
    for (spec, offset, zone) in [
        ("default", "+00:00", "UTC"),
        ("clock-west", "-08:00", "America/Los_Angeles"),
        ("clock-east", "+13:00", "Pacific/Tongatapu"),
    ] {
        let profile = Profile::parse(spec).unwrap();
        let rds = start_with(|c| {
            c.profile = profile;
            c.fixed_time = Some(1_762_879_627); // 2025-11-11 16:47:07 UTC
        })
        .await;
        let c = Client::connect(rds.addr()).await.unwrap();
        let clock = c.ok("/system clock print").await;
        assert!(clock.contains(&format!("gmt-offset: {offset}")), "{clock}");
        assert!(
            clock.contains(&format!("time-zone-name: {zone}")),
            "{clock}"
        );
        c.ok("/mock orphan-file path=/storage-pool/x.img size=1")
            .await;
        let files = c.ok("/file print detail").await;
        let want = match spec {
            "clock-west" => "2025-11-11 08:47:07",
            "clock-east" => "2025-11-12 05:47:07",
            _ => "2025-11-11 16:47:07",
        };
        assert!(files.contains(want), "{spec}: {files}");
        assert!(clock.contains(&format!("date: {}", &want[..10])), "{clock}");
        rds.stop().await;
    }
}

fn copy_cmd(src: &str, dst: &str, extra: &str) -> String {
    format!(
        "/disk add type=file copy-from=[find slot=\"{src}\"] \
         file-path=\"/storage-pool/metal-csi/{dst}.img\" slot=\"{dst}\"{extra}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn async_copies_grow_and_stop_with_their_connection() {
    let (rds, c) = with("copy-async").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    c.ok(&copy_cmd(PVC, "snap-1", "")).await;
    let path = "/storage-pool/metal-csi/snap-1.img";
    assert_eq!(rds.disk("snap-1").unwrap().file_size, 1 << 30);
    assert!(rds.file(path).unwrap().size < 1 << 30, "copy done at once");
    // Busy while copying.
    let busy = c.run("/disk remove [find slot=\"snap-1\"]").await.unwrap();
    assert_eq!(busy.stdout, "failure: disk is busy\r\n");
    assert!(
        eventually(COPY_DURATION * 3, || rds.file(path).unwrap().size
            == 1 << 30)
        .await,
        "copy never finished"
    );

    // A copy whose connection closes stops short.
    let c2 = Client::connect(rds.addr()).await.unwrap();
    c2.ok(&copy_cmd(PVC, "snap-2", "")).await;
    drop(c2);
    let path2 = "/storage-pool/metal-csi/snap-2.img";
    tokio::time::sleep(COPY_DURATION * 2).await; // waiting out a copy that must not finish
    assert!(rds.file(path2).unwrap().size < 1 << 30);
    assert!(rds.disk("snap-2").is_some());
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_size_and_export_variants() {
    let (rds, c) = with("copy-ignores-size,copy-inherits-export").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    c.ok(&copy_cmd(PVC, "big", " file-size=2G")).await;
    assert_eq!(rds.disk("big").unwrap().file_size, 1 << 30);
    let inherited = rds.disk("big").unwrap();
    assert!(inherited.nvme_tcp_export);
    assert_eq!(
        inherited.nvme_tcp_server_nqn.as_deref(),
        Some(format!("nqn.2000-02.com.mikrotik:{PVC}").as_str())
    );
    c.ok(&copy_cmd(PVC, "snap", " nvme-tcp-export=no")).await;
    assert!(!rds.disk("snap").unwrap().nvme_tcp_export);
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_are_not_created_by_disk_add() {
    let (rds, c) = with("dirs-no-create").await;
    let out = c.run(&add_cmd(PVC, "1G")).await.unwrap();
    assert!(out.stdout.contains("no such directory"), "{out:?}");
    assert!(rds.disk(PVC).is_none());
    c.ok("/file add type=directory name=storage-pool/metal-csi")
        .await;
    c.ok(&add_cmd(PVC, "1G")).await;
    assert!(rds.disk(PVC).is_some());
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anchored_patterns_match_nothing() {
    let (rds, c) = with("regex-no-anchors").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    let anchored = c
        .ok("/file print detail where name~\"^storage-pool/metal-csi/\"")
        .await;
    assert!(anchored.is_empty(), "{anchored}");
    let plain = c
        .ok("/file print detail where name~\"storage-pool/metal-csi/\"")
        .await;
    assert!(plain.contains(PVC), "{plain}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resize_variants() {
    let (rds, c) = with("resize-refused-exported").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    let set = format!("/disk set [find slot=\"{PVC}\"] file-size=2G");
    let refused = c.run(&set).await.unwrap();
    assert!(refused.stdout.contains("exported"), "{refused:?}");
    c.ok(&format!(
        "/disk set [find slot=\"{PVC}\"] nvme-tcp-export=no"
    ))
    .await;
    c.ok(&set).await;
    assert_eq!(rds.disk(PVC).unwrap().file_size, 2 << 30);
    rds.stop().await;

    let (rds, c) = with("resize-delayed").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    c.ok(&set).await;
    assert_eq!(rds.disk(PVC).unwrap().file_size, 1 << 30, "shown at once");
    assert!(
        eventually(Duration::from_secs(3), || rds.disk(PVC).unwrap().file_size
            == 2 << 30)
        .await
    );
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_allow_host_the_property_is_neither_shown_nor_taken() {
    let (rds, c) = with("no-allow-host").await;
    c.ok(&add_cmd(PVC, "1G")).await;
    let print = c.ok("/disk print detail").await;
    assert!(print.contains(PVC), "{print}");
    assert!(!print.contains("allow-host"), "{print}");
    let host = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000000";
    let set = c
        .run(&format!(
            "/disk set [find slot=\"{PVC}\"] nvme-tcp-server-allow-host-name=\"{host}\""
        ))
        .await
        .unwrap();
    assert!(set.stdout.contains("expected end of command"), "{set:?}");
    let add = c
        .run(&format!(
            "{} nvme-tcp-server-allow-host-name=\"{host}\"",
            add_cmd("pvc-other", "1G")
        ))
        .await
        .unwrap();
    assert!(add.stdout.contains("expected end of command"), "{add:?}");
    assert!(rds.disk("pvc-other").is_none());
    assert_eq!(rds.disk(PVC).unwrap().nvme_tcp_server_allow_host_name, "");
    rds.stop().await;
}

fn put_size(name: &str) -> String {
    format!(":put [/file get [find name=\"{name}\"] size]")
}

const SNAP_FILE: &str = "storage-pool/metal-csi/snap-1.img";
const SHORT_10G: u64 = (10 << 30) - (40 << 20);

/// `:put [/file get ... size]` gives the exact bytes `/file print` rounds; the variants refuse
/// scripts or print the rounded size, and an item that is not there is an error.
#[tokio::test(flavor = "multi_thread")]
async fn scripts_print_exact_file_sizes_or_are_refused() {
    let (rds, c) = with("default").await;
    c.ok(&add_cmd(PVC, "10G")).await;
    rds.stop_next_copy_short(CopyShort {
        by: 40 << 20,
        resume: None,
    });
    c.ok(&copy_cmd(PVC, "snap-1", "")).await;
    assert_eq!(c.ok(&put_size(SNAP_FILE)).await, format!("{SHORT_10G}\r\n"));
    let listed = c
        .ok(&format!("/file print detail where name=\"{SNAP_FILE}\""))
        .await;
    assert!(listed.contains("size=10.0GiB"), "rounds to whole: {listed}");
    assert_eq!(rds.disk("snap-1").unwrap().file_size, 10 << 30);
    let plain = format!(":put [/file/get \"storage-pool/metal-csi/{PVC}.img\" size]");
    assert_eq!(c.ok(&plain).await, format!("{}\r\n", 10u64 << 30));
    let missing = c.run(&put_size("storage-pool/nothing.img")).await.unwrap();
    assert_eq!(missing.exit, Some(1), "{missing:?}");
    assert_eq!(missing.stdout, "invalid internal item number\r\n");
    let other = c.run(":put [/file get x colour]").await.unwrap();
    assert!(
        other.stdout.starts_with("invalid internal item"),
        "{other:?}"
    );
    rds.stop().await;

    let (rds, c) = with("scripting-refused").await;
    c.ok(&add_cmd(PVC, "10G")).await;
    let refused = c
        .run(&put_size(&format!("storage-pool/metal-csi/{PVC}.img")))
        .await
        .unwrap();
    assert_eq!(refused.exit, Some(1), "{refused:?}");
    assert_eq!(refused.stdout, "bad command name put (line 1 column 2)\r\n");
    rds.stop().await;

    let (rds, c) = with("put-human-size").await;
    c.ok(&add_cmd(PVC, "10G")).await;
    let human = c
        .ok(&put_size(&format!("storage-pool/metal-csi/{PVC}.img")))
        .await;
    assert_eq!(human, "10.0GiB\r\n");
    rds.stop().await;
}

/// A create in one exec: the file checked with a count, the disk added, read back.
fn create_script(slot: &str) -> String {
    let file = format!("storage-pool/metal-csi/{slot}.img");
    format!(
        ":if ([:len [/file find name=\"{file}\"]] = 0) do={{{}}} else={{:put \"rds-csi:file-exists\"}}; \
         :put \"rds-csi:disk\"; /disk print detail where slot=\"{slot}\"",
        add_cmd(slot, "1G")
    )
}

/// Statements joined by `;` run in turn, `:if` takes one branch by a `find` count, and a
/// failing statement ends the script with its error after what ran before it. The variants
/// refuse scripts, or print only what `:put` prints.
#[tokio::test(flavor = "multi_thread")]
async fn scripts_run_in_order_branch_on_counts_and_stop_at_a_failure() {
    let (rds, c) = with("default").await;
    let made = c.run(&create_script(PVC)).await.unwrap();
    assert_eq!(made.exit, Some(0), "{made:?}");
    let (marker, listing) = made.stdout.split_once("\r\n").unwrap();
    assert_eq!(marker, "rds-csi:disk");
    assert!(listing.contains(&format!("slot=\"{PVC}\"")), "{made:?}");
    assert!(rds.disk(PVC).is_some());

    // The file is there now: the other branch, and the disk as it is.
    let again = c.ok(&create_script(PVC)).await;
    assert!(
        again.starts_with("rds-csi:file-exists\r\nrds-csi:disk\r\n"),
        "{again}"
    );

    // A failure stops the script: nothing after it runs, what ran before stays printed.
    let failed = c
        .run(&format!(
            ":put \"before\"; {}; :put \"after\"",
            add_cmd("pvc-big", "99T")
        ))
        .await
        .unwrap();
    assert_eq!(failed.exit, Some(1), "{failed:?}");
    assert_eq!(failed.stdout, "before\r\nfailure: not enough space\r\n");
    assert!(rds.disk("pvc-big").is_none());

    let bad = c.run(":if ([:size [/disk find]] = 0) do={}").await.unwrap();
    assert_eq!(
        bad.stdout, "bad command name size (line 1 column 8)\r\n",
        "{bad:?}"
    );
    let unclosed = c.run(":put \"a\"; :if (").await.unwrap();
    assert!(unclosed.stdout.starts_with("syntax error"), "{unclosed:?}");
    rds.stop().await;

    let (rds, c) = with("script-quiet-print").await;
    let quiet = c.ok(&create_script(PVC)).await;
    assert_eq!(
        quiet, "rds-csi:disk\r\n",
        "the listing inside the script is not shown"
    );
    assert!(rds.disk(PVC).is_some(), "but the add ran");
    rds.stop().await;

    let (rds, c) = with("scripting-refused").await;
    let refused = c.run(&create_script(PVC)).await.unwrap();
    assert_eq!(refused.exit, Some(1), "{refused:?}");
    assert_eq!(refused.stdout, "bad command name if (line 1 column 2)\r\n");
    let sequence = c.run("/disk print; /file print").await.unwrap();
    assert_eq!(
        sequence.stdout,
        "expected end of command (line 1 column 12)\r\n"
    );
    assert!(rds.disk(PVC).is_none());
    rds.stop().await;
}

/// Under `copy-async` a copy armed with `/mock copy-short` stops short by less than the display
/// rounds (the disk keeps its full size), or stands still and then finishes.
#[tokio::test(flavor = "multi_thread")]
async fn async_copies_can_stop_short_or_pause_before_their_end() {
    let (rds, c) = with("copy-async").await;
    c.ok(&add_cmd(PVC, "10G")).await;
    c.ok("/mock copy-short by=40M").await;
    c.ok(&copy_cmd(PVC, "snap-1", "")).await;
    let path = format!("/{SNAP_FILE}");
    assert!(
        eventually(COPY_DURATION * 3, || rds.file(&path).unwrap().size
            == SHORT_10G)
        .await,
        "the copy never reached its short end"
    );
    // No longer copying: the disk is not busy, and the file stays short.
    c.ok("/disk print").await;
    let remove = c.run("/disk remove [find slot=\"snap-1\"]").await.unwrap();
    assert_eq!(remove.exit, Some(0), "{remove:?}");
    assert_eq!(rds.file(&path).unwrap().size, SHORT_10G);
    c.ok(&format!("/file remove [find name=\"{SNAP_FILE}\"]"))
        .await;

    // 1.5 TiB stopping 3 GiB short, in the model only (no data directory): rounds to 1.5TiB.
    let big = "pvc-big";
    c.ok(&add_cmd(big, "1536G")).await;
    rds.stop_next_copy_short(CopyShort {
        by: 3 << 30,
        resume: Some(Duration::from_millis(600)),
    });
    c.ok(&copy_cmd(big, "snap-2", "")).await;
    let path2 = "/storage-pool/metal-csi/snap-2.img";
    let short = (1536u64 << 30) - (3 << 30);
    assert!(
        eventually(COPY_DURATION * 3, || rds.file(path2).unwrap().size == short).await,
        "the copy never paused short"
    );
    let shown = c
        .ok("/file print detail where name=\"storage-pool/metal-csi/snap-2.img\"")
        .await;
    assert!(shown.contains("size=1.5TiB"), "{shown}");
    assert!(
        eventually(COPY_DURATION * 3, || rds.file(path2).unwrap().size
            == 1536 << 30)
        .await,
        "the paused copy never finished"
    );
    rds.stop().await;
}
