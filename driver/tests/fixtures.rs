//! The driver's RouterOS parser against every sample in fixtures/routeros/: the real-hardware
//! captures (hw-*) and the full-shape outputs that mock-rds is also held to.

mod common;

use std::path::PathBuf;

use rds_csi::rds::error::{classify, ExecOutput};
use rds_csi::rds::model::{Disk, FileInfo, Traffic};
use rds_csi::rds::parse::parse_detail;
use rds_csi::rds::RdsError;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/routeros")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains("\r\n"),
        "{name} must keep its CRLF line endings"
    );
    text
}

fn disks(name: &str) -> Vec<Disk> {
    let text = fixture(name);
    let out = classify(
        ExecOutput {
            stdout: text,
            stderr: String::new(),
            exit_status: Some(0),
        },
        false,
    )
    .unwrap_or_else(|e| panic!("{name} classified as a failure: {e}"));
    parse_detail(&out)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .iter()
        .map(|e| Disk::from_entry(e).expect("every entry has a slot"))
        .collect()
}

fn files(name: &str) -> Vec<FileInfo> {
    parse_detail(&fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .iter()
        .filter_map(FileInfo::from_entry)
        .collect()
}

const V1: &str = "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8";
const V2: &str = "pvc-ccdecfad-a8bf-572e-9120-464c4d99f12f";
const SNAP: &str = "snap-6ec89291-e651-5af7-8470-1168d64acbcd-at-6ec89291e6";

#[test]
fn hw_single_disk() {
    let d = &disks("hw-disk-print-detail-single.txt")[..];
    assert_eq!(d.len(), 1);
    let d = &d[0];
    assert_eq!(d.slot, "pvc-test-123");
    assert_eq!(d.disk_type, "file");
    assert_eq!(
        d.size_bytes,
        Some(53_687_091_200),
        "exact size from size=, not file-size="
    );
    assert_eq!(d.file_path.as_deref(), Some("/storage-pool/test.img"));
    assert!(d.nvme_export);
    assert_eq!(d.nvme_port, Some(4420));
    assert_eq!(
        d.nqn.as_deref(),
        Some("nqn.2000-02.com.mikrotik:pvc-test-123")
    );
}

#[test]
fn hw_disk_list() {
    let d = disks("hw-disk-print-detail-list.txt");
    assert_eq!(
        d.iter().map(|d| d.slot.as_str()).collect::<Vec<_>>(),
        ["pvc-test-1", "pvc-test-2"]
    );
    assert_eq!(d[0].size_bytes, Some(50 << 30));
    assert_eq!(d[1].size_bytes, Some(100 << 30));
    assert_eq!(d[1].file_path.as_deref(), Some("/storage-pool/test2.img"));
    assert_eq!(
        d[1].nqn.as_deref(),
        Some("nqn.2000-02.com.mikrotik:pvc-test-2")
    );
}

#[test]
fn hw_file_list() {
    let f = files("hw-file-print-detail.txt");
    assert_eq!(f.len(), 3);
    assert!(f[0].is_directory());
    assert_eq!(f[0].path, "/storage-pool/metal-csi");
    assert_eq!(f[1].path, format!("/storage-pool/metal-csi/{V2}.img"));
    assert_eq!(f[1].file_type, ".img file");
    assert_eq!(f[1].size_bytes, Some(10 << 30));
    assert_eq!(f[1].last_modified.as_deref(), Some("2025-11-11 14:32:41"));
    assert_eq!(f[2].size_bytes, Some(1 << 30), "1024.0MiB is 1 GiB");
}

#[test]
fn hw_monitor_traffic() {
    let t = Traffic::parse(&fixture("hw-disk-monitor-traffic.txt")).unwrap();
    assert_eq!(t.read_ops, 243_401);
    assert_eq!(t.read_bytes, 33_131_503_616);
    assert_eq!(t.write_ops, 17_667_231);
    assert_eq!(t.write_ops_per_second, 76);
    assert_eq!(t.write_bytes, 515_659_673_600);
    assert_eq!(t.write_rate_bytes, 12.8e6 / 8.0);
    assert_eq!(t.read_rate_bytes, 0.0);
}

#[test]
fn full_single_disk_with_mid_token_breaks() {
    let d = disks("disk-print-detail-single.txt");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].slot, V1);
    assert_eq!(d[0].flags, "t");
    assert_eq!(
        d[0].file_path.as_deref(),
        Some(format!("/storage-pool/metal-csi/{V1}.img").as_str())
    );
    assert_eq!(
        d[0].nqn.as_deref(),
        Some(format!("nqn.2000-02.com.mikrotik:{V1}").as_str())
    );
    assert_eq!(d[0].size_bytes, Some(10 << 30));
}

