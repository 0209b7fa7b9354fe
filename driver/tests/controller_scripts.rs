//! One exec per change where the RDS runs scripts, command by command where it does not, and
//! the same guarantees either way: nothing reused, everything read back, output the driver
//! cannot read after a change is a failure that leaves nothing behind.

mod common;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::{CreateSnapshotRequest, DeleteSnapshotRequest, DeleteVolumeRequest};
use mock_rds::{Disposition, Fault, Profile};
use rstest::rstest;
use tonic::Request;

use common::controller::{create_req, expand_req, fixture, Fixture, BASE, GIB};

/// The execs the mock received (a script's commands are recorded apart, as `Scripted`).
fn execs(f: &Fixture) -> Vec<String> {
    f.mock
        .history()
        .into_iter()
        .filter(|h| h.disposition != Disposition::Scripted)
        .map(|h| h.command)
        .collect()
}

async fn delete(f: &Fixture, id: &str) -> Result<(), tonic::Status> {
    f.svc
        .delete_volume(Request::new(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        }))
        .await
        .map(drop)
}

#[rstest]
// Without scripts, nor `:put`, a copy's size is known only as rounded: it is polled until it
// has stood still for a while, a number of reads set by time, so not counted.
#[case::scripts("default", 1, 2, 2, Some(2))]
#[case::scripts_refused("scripting-refused", 3, 3, 4, None)]
#[case::print_hidden_in_scripts("script-quiet-print", 3, 3, 4, Some(10))]
#[tokio::test(flavor = "multi_thread")]
async fn each_change_takes_one_exec_where_the_rds_runs_scripts(
    #[case] spec: &str,
    #[case] create_execs: usize,
    #[case] expand_execs: usize,
    #[case] delete_execs: usize,
    #[case] snapshot_execs: Option<usize>,
) {
    let f = fixture().await;
    f.mock.set_profile(Profile::parse(spec).unwrap());
    // The first calls also learn what the RDS supports.
    f.create("pvc-learn", GIB).await;
    delete(&f, "pvc-learn").await.unwrap();
    f.mock.clear_history();

    let v = f.create("pvc-counted", GIB).await;
    assert_eq!(execs(&f).len(), create_execs, "{spec}: {:#?}", execs(&f));
    assert_eq!(f.mock.disk("pvc-counted").unwrap().file_size, GIB as u64);
    f.mock.clear_history();

    // The ownership read, then the resize read back (in one script where it runs).
    let grown = f
        .svc
        .controller_expand_volume(Request::new(expand_req(&v.volume_id, 2 * GIB)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 2 * GIB);
    assert_eq!(execs(&f).len(), expand_execs, "{spec}: {:#?}", execs(&f));
    assert_eq!(
        f.mock.disk("pvc-counted").unwrap().file_size,
        2 * GIB as u64
    );
    f.mock.clear_history();

    // Both slots read in one exec, then the copy made, its disk, file and exact size read back.
    let snap = f
        .svc
        .create_snapshot(Request::new(CreateSnapshotRequest {
            name: "snap-counted".into(),
            source_volume_id: v.volume_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    if let Some(n) = snapshot_execs {
        assert_eq!(execs(&f).len(), n, "{spec}: {:#?}", execs(&f));
    }
    assert_eq!(snap.size_bytes, 2 * GIB);
    assert!(
        snap.ready_to_use && snap.creation_time.is_some(),
        "{snap:?}"
    );
    let copy = f.mock.disk(&snap.snapshot_id).unwrap();
    assert_eq!(copy.copied_from.as_deref(), Some(v.volume_id.as_str()));
    f.svc
        .delete_snapshot(Request::new(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    f.mock.clear_history();

    delete(&f, &v.volume_id).await.unwrap();
    assert_eq!(execs(&f).len(), delete_execs, "{spec}: {:#?}", execs(&f));
    assert!(f.mock.disk("pvc-counted").is_none());
    assert!(!f.file_exists(&format!("{BASE}/pvc-counted.img")));

    // A retry of each is still answered as before.
    f.create("pvc-again", GIB).await;
    f.create("pvc-again", GIB).await;
    delete(&f, "pvc-again").await.unwrap();
    delete(&f, "pvc-again").await.unwrap();
    assert!(f.mock.disk("pvc-again").is_none());
}

/// A leftover file at a new volume's path is never taken over: the script adds nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_never_reuses_a_leftover_file() {
    let f = fixture().await;
    f.mock
        .add_orphan_file(&format!("{BASE}/pvc-leftover.img"), GIB as u64);
    let e = f
        .svc
        .create_volume(Request::new(create_req("pvc-leftover", GIB)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not reused"), "{e:?}");
    assert!(f.mock.disk("pvc-leftover").is_none());
    assert_eq!(f.adds(), 0, "no /disk add ran");
}

/// What the script reads back after adding is not a listing: the create fails, and the disk
/// and file it made are removed.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_output_after_the_add_fails_and_removes_what_was_made() {
    let f = fixture().await;
    f.create("pvc-warm", GIB).await;
    f.mock.inject(Fault::Fail {
        pattern: "^/disk print detail where slot=\"pvc-garbled\"".into(),
        times: Some(1),
        message: "this is no listing".into(),
        exit_status: 0,
    });
    let e = f
        .svc
        .create_volume(Request::new(create_req("pvc-garbled", GIB)))
        .await
        .unwrap_err();
    assert!(e.message().contains("could not be understood"), "{e:?}");
    assert!(f.mock.disk("pvc-garbled").is_none());
    assert!(!f.file_exists(&format!("{BASE}/pvc-garbled.img")));
}

/// A `/disk remove` inside the script that answers like success and does nothing: the file
/// is not removed under its disk, and the call fails.
#[tokio::test(flavor = "multi_thread")]
async fn the_file_stays_while_the_disk_does() {
    let f = fixture().await;
    let v = f.create("pvc-stays", GIB).await;
    f.mock.inject(Fault::Fail {
        pattern: "^/disk remove".into(),
        times: Some(1),
        message: String::new(),
        exit_status: 0,
    });
    let e = delete(&f, &v.volume_id).await.unwrap_err();
    assert!(e.message().contains("still there"), "{e:?}");
    assert!(f.mock.disk("pvc-stays").is_some());
    assert!(f.file_exists(&format!("{BASE}/pvc-stays.img")));
    assert!(
        f.mock.history().iter().any(|h| h
            .command
            .starts_with("/disk remove [find slot=\"pvc-stays\"];")),
        "the delete went as a script"
    );
    delete(&f, &v.volume_id).await.unwrap();
    assert!(!f.file_exists(&format!("{BASE}/pvc-stays.img")));
}

/// An RDS that ran scripts and stops (upgraded, replaced, its user's rights changed) is served
/// command by command from the first refusal on, without a reconnect.
#[tokio::test(flavor = "multi_thread")]
async fn an_rds_that_stops_running_scripts_is_served_command_by_command() {
    let f = fixture().await;
    f.create("pvc-before", GIB).await;
    f.mock
        .set_profile(Profile::parse("scripting-refused").unwrap());
    delete(&f, "pvc-before").await.unwrap();
    let v = f.create("pvc-after", GIB).await;
    delete(&f, &v.volume_id).await.unwrap();
    assert!(f.mock.disk("pvc-before").is_none() && f.mock.disk("pvc-after").is_none());
    assert!(f
        .mock
        .files()
        .iter()
        .all(|file| !file.path.contains("pvc-")));
}

/// A leftover file at the path and a reply the driver cannot read: the script may have added
/// nothing (its file check found the leftover), so the leftover is not removed as if the
/// driver had made it.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_output_never_removes_a_leftover_it_did_not_make() {
    let f = fixture().await;
    f.create("pvc-warm", GIB).await;
    let leftover = format!("{BASE}/pvc-kept.img");
    f.mock.add_orphan_file(&leftover, GIB as u64);
    f.mock.inject(Fault::Fail {
        pattern: "^/disk print detail where slot=\"pvc-kept\"".into(),
        times: Some(1),
        message: "this is no listing".into(),
        exit_status: 0,
    });
    let e = f
        .svc
        .create_volume(Request::new(create_req("pvc-kept", GIB)))
        .await
        .unwrap_err();
    assert!(e.message().contains("could not be understood"), "{e:?}");
    assert!(f.file_exists(&leftover), "the leftover file was removed");
    assert_eq!(f.adds(), 1, "only pvc-warm's /disk add ran");
}

fn snapshot_req(name: &str, source: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    }
}

/// The snapshot's ID and file path for `name` of `source`, as the driver names them.
fn snapshot_path(name: &str, source: &str) -> (String, String) {
    let id = rds_csi::ids::snapshot_id_for_name(name);
    (id.to_string(), format!("{BASE}/{id}.from-{source}.img"))
}

/// A leftover file at the snapshot's path: the copy script adds nothing, and the call fails
/// as the sequence would, leaving the file.
#[tokio::test(flavor = "multi_thread")]
async fn the_copy_script_never_reuses_a_leftover_file() {
    let f = fixture().await;
    let v = f.create("pvc-src", GIB).await;
    let (id, path) = snapshot_path("snap-left", &v.volume_id);
    f.mock.add_orphan_file(&path, GIB as u64);
    let e = f
        .svc
        .create_snapshot(Request::new(snapshot_req("snap-left", &v.volume_id)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(f.mock.disk(&id).is_none());
    assert!(f.file_exists(&path));
    assert_eq!(f.adds(), 1, "only the source's /disk add ran");
}

/// The copy's file read back by the script is not a listing: the call fails and the copy
/// (disk and file) is removed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_copy_read_back_removes_the_copy() {
    let f = fixture().await;
    let v = f.create("pvc-src", GIB).await;
    let (id, path) = snapshot_path("snap-garbled", &v.volume_id);
    f.mock.inject(Fault::Fail {
        pattern: "^/file print detail where name=.*snap-".into(),
        times: Some(1),
        message: "this is no listing".into(),
        exit_status: 0,
    });
    let e = f
        .svc
        .create_snapshot(Request::new(snapshot_req("snap-garbled", &v.volume_id)))
        .await
        .unwrap_err();
    assert!(e.message().contains("could not be understood"), "{e:?}");
    assert!(f.mock.disk(&id).is_none());
    assert!(!f.file_exists(&path));
}

/// A copy still running when the script reads it back is waited for, and answered whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_still_running_after_the_script_is_waited_for() {
    let f = fixture().await;
    f.mock.set_profile(Profile::parse("copy-async").unwrap());
    let v = f.create("pvc-src", GIB).await;
    let snap = f
        .svc
        .create_snapshot(Request::new(snapshot_req("snap-slow", &v.volume_id)))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.size_bytes, GIB);
    let (_, path) = snapshot_path("snap-slow", &v.volume_id);
    let size = f.mock.file(&path).unwrap().size;
    assert_eq!(size, GIB as u64, "answered before the copy was whole");
    let scripted = f
        .mock
        .history()
        .iter()
        .any(|h| h.disposition == Disposition::Scripted && h.command.contains("copy-from"));
    assert!(scripted, "the copy was not made by the script");
}

/// The clock the copy script reads cannot be read: the snapshot is answered without its
/// creation time, and the copy is kept.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_clock_keeps_the_copy() {
    let f = fixture().await;
    let v = f.create("pvc-src", GIB).await;
    f.mock.inject(Fault::Fail {
        pattern: "^/system clock print".into(),
        times: None,
        message: "no clock here".into(),
        exit_status: 0,
    });
    let snap = f
        .svc
        .create_snapshot(Request::new(snapshot_req("snap-clockless", &v.volume_id)))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.size_bytes, GIB);
    assert!(snap.creation_time.is_none(), "{snap:?}");
    assert!(
        f.mock.disk(&snap.snapshot_id).is_some(),
        "the copy was removed"
    );
}

/// The connection is lost once the copy script has run: the call fails rather than sending
/// the copy again, and the CO's retry finds the copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_reply_to_the_copy_script_never_sends_the_copy_again() {
    let f = fixture().await;
    let v = f.create("pvc-src", GIB).await;
    f.mock.inject(Fault::DropAfterRun {
        pattern: "^/disk add.*copy-from".into(),
        times: Some(1),
    });
    let req = || Request::new(snapshot_req("snap-lost", &v.volume_id));
    let e = f.svc.create_snapshot(req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let snap = f
        .svc
        .create_snapshot(req())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.size_bytes, GIB);
    let copies = f
        .mock
        .history()
        .iter()
        .filter(|h| h.command.starts_with("/disk add") && h.command.contains("copy-from"))
        .count();
    assert_eq!(copies, 1, "the copy was sent again");
}
