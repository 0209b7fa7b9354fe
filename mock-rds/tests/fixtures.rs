//! The mock's routeros output against `fixtures/routeros/`:
//! - `hw-*.txt` are real-hardware shapes; the mock must agree with them wherever they overlap
//!   (and byte for byte where the sample is complete);
//! - the other `*.txt` files are the mock's own full-shape output, compared byte for byte.
//!   Regenerate them with `MOCK_RDS_BLESS=1 cargo test -p mock-rds --test fixtures`, then review
//!   the diff: the driver's parser is tested against the same files.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{start_with, Client};
use mock_rds::state::{self, FileEntry, FileKind, State};
use mock_rds::{Config, MockRds};

const VOL1: &str = "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8";
const VOL2: &str = "pvc-ccdecfad-a8bf-572e-9120-464c4d99f12f";
const SNAP: &str = "snap-6ec89291-e651-5af7-8470-1168d64acbcd-at-6ec89291e6";
/// 2025-11-11 16:47:07, the time in the hardware /file sample.
const TIME: u64 = 1_762_879_627;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routeros")
}

fn read(name: &str) -> String {
    let p = dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn create(slot: &str, size: &str) -> String {
    format!(
        "/disk add type=file file-path=\"/storage-pool/metal-csi/{slot}.img\" file-size={size} \
         slot=\"{slot}\" nvme-tcp-export=yes nvme-tcp-server-port=4420 \
         nvme-tcp-server-nqn=\"nqn.2000-02.com.mikrotik:{slot}\""
    )
}

/// (fixture file, command) in the order they run; the state is built by `setup`.
fn generated() -> Vec<(&'static str, String)> {
    vec![
        (
            "disk-print-detail-single.txt",
            format!("/disk print detail where slot={VOL1}"),
        ),
        (
            "disk-print-detail-list.txt",
            "/disk print detail where slot~\"pvc\"".into(),
        ),
        ("disk-print-detail-all.txt", "/disk print detail".into()),
        (
            "disk-print-detail-empty.txt",
            "/disk print detail where slot=pvc-00000000-0000-0000-0000-000000000000".into(),
        ),
        (
            "disk-print-detail-capacity.txt",
            "/disk print detail where mount-point=\"storage-pool\"".into(),
        ),
        (
            "file-print-detail.txt",
            "/file print detail where name~\"storage-pool/metal-csi\"".into(),
        ),
        ("error-bad-command-name.txt", "/disk prnt detail".into()),
        (
            "error-expected-end-of-command.txt",
            "/disk print detail bogus".into(),
        ),
        (
            "error-syntax-error.txt",
            "/disk print detail where slot=\"unterminated".into(),
        ),
        ("error-already-exists.txt", create(VOL1, "10G")),
        (
            "error-not-enough-space.txt",
            create("pvc-11111111-1111-1111-1111-111111111111", "8T"),
        ),
        (
            "error-no-such-item.txt",
            "/disk add type=file copy-from=[find slot=snap-missing] \
             file-path=/storage-pool/metal-csi/snap-x.img slot=snap-x"
                .into(),
        ),
        (
            "error-shrink.txt",
            format!("/disk set [find slot={VOL1}] file-size=1G"),
        ),
    ]
}

async fn setup() -> MockRds {
    let rds = start_with(|c| c.fixed_time = Some(TIME)).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    c.ok(&create(VOL1, "10G")).await;
    c.ok(&create(VOL2, "1G")).await;
    c.ok(&format!(
        "/disk add type=file copy-from=[find slot={VOL1}] \
         file-path=/storage-pool/metal-csi/{SNAP}.img slot={SNAP}"
    ))
    .await;
    rds
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_fixtures_match_byte_for_byte() {
    let bless = std::env::var_os("MOCK_RDS_BLESS").is_some();
    let rds = setup().await;
    let c = Client::connect(rds.addr()).await.unwrap();
    for (name, cmd) in generated() {
        let out = c.run(&cmd).await.unwrap().stdout;
        if bless {
            std::fs::write(dir().join(name), &out).unwrap();
            continue;
        }
        let want = read(name);
        assert_eq!(out, want, "{name} (command: {cmd})");
    }
    rds.stop().await;
}

// ---- a small, test-only reading of RouterOS detail output, to compare key/value sets ----

/// Splits detail output into entries of key/value pairs. Continuation lines are joined with a
/// space, except after a line cut at exactly 80 columns (a mid-token break).
fn entries(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut logical: Vec<String> = Vec::new();
    let mut prev_len = 0;
    let mut in_legend = text.starts_with("Flags:");
    for line in text.split("\r\n") {
        let is_entry = line
            .trim_start()
            .split(' ')
            .next()
            .is_some_and(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()));
        // The legend runs from `Flags:` to the first entry line.
        in_legend &= !is_entry;
        if line.is_empty() || in_legend {
            prev_len = 0;
            continue;
        }
        let is_first = logical.is_empty() || prev_len == 0;
        if is_entry || is_first {
            logical.push(line.to_string());
        } else if let Some(last) = logical.last_mut() {
            if prev_len == 80 {
                last.push_str(line.trim_start());
            } else {
                last.push(' ');
                last.push_str(line.trim());
            }
        }
        prev_len = line.len();
    }
    let key = regex::Regex::new(r"(?:^|\s)([a-z][a-z0-9-]*)=").unwrap();
    logical
        .iter()
        .map(|l| {
            let starts: Vec<_> = key.captures_iter(l).map(|c| c.get(1).unwrap()).collect();
            let mut map = BTreeMap::new();
            for (i, k) in starts.iter().enumerate() {
                let vstart = k.end() + 1;
                let vend = starts.get(i + 1).map_or(l.len(), |n| n.start());
                map.insert(k.as_str().to_string(), l[vstart..vend].trim().to_string());
            }
            map
        })
        .collect()
}

fn assert_overlap(hw: &BTreeMap<String, String>, mock: &BTreeMap<String, String>, what: &str) {
    for (k, v) in hw {
        assert_eq!(mock.get(k), Some(v), "{what}: key {k}");
    }
}

async fn mock_with_disks(disks: &[(&str, &str, &str)]) -> (MockRds, Client) {
    let rds = start_with(|_| {}).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    for (slot, path, size) in disks {
        c.ok(&format!(
            "/disk add type=file file-path={path} file-size={size} slot={slot} \
             nvme-tcp-export=yes nvme-tcp-server-port=4420 \
             nvme-tcp-server-nqn=nqn.2000-02.com.mikrotik:{slot}"
        ))
        .await;
    }
    (rds, c)
}

#[tokio::test(flavor = "multi_thread")]
async fn hardware_single_entry_sample_matches_line_for_line() {
    let hw = read("hw-disk-print-detail-single.txt");
    let (rds, c) = mock_with_disks(&[("pvc-test-123", "/storage-pool/test.img", "50G")]).await;
    let out = c.ok("/disk print detail where slot=pvc-test-123").await;

    // Same keys, same values.
    let (h, m) = (entries(&hw), entries(&out));
    assert_eq!((h.len(), m.len()), (1, 1));
    assert_eq!(
        h[0].keys().collect::<Vec<_>>(),
        m[0].keys().collect::<Vec<_>>()
    );
    assert_overlap(&h[0], &m[0], "single");

    // The sample has no index/flags prefix and no legend; past those, the lines are identical,
    // line breaks included.
    let body: Vec<&str> = out
        .split("\r\n")
        .skip_while(|l| !l.starts_with(" 0 "))
        .collect();
    let mut mine = body.join("\r\n");
    mine.replace_range(..15, "");
    assert_eq!(mine, hw + "\r\n", "mock:\n{out}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hardware_list_sample_overlaps() {
    let hw = read("hw-disk-print-detail-list.txt");
    let (rds, c) = mock_with_disks(&[
        ("pvc-test-1", "/storage-pool/test1.img", "50G"),
        ("pvc-test-2", "/storage-pool/test2.img", "100G"),
    ])
    .await;
    let out = c.ok("/disk print detail where slot~\"pvc\"").await;
    let (h, m) = (entries(&hw), entries(&out));
    assert_eq!((h.len(), m.len()), (2, 2));
    for i in 0..2 {
        assert_overlap(&h[i], &m[i], &format!("list entry {i}"));
    }
    // Entries start with their index and are separated by a blank line.
    assert!(out.contains("\r\n\r\n 1 "), "{out}");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hardware_file_sample_matches_byte_for_byte() {
    let hw = read("hw-file-print-detail.txt");
    // The sample's three entries have different times, so seed the state file directly.
    let dir = tempfile::tempdir().unwrap();
    let f = |id, path: &str, kind, size, t| FileEntry {
        path: path.into(),
        kind,
        size,
        last_modified: t,
        id,
    };
    let st = State {
        next_id: 3,
        disks: vec![],
        files: vec![
            f(1, "/storage-pool/metal-csi", FileKind::Directory, 0, TIME),
            f(
                2,
                &format!("/storage-pool/metal-csi/{VOL2}.img"),
                FileKind::File,
                10 << 30,
                TIME - 2 * 3600 - 14 * 60 - 26,
            ),
            f(
                3,
                &format!("/storage-pool/metal-csi/{VOL1}.img"),
                FileKind::File,
                1 << 30,
                TIME,
            ),
        ],
    };
    state::save(&dir.path().join("state.json"), &st).unwrap();
    let rds = MockRds::start(Config {
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    })
    .await
    .unwrap();
    let c = Client::connect(rds.addr()).await.unwrap();
    let out = c
        .ok("/file print detail where name~\"storage-pool/metal-csi\"")
        .await;
    // The mock ends every entry with a blank line; the sample was trimmed after the last one.
    assert_eq!(out, hw + "\r\n");
    rds.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hardware_monitor_traffic_sample_matches_byte_for_byte() {
    let hw = read("hw-disk-monitor-traffic.txt");
    let rds = start_with(|_| {}).await;
    let c = Client::connect(rds.addr()).await.unwrap();
    assert_eq!(c.ok("/disk monitor-traffic storage-pool once").await, hw);
    rds.stop().await;
}

#[test]
fn every_fixture_is_crlf_and_documented() {
    let readme = read("README.md");
    for entry in std::fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".txt") {
            continue;
        }
        let text = read(&name);
        assert!(
            text.replace("\r\n", "").find('\n').is_none(),
            "{name} has a bare LF"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} missing from README"
        );
    }
}