#[test]
fn full_listing_with_pool_volumes_and_snapshot() {
    let d = disks("disk-print-detail-all.txt");
    assert_eq!(
        d.iter().map(|d| d.slot.as_str()).collect::<Vec<_>>(),
        ["storage-pool", V1, V2, SNAP]
    );
    assert_eq!(d[0].disk_type, "raid");
    assert_eq!(d[0].mount_point.as_deref(), Some("storage-pool"));
    assert_eq!(d[0].size_bytes, Some(7_681_574_174_720));
    assert_eq!(d[2].size_bytes, Some(1 << 30));
    assert!(!d[3].nvme_export && d[3].nqn.is_none());
    assert_eq!(
        d[3].file_path.as_deref(),
        Some(format!("/storage-pool/metal-csi/{SNAP}.img").as_str())
    );
    let listed = disks("disk-print-detail-list.txt");
    assert_eq!(
        listed.iter().map(|d| d.slot.as_str()).collect::<Vec<_>>(),
        [V1, V2]
    );
}

#[test]
fn empty_result_is_no_disk_not_an_error() {
    assert!(disks("disk-print-detail-empty.txt").is_empty());
}

#[test]
fn capacity_entry() {
    let d = disks("disk-print-detail-capacity.txt");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].size_bytes, Some(7_681_574_174_720));
    assert_eq!(d[0].free_bytes, Some(7_659_025_596_416));
}

#[test]
fn full_file_listing() {
    let f = files("file-print-detail.txt");
    assert_eq!(f.len(), 4);
    assert_eq!(
        f[3].path,
        format!("/storage-pool/metal-csi/{SNAP}.img"),
        "a name cut at 80 columns is rejoined"
    );
    assert_eq!(f[3].size_bytes, Some(10 << 30));
    assert_eq!(f[3].last_modified.as_deref(), Some("2025-11-11 16:47:07"));
}

#[test]
fn error_samples_classify_with_either_exit_status() {
    for exit in [0, 1] {
        let kind = |name: &str| match classify(
            ExecOutput {
                stdout: fixture(name),
                stderr: String::new(),
                exit_status: Some(exit),
            },
            true,
        ) {
            Err(RdsError::NotFound(_)) => "not-found",
            Err(RdsError::AlreadyExists(_)) => "exists",
            Err(RdsError::OutOfSpace(_)) => "space",
            Err(RdsError::InvalidArgument(_)) => "invalid",
            Err(RdsError::Failed { .. }) => "failed",
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(kind("error-already-exists.txt"), "exists");
        assert_eq!(kind("error-no-such-item.txt"), "not-found");
        assert_eq!(kind("error-not-enough-space.txt"), "space");
        assert_eq!(kind("error-bad-command-name.txt"), "invalid");
        assert_eq!(kind("error-expected-end-of-command.txt"), "invalid");
        assert_eq!(kind("error-syntax-error.txt"), "invalid");
        assert_eq!(kind("error-shrink.txt"), "failed");
    }
}

/// Every bundle `rds-csi validate` captured on real hardware (`fixtures/routeros/hardware/*/`)
/// holds for the driver's parser.
#[test]
fn hardware_bundles_hold() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routeros/hardware");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return; // none captured yet
    };
    for dir in dirs {
        let dir = dir.unwrap().path();
        if dir.is_dir() {
            common::check_bundle(&dir);
        }
    }
}
