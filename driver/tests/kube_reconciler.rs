//! The attachment reconciler against a real API server: stale attachments of deleted nodes
//! (primary and secondary) are cleared after the grace period, node watch triggers, the
//! conflict hook, events, and the start/stop/restart lifecycle; against the fake one, kept for
//! faults: API errors and hangs (fail open), failing events, a delete no watch saw.

mod kube_fake;
mod kube_objects;
mod kube_real;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use kube_fake::FakeApi;
use kube_objects::*;
use kube_real::RealApi;
use rds_csi::kube::attachments::{AttachOptions, AttachmentManager, ManualClock};
use rds_csi::kube::events::{EventRecorder, REASON_STALE_ATTACHMENT_CLEARED};
use rds_csi::kube::reconciler::{
    AttachmentReconciler, LifecycleError, ReconcilerConfig, DEFAULT_GRACE_PERIOD,
    DEFAULT_RECONCILE_INTERVAL,
};
use tokio_util::sync::CancellationToken;

const RWO: AttachOptions = AttachOptions {
    readonly: false,
    multi_node_block: false,
    multi_node_reader: false,
};
const RWX: AttachOptions = AttachOptions {
    readonly: false,
    multi_node_block: true,
    multi_node_reader: false,
};
const WAIT: Duration = Duration::from_secs(10);

fn setup(
    client: kube::Client,
    grace: Duration,
    interval: Duration,
) -> (
    Arc<ManualClock>,
    Arc<AttachmentManager>,
    Arc<AttachmentReconciler>,
) {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let manager = Arc::new(AttachmentManager::new().with_clock(clock.clone()));
    let events = EventRecorder::new(client.clone(), DRIVER, "test-controller");
    let reconciler = Arc::new(AttachmentReconciler::new(
        manager.clone(),
        client,
        ReconcilerConfig {
            interval,
            grace_period: grace,
            watch_nodes: true,
        },
        Some(events),
    ));
    (clock, manager, reconciler)
}

#[test]
fn defaults_are_documented_values() {
    let c = ReconcilerConfig::default();
    assert_eq!(c.interval, DEFAULT_RECONCILE_INTERVAL);
    assert_eq!(c.interval, Duration::from_secs(300));
    assert_eq!(c.grace_period, DEFAULT_GRACE_PERIOD);
    assert_eq!(c.grace_period, Duration::from_secs(30));
}

