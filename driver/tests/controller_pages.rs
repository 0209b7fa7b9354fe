//! ListVolumes and ListSnapshots pagination: a `starting_token` is accepted only when this
//! driver made it for that same listing, so csi-sanity's `invalid-token` (which fits the volume
//! ID grammar) and other made-up strings are refused with Aborted, and paging still walks every
//! entry exactly once.

mod common;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::*;
use tonic::{Code, Request};

use common::controller::*;

fn volumes_page(max_entries: i32, token: &str) -> Request<ListVolumesRequest> {
    Request::new(ListVolumesRequest {
        max_entries,
        starting_token: token.into(),
    })
}

fn snapshots_page(max_entries: i32, token: &str) -> Request<ListSnapshotsRequest> {
    Request::new(ListSnapshotsRequest {
        max_entries,
        starting_token: token.into(),
        ..Default::default()
    })
}

/// Asserts Aborted with a message that names the field and the token.
fn assert_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, token: &str) {
    let e = r.expect_err(token);
    assert_eq!(e.code(), Code::Aborted, "{token}: {e:?}");
    assert!(
        e.message().contains("starting_token") && e.message().contains(token),
        "{token}: {}",
        e.message()
    );
}

async fn volume_ids(f: &Fixture, max_entries: i32) -> (Vec<String>, Vec<String>) {
    let (mut ids, mut tokens, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = f
            .svc
            .list_volumes(volumes_page(max_entries, &token))
            .await
            .unwrap()
            .into_inner();
        ids.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        if page.next_token.is_empty() {
            return (ids, tokens);
        }
        tokens.push(page.next_token.clone());
        token = page.next_token;
    }
}

#[tokio::test]
async fn list_volumes_refuses_tokens_it_did_not_make() {
    let f = fixture().await;
    for name in ["pvc-a", "pvc-b", "pvc-c"] {
        f.create(name, GIB).await;
    }
    let (ids, tokens) = volume_ids(&f, 1).await;
    assert_eq!(ids, ["pvc-a", "pvc-b", "pvc-c"]);
    assert_eq!(tokens.len(), 2);

    // csi-sanity's token, and the bare volume IDs that tokens used to be.
    for token in ["invalid-token", "pvc-a", "pvc-b", "zzz"] {
        assert_refused(f.svc.list_volumes(volumes_page(1, token)).await, token);
    }
    // A real token with its volume ID changed, or cut short.
    let tampered = tokens[0].replace("pvc-a", "pvc-b");
    assert_ne!(tampered, tokens[0], "the token carries the last ID");
    assert_refused(
        f.svc.list_volumes(volumes_page(1, &tampered)).await,
        &tampered,
    );
    let cut = &tokens[0][..tokens[0].len() - 1];
    assert_refused(f.svc.list_volumes(volumes_page(1, cut)).await, cut);
    // A ListVolumes token is no ListSnapshots token.
    assert_refused(
        f.svc.list_snapshots(snapshots_page(1, &tokens[0])).await,
        &tokens[0],
    );
    // The real token still works, also once the volume it names is gone.
    f.svc
        .delete_volume(Request::new(DeleteVolumeRequest {
            volume_id: "pvc-a".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let page = f
        .svc
        .list_volumes(volumes_page(0, &tokens[0]))
        .await
        .unwrap()
        .into_inner();
    let rest: Vec<String> = page
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    assert_eq!(rest, ["pvc-b", "pvc-c"]);
}

#[tokio::test]
async fn list_snapshots_pages_and_refuses_tokens_it_did_not_make() {
    let f = fixture().await;
    f.create("pvc-src", GIB).await;
    let mut made = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let snap = f
            .svc
            .create_snapshot(Request::new(CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: "pvc-src".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        made.push(snap.snapshot_id);
    }
    made.sort();
    let (mut ids, mut token, mut tokens) = (Vec::new(), String::new(), Vec::new());
    loop {
        let page = f
            .svc
            .list_snapshots(snapshots_page(2, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        ids.extend(
            page.entries
                .into_iter()
                .map(|e| e.snapshot.unwrap().snapshot_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        tokens.push(page.next_token.clone());
        token = page.next_token;
    }
    assert_eq!(ids, made);
    assert_eq!(tokens.len(), 1);

    for token in ["invalid-token", made[0].as_str(), "snap-x"] {
        assert_refused(f.svc.list_snapshots(snapshots_page(1, token)).await, token);
    }
    assert_refused(
        f.svc.list_volumes(volumes_page(1, &tokens[0])).await,
        &tokens[0],
    );
}
