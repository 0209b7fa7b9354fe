//! `rds-csi validate` against mock-rds playing each behaviour variant: it names the variant,
//! leaves the RDS exactly as it found it (also when interrupted), and its bundle holds for the
//! fixture tests.

mod common;

use std::sync::Arc;

use mock_rds::{Auth, Config, MockRds, Profile};
use rds_csi::rds::{RdsClient, RdsPath};
use rds_csi::validate::{self, Handled};
use tokio_util::sync::CancellationToken;

const BASE: &str = "/storage-pool/metal-csi";

/// Variants `validate` does not probe: the default wrapping, and a CLI lock (only timing would
/// tell it, which is no test).
const NOT_PROBED: &[&str] = &["wrap-80", "cli-lock"];

async fn mock_with(spec: &str) -> (MockRds, Arc<RdsClient>) {
    let key = common::new_key();
    let mock = MockRds::start(Config {
        auth: Auth::AuthorizedKeys(vec![key.public_key().clone()]),
        profile: Profile::parse(spec).unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    // An RDS in use: the base directory, a volume and a file of someone else's.
    mock.execute("/file add type=directory name=storage-pool/metal-csi");
    mock.add_orphan_file(&format!("{BASE}/keep.img"), 1 << 20);
    let rds = Arc::new(common::client_for(
        &mock,
        key,
        common::pinned(&mock),
        common::fast_retry(),
    ));
    (mock, rds)
}

/// What `validate` must leave as it was: disks and files (times aside).
fn contents(mock: &MockRds) -> (Vec<mock_rds::Disk>, Vec<(String, u64)>) {
    let files = mock.files().into_iter().map(|f| (f.path, f.size)).collect();
    (mock.disks(), files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_variant_is_identified_and_nothing_is_left() {
    let mut specs: Vec<&str> = vec!["default"];
    specs.extend(
        mock_rds::profile::VARIANTS
            .iter()
            .map(|(_, name, _)| *name)
            .filter(|n| !NOT_PROBED.contains(n)),
    );
    let runs: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            tokio::spawn(async move {
                let (mock, rds) = mock_with(spec).await;
                let before = contents(&mock);
                let base = RdsPath::new(BASE).unwrap();
                let mut steps = Vec::new();
                let (report, bundle) = validate::run(&rds, &base, CancellationToken::new(), |l| {
                    // `[3/18] print-terse`: the step's name.
                    if let Some((_, step)) = l.split_once("] ") {
                        steps.push(step.to_string());
                    }
                })
                .await;
                assert_eq!(report.error, None, "{spec}");
                // One row per step, in the progress's order: the count people see agrees.
                let rows: Vec<&str> = report.findings.iter().map(|f| f.step).collect();
                assert_eq!(rows, steps, "{spec}");
                assert_eq!(contents(&mock), before, "{spec}: the RDS was changed");
                assert!(
                    report.leftovers.is_empty(),
                    "{spec}: {:?}",
                    report.leftovers
                );
                for f in &report.findings {
                    assert_eq!(f.handled, Handled::Yes, "{spec}: {f:?}");
                }
                let found = report.variants();
                if spec == "default" {
                    assert!(found.is_empty(), "default: {found:?}\n{report:#?}");
                } else {
                    assert!(
                        found.contains(&spec),
                        "{spec} not identified: {found:?}\n{report:#?}"
                    );
                }
                let dir = tempfile::tempdir().unwrap();
                bundle.write(dir.path(), &report).unwrap();
                common::check_bundle(dir.path());
                mock.stop().await;
                (spec, found)
            })
        })
        .collect();
    for r in runs {
        let (spec, found) = r.await.unwrap();
        eprintln!("{spec}: {found:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_still_removes_what_it_made() {
    for stop_at in ["[5/", "[11/", "[14/"] {
        let (mock, rds) = mock_with("copy-async,resize-delayed").await;
        let before = contents(&mock);
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let (report, _) = validate::run(&rds, &RdsPath::new(BASE).unwrap(), cancel, move |line| {
            if line.starts_with(stop_at) {
                trigger.cancel();
            }
        })
        .await;
        assert!(report.interrupted, "{stop_at}");
        assert!(
            report.leftovers.is_empty(),
            "{stop_at}: {:?}",
            report.leftovers
        );
        assert_eq!(contents(&mock), before, "{stop_at}: the RDS was changed");
        mock.stop().await;
    }
}

#[tokio::test]
async fn refuses_a_base_path_that_is_not_a_directory() {
    let (mock, rds) = mock_with("default").await;
    let missing = RdsPath::new("/storage-pool/nowhere").unwrap();
    let (report, _) = validate::run(&rds, &missing, CancellationToken::new(), |_| {}).await;
    let err = report.error.unwrap();
    assert!(err.contains("not a directory"), "{err}");
    assert!(mock.disks().is_empty());
    mock.stop().await;
}

#[tokio::test]
async fn refuses_a_scratch_directory_that_is_there_and_leaves_its_files() {
    let (mock, rds) = mock_with("default").await;
    mock.execute("/file add type=directory name=storage-pool/metal-csi/rds-csi-validate-0000beef");
    mock.add_orphan_file(
        &format!("{BASE}/rds-csi-validate-0000beef/theirs.img"),
        1 << 20,
    );
    let before = contents(&mock);
    let base = RdsPath::new(BASE).unwrap();
    let (report, _) =
        validate::run_tagged(&rds, &base, "0000beef", CancellationToken::new(), |_| {}).await;
    let err = report.error.unwrap();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        contents(&mock),
        before,
        "validate changed a directory it did not make"
    );
    mock.stop().await;
}
