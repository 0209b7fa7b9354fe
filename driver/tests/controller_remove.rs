//! A `/disk remove` that answers like success but does nothing (an empty `find` does exactly
//! that) must not be taken for a removal: DeleteVolume fails, the file stays with its disk, and
//! the retry removes both.

mod common;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::DeleteVolumeRequest;
use mock_rds::Fault;
use tonic::Request;

use common::controller::{fixture, BASE, GIB};

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_remove_that_did_nothing_is_no_delete() {
    let f = fixture().await;
    let v = f.create("pvc-silent-remove", GIB).await;
    let file = format!("{BASE}/{}.img", v.volume_id);
    f.mock.inject(Fault::Fail {
        pattern: "^/disk remove".into(),
        times: Some(1),
        message: String::new(),
        exit_status: 0,
    });
    let delete = || {
        f.svc.delete_volume(Request::new(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        }))
    };
    let e = delete().await.unwrap_err();
    assert!(e.message().contains("still"), "{e:?}");
    assert!(f.mock.disk(&v.volume_id).is_some());
    assert!(
        f.file_exists(&file),
        "the file was removed under a disk that is still there"
    );
    delete().await.unwrap();
    assert!(f.mock.disk(&v.volume_id).is_none());
    assert!(!f.file_exists(&file));
}