#[tokio::test]
async fn clears_missing_secondary_and_primary_after_the_grace_period() {
    let api = RealApi::start().await;
    api.put(NODES, node("node-a", true)).await;
    api.put(PVS, pv("pvc-1", "pvc-1", DRIVER, "ReadWriteMany", "Block"))
        .await;
    let (clock, m, r) = setup(
        api.client(),
        Duration::from_secs(30),
        DEFAULT_RECONCILE_INTERVAL,
    );
    // pvc-1: node-a (exists) then node-gone as the secondary.
    m.attach("pvc-1", "node-a", RWX, None).unwrap();
    m.attach("pvc-1", "node-gone", RWX, None).unwrap();
    // pvc-2: node-gone is the primary, node-a the secondary.
    m.attach("pvc-2", "node-gone", RWX, None).unwrap();
    m.attach("pvc-2", "node-a", RWX, None).unwrap();
    // pvc-3: only on the existing node.
    m.attach("pvc-3", "node-a", RWO, None).unwrap();

    let report = r.reconcile_once().await;
    assert_eq!(report.missing_nodes, ["node-gone"]);
    assert!(report.cleared.is_empty(), "seen missing just now");
    assert_eq!(m.nodes("pvc-1"), ["node-a", "node-gone"]);

    clock.advance(Duration::from_secs(31));
    let mut report = r.reconcile_once().await;
    report.cleared.sort();
    assert_eq!(
        report.cleared,
        [
            ("pvc-1".to_string(), "node-gone".to_string()),
            ("pvc-2".to_string(), "node-gone".to_string())
        ]
    );
    assert_eq!(m.nodes("pvc-1"), ["node-a"]);
    assert_eq!(
        m.nodes("pvc-2"),
        ["node-a"],
        "the live secondary keeps the volume"
    );
    assert!(!m.get("pvc-2").unwrap().is_migrating());
    assert_eq!(m.nodes("pvc-3"), ["node-a"]);
    assert_eq!(r.stats().cleared, 2);

    // The event went to the PV and its PVC.
    let events: Vec<_> = api
        .list(&events("default"))
        .await
        .into_iter()
        .filter(|e| e["reason"] == REASON_STALE_ATTACHMENT_CLEARED)
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["involvedObject"]["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"PersistentVolume"), "{kinds:?}");
    assert!(kinds.contains(&"PersistentVolumeClaim"), "{kinds:?}");
    assert!(events[0]["message"].as_str().unwrap().contains("node-gone"));
}

#[tokio::test]
async fn node_reappearing_within_the_grace_period_keeps_its_attachment() {
    let api = RealApi::start().await;
    let (clock, m, r) = setup(
        api.client(),
        Duration::from_secs(30),
        DEFAULT_RECONCILE_INTERVAL,
    );
    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    assert_eq!(r.reconcile_once().await.missing_nodes, ["node-a"]);
    clock.advance(Duration::from_secs(20));
    api.put(NODES, node("node-a", true)).await;
    assert!(r.reconcile_once().await.missing_nodes.is_empty());
    api.delete(NODES, "node-a").await;
    clock.advance(Duration::from_secs(20));
    // Missing again, but only since now: the earlier absence does not count.
    assert!(r.reconcile_once().await.cleared.is_empty());
    assert_eq!(m.nodes("pvc-1"), ["node-a"]);
}

/// Two windows, each of which defers clearing on its own: the node must have been missing for
/// the grace period, and the volume must not have been detached within it. Each phase below
/// has one window open and the other long closed, so removing either check fails the test.
#[tokio::test]
async fn detach_window_and_missing_window_each_defer_clearing() {
    let api = RealApi::start().await;
    api.put(NODES, node("node-x", true)).await;
    let (clock, m, r) = setup(
        api.client(),
        Duration::from_secs(30),
        DEFAULT_RECONCILE_INTERVAL,
    );

    // Missing window long over, detach window open: node-gone has been missing for 40 s when
    // node-x detaches from the shared volume.
    m.attach("pvc-1", "node-gone", RWX, None).unwrap();
    m.attach("pvc-1", "node-x", RWX, None).unwrap();
    assert!(
        r.reconcile_once().await.cleared.is_empty(),
        "just seen missing"
    );
    clock.advance(Duration::from_secs(40));
    m.detach("pvc-1", "node-x");
    assert!(
        r.reconcile_once().await.cleared.is_empty(),
        "missing for 40 s, but detached just now: within the detach window"
    );
    clock.advance(Duration::from_secs(29));
    assert!(
        r.reconcile_once().await.cleared.is_empty(),
        "detached 29 s ago"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(r.reconcile_once().await.cleared.len(), 1);
    assert!(m.nodes("pvc-1").is_empty());

    // Detach window long over, missing window open: pvc-2 was detached 100 s before node-late
    // is first seen missing.
    m.attach("pvc-2", "node-y", RWO, None).unwrap();
    m.detach("pvc-2", "node-y");
    clock.advance(Duration::from_secs(100));
    m.attach("pvc-2", "node-late", RWO, None).unwrap();
    assert!(
        r.reconcile_once().await.cleared.is_empty(),
        "detached long ago, but missing only since now"
    );
    clock.advance(Duration::from_secs(29));
    assert!(
        r.reconcile_once().await.cleared.is_empty(),
        "missing for 29 s"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        r.reconcile_once().await.cleared,
        [("pvc-2".to_string(), "node-late".to_string())]
    );
}

/// kube sets no read timeout: a node read the API server never answers must end the pass with
/// the node unknown (kept), not stall the reconciler.
#[tokio::test]
async fn a_node_read_that_never_answers_counts_as_unknown() {
    let api = FakeApi::start().await;
    let (_clock, m, r) = setup(api.client(), Duration::ZERO, DEFAULT_RECONCILE_INTERVAL);
    m.attach("pvc-1", "node-gone", RWO, None).unwrap();
    api.hang(NODES, None, None);
    let report = tokio::time::timeout(Duration::from_secs(20), r.reconcile_once())
        .await
        .expect("the pass waited on a hung API server");
    assert_eq!(report.unknown_nodes, ["node-gone"]);
    assert!(report.cleared.is_empty());
    assert_eq!(m.nodes("pvc-1"), ["node-gone"]);
}

#[tokio::test]
async fn fails_open_when_nodes_cannot_be_read() {
    let api = FakeApi::start().await;
    let (clock, m, r) = setup(api.client(), Duration::ZERO, DEFAULT_RECONCILE_INTERVAL);
    m.attach("pvc-1", "node-gone", RWO, None).unwrap();
    api.fail(NODES, None, 500, None);
    let report = r.reconcile_once().await;
    assert_eq!(report.unknown_nodes, ["node-gone"]);
    assert!(report.cleared.is_empty());
    clock.advance(Duration::from_secs(3600));
    assert!(r.reconcile_once().await.cleared.is_empty());
    assert_eq!(m.nodes("pvc-1"), ["node-gone"], "kept while the API fails");
    assert!(r.stats().api_errors >= 2);

    // The API is back: the node really is gone.
    api.clear_faults();
    assert_eq!(r.reconcile_once().await.cleared.len(), 1);
    assert!(m.nodes("pvc-1").is_empty());
}

#[tokio::test]
async fn event_failures_do_not_stop_the_pass() {
    let api = FakeApi::start().await;
    let (_clock, m, r) = setup(api.client(), Duration::ZERO, DEFAULT_RECONCILE_INTERVAL);
    api.put(
        PVS,
        pv("pvc-1", "pvc-1", DRIVER, "ReadWriteOnce", "Filesystem"),
    );
    m.attach("pvc-1", "node-gone", RWO, None).unwrap();
    api.fail("/api/v1/namespaces/default/events", None, 500, None);
    assert_eq!(r.reconcile_once().await.cleared.len(), 1);
    assert!(m.nodes("pvc-1").is_empty());
}

#[tokio::test]
async fn lifecycle_start_once_stop_idempotent_restart_and_cancel() {
    let api = RealApi::start().await;
    let (_clock, _m, r) = setup(api.client(), Duration::ZERO, Duration::from_secs(3600));
    r.trigger(); // before start: a no-op
    r.stop().await; // before start: a no-op
    assert!(!r.is_running());

    let parent = CancellationToken::new();
    r.start(&parent).unwrap();
    assert!(r.is_running());
    assert_eq!(r.start(&parent), Err(LifecycleError::AlreadyRunning));
    assert!(
        eventually(WAIT, || r.stats().runs >= 1).await,
        "first pass at start"
    );
    for _ in 0..10 {
        r.trigger(); // never blocks
    }
    r.stop().await;
    assert!(!r.is_running());
    r.stop().await;
    r.trigger(); // after stop: a no-op

    r.start(&parent).unwrap();
    assert!(r.is_running(), "restarted");
    parent.cancel();
    assert!(
        eventually(WAIT, || !r.is_running()).await,
        "stops on cancel"
    );
    // A cancelled-and-finished loop may be started again with a new parent.
    r.start(&CancellationToken::new()).unwrap();
    assert!(r.is_running());
    r.stop().await;
}

#[tokio::test]
async fn node_delete_and_not_ready_trigger_a_pass() {
    let api = RealApi::start().await;
    api.put(NODES, node("node-x", true)).await;
    api.put(NODES, node("node-y", true)).await;
    let (_clock, m, r) = setup(api.client(), Duration::ZERO, Duration::from_secs(3600));
    m.attach("pvc-1", "node-x", RWO, None).unwrap();
    let watches = api.watches("nodes").await;
    let parent = CancellationToken::new();
    r.start(&parent).unwrap();
    assert!(eventually(WAIT, || r.stats().runs >= 1).await);
    // The watch must be open before the delete, or there is nothing to see.
    api.wait_for_watch("nodes", watches).await;
    assert_eq!(m.nodes("pvc-1"), ["node-x"]);

    let runs = r.stats().runs;
    api.put(NODES, node("node-y", false)).await;
    assert!(
        eventually(WAIT, || r.stats().runs > runs).await,
        "Ready -> NotReady triggers a pass (the interval is an hour)"
    );

    api.delete(NODES, "node-x").await;
    assert!(
        eventually(WAIT, || m.nodes("pvc-1").is_empty()).await,
        "node delete clears its attachment"
    );
    r.stop().await;
}

#[tokio::test]
async fn refused_publish_triggers_the_reconciler_which_frees_the_volume() {
    let api = RealApi::start().await;
    api.put(NODES, node("node-b", true)).await;
    let (_clock, m, r) = setup(api.client(), Duration::ZERO, Duration::from_secs(3600));
    m.set_conflict_hook(r.trigger_handle());
    let parent = CancellationToken::new();
    r.start(&parent).unwrap();
    assert!(eventually(WAIT, || r.stats().runs >= 1).await);
    // Attached after the first pass; the interval is an hour, so only a trigger clears it.
    m.attach("pvc-1", "node-gone", RWO, None).unwrap();
    let runs = r.stats().runs;
    // Refused: node-gone still holds it in the table. Never evicted by the publish itself.
    assert!(m.attach("pvc-1", "node-b", RWO, None).is_err());
    assert!(eventually(WAIT, || r.stats().runs > runs).await);
    assert!(eventually(WAIT, || m.nodes("pvc-1").is_empty()).await);
    assert_eq!(
        m.attach("pvc-1", "node-b", RWO, None),
        Ok(true),
        "the retry succeeds"
    );
    r.stop().await;
}

#[tokio::test]
async fn timed_out_migration_is_reported_once() {
    let api = RealApi::start().await;
    api.put(NODES, node("node-a", true)).await;
    api.put(NODES, node("node-b", true)).await;
    api.put(PVS, pv("pvc-1", "pvc-1", DRIVER, "ReadWriteMany", "Block"))
        .await;
    let (clock, m, r) = setup(
        api.client(),
        Duration::from_secs(30),
        DEFAULT_RECONCILE_INTERVAL,
    );
    m.attach("pvc-1", "node-a", RWX, None).unwrap();
    m.attach("pvc-1", "node-b", RWX, Some(Duration::from_secs(60)))
        .unwrap();
    assert!(r.reconcile_once().await.timed_out_migrations.is_empty());
    clock.advance(Duration::from_secs(61));
    assert_eq!(r.reconcile_once().await.timed_out_migrations, ["pvc-1"]);
    r.reconcile_once().await;
    assert_eq!(r.stats().timed_out_migrations, 1, "one event per migration");
    let posted = api
        .list(&events("default"))
        .await
        .iter()
        .filter(|e| e["reason"] == "MigrationTimedOut")
        .count();
    assert_eq!(posted, 2, "PV and PVC");
    assert_eq!(m.nodes("pvc-1"), ["node-a", "node-b"]);
}

/// A reconciler on the real clock, for tests that wait for its own scheduling.
fn setup_real_clock(
    client: kube::Client,
    grace: Duration,
) -> (Arc<AttachmentManager>, Arc<AttachmentReconciler>) {
    let manager = Arc::new(AttachmentManager::new());
    let reconciler = Arc::new(AttachmentReconciler::new(
        manager.clone(),
        client,
        ReconcilerConfig {
            interval: DEFAULT_RECONCILE_INTERVAL,
            grace_period: grace,
            watch_nodes: true,
        },
        None,
    ));
    (manager, reconciler)
}

async fn wait_for_the_node_watch(api: &FakeApi) {
    assert!(
        eventually(WAIT, || api
            .requests()
            .iter()
            .any(|(v, p)| v == "WATCH" && p == NODES))
        .await,
        "the node watch never opened"
    );
}

/// A deleted node's attachments are cleared when the grace period ends, by a pass scheduled for
/// then, not at the next periodic pass (5 minutes later).
#[tokio::test]
async fn a_deleted_nodes_attachments_are_cleared_when_the_grace_period_ends() {
    let api = RealApi::start().await;
    api.put(NODES, node("node-a", true)).await;
    let (m, r) = setup_real_clock(api.client(), Duration::from_secs(1));
    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    let watches = api.watches("nodes").await;
    let parent = CancellationToken::new();
    r.start(&parent).unwrap();
    api.wait_for_watch("nodes", watches).await;
    api.delete(NODES, "node-a").await;
    assert!(
        eventually(Duration::from_secs(15), || m.nodes("pvc-1").is_empty()).await,
        "the attachment of the deleted node was not cleared after the grace period"
    );
    r.stop().await;
}

/// A node deleted while the watch was down is noticed when the watch lists the nodes again.
#[tokio::test]
async fn a_node_deleted_while_the_watch_was_down_is_noticed_on_relist() {
    let api = FakeApi::start().await;
    api.put(NODES, node("node-a", true));
    let (m, r) = setup_real_clock(api.client(), Duration::ZERO);
    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    let parent = CancellationToken::new();
    r.start(&parent).unwrap();
    wait_for_the_node_watch(&api).await;
    assert!(eventually(WAIT, || r.stats().runs >= 1).await);
    assert_eq!(m.nodes("pvc-1"), ["node-a"]);
    // The node goes while the watch is down; the watch then ends as too old (410 Gone), so
    // the watcher lists the nodes again.
    api.delete_unseen(NODES, "node-a");
    api.expire_watches();
    assert!(
        eventually(Duration::from_secs(30), || m.nodes("pvc-1").is_empty()).await,
        "the node deleted while the watch was down was not noticed on relist: {:?}",
        api.requests()
    );
    r.stop().await;
}
