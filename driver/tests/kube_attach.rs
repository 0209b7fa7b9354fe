//! The attachment table: grace-period contract, RWO and RWX-block rules, the migration timeout,
//! and the rebuild from VolumeAttachments served by a real API server (by the fake one, kept for
//! faults, while it fails).

mod kube_fake;
mod kube_objects;
mod kube_real;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube_fake::*;
use kube_objects::*;
use kube_real::{created_at, RealApi};
use rds_csi::kube::attachments::{
    rebuild, rebuild_until_ready, AttachError, AttachOptions, AttachmentManager,
    ClusterAttachments, ManualClock, DEFAULT_DETACH_RETENTION, DEFAULT_MIGRATION_TIMEOUT,
    MAX_MIGRATION_TIMEOUT, MIN_MIGRATION_TIMEOUT,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

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
/// ReadOnlyMany: always read-only.
const ROX: AttachOptions = AttachOptions {
    readonly: true,
    multi_node_block: false,
    multi_node_reader: true,
};

fn manual() -> (Arc<ManualClock>, AttachmentManager) {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let manager = AttachmentManager::new().with_clock(clock.clone());
    (clock, manager)
}

#[test]
fn grace_period_contract() {
    let (clock, m) = manual();
    let grace = Duration::from_secs(30);
    assert!(!m.is_within_grace_period("pvc-1", grace), "never detached");
    assert_eq!(m.detach_time("pvc-1"), None);

    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    assert!(
        !m.is_within_grace_period("pvc-1", grace),
        "attached, never detached"
    );
    let at = clock.now_for_test();
    assert!(m.detach("pvc-1", "node-a"), "fully detached");
    assert_eq!(m.detach_time("pvc-1"), Some(at));
    assert!(m.is_within_grace_period("pvc-1", grace));

    clock.advance(Duration::from_secs(29));
    assert!(m.is_within_grace_period("pvc-1", grace));
    clock.advance(Duration::from_secs(1));
    assert!(!m.is_within_grace_period("pvc-1", grace), "period over");
    assert_eq!(m.detach_time("pvc-1"), Some(at), "the time stays readable");

    m.clear_detach_time("pvc-1");
    assert_eq!(m.detach_time("pvc-1"), None);
    clock.advance(Duration::from_secs(0));
    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    m.detach("pvc-1", "node-a");
    m.clear_detach_time("pvc-1");
    assert!(!m.is_within_grace_period("pvc-1", grace), "cleared");
}

/// Detach times matter only within the grace period: old ones are forgotten, so the table
/// does not grow with every volume ever detached.
#[test]
fn detach_times_are_forgotten_after_the_retention() {
    let (clock, m) = manual();
    for i in 0..100 {
        let volume = format!("pvc-{i}");
        m.attach(&volume, "node-a", RWO, None).unwrap();
        m.detach(&volume, "node-a");
    }
    clock.advance(DEFAULT_DETACH_RETENTION + Duration::from_secs(1));
    m.attach("pvc-new", "node-a", RWO, None).unwrap();
    m.detach("pvc-new", "node-a");
    for i in 0..100 {
        assert_eq!(m.detach_time(&format!("pvc-{i}")), None, "pvc-{i} kept");
    }
    assert!(m.detach_time("pvc-new").is_some());

    let (clock, _) = manual();
    let short = AttachmentManager::new()
        .with_clock(clock.clone())
        .with_detach_retention(Duration::from_secs(60));
    let detach = |volume: &str| {
        short.attach(volume, "node-a", RWO, None).unwrap();
        short.detach(volume, "node-a");
    };
    detach("pvc-old");
    clock.advance(Duration::from_secs(59));
    detach("pvc-mid");
    assert!(
        short.detach_time("pvc-old").is_some(),
        "younger than the retention"
    );
    clock.advance(Duration::from_secs(1));
    detach("pvc-new");
    assert_eq!(
        short.detach_time("pvc-old"),
        None,
        "as old as the retention"
    );
    assert!(short.detach_time("pvc-mid").is_some());
}

trait NowForTest {
    fn now_for_test(&self) -> SystemTime;
}
impl NowForTest for ManualClock {
    fn now_for_test(&self) -> SystemTime {
        rds_csi::kube::attachments::Clock::now(self)
    }
}

#[test]
fn live_migration_handoff_within_the_grace_period() {
    let (_clock, m) = manual();
    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    m.detach("pvc-1", "node-a");
    assert!(m.is_within_grace_period("pvc-1", Duration::from_secs(30)));
    assert_eq!(m.attach("pvc-1", "node-b", RWO, None), Ok(true));
    assert_eq!(m.nodes("pvc-1"), ["node-b"]);
}

#[test]
fn rwo_second_node_is_refused_and_the_holder_kept() {
    let (_clock, m) = manual();
    let conflicts = Arc::new(AtomicUsize::new(0));
    let c = conflicts.clone();
    m.set_conflict_hook(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(m.attach("pvc-1", "node-a", RWO, None), Ok(true));
    assert_eq!(
        m.attach("pvc-1", "node-a", RWO, None),
        Ok(false),
        "idempotent"
    );
    let err = m.attach("pvc-1", "node-b", RWO, None).unwrap_err();
    assert!(matches!(&err, AttachError::Held { holder, .. } if holder == "node-a"));
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("node-a"), "{}", status.message());
    assert_eq!(m.nodes("pvc-1"), ["node-a"], "never evicted");
    assert_eq!(conflicts.load(Ordering::SeqCst), 1);

    // RWX on one side only is still one node.
    m.attach("pvc-2", "node-a", RWX, None).unwrap();
    assert!(matches!(
        m.attach("pvc-2", "node-b", RWO, None),
        Err(AttachError::Held { .. })
    ));
    // Same node, other options.
    let err = m.attach("pvc-1", "node-a", RWX, None).unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::AlreadyExists);
}

#[test]
fn rwx_block_dual_attach_and_migration_timeout() {
    let (clock, m) = manual();
    m.attach("pvc-1", "node-a", RWX, None).unwrap();
    assert!(!m.get("pvc-1").unwrap().is_migrating());
    m.attach("pvc-1", "node-b", RWX, None).unwrap();
    let state = m.get("pvc-1").unwrap();
    assert_eq!(state.node_ids(), ["node-a", "node-b"]);
    assert!(state.is_migrating());
    assert_eq!(state.migration_timeout, DEFAULT_MIGRATION_TIMEOUT);
    assert_eq!(m.attach("pvc-1", "node-b", RWX, None), Ok(false));

    assert!(
        !m.detach("pvc-1", "node-z"),
        "a node holding nothing detaches nothing"
    );
    assert_eq!(m.get("pvc-1").unwrap(), state, "the migration goes on");
    let err = m.attach("pvc-1", "node-c", RWX, None).unwrap_err();
    assert!(matches!(err, AttachError::MigrationLimit { .. }), "{err}");
    assert!(err.to_string().contains("migration limit"));
    assert!(m.timed_out_migrations().is_empty());

    clock.advance(DEFAULT_MIGRATION_TIMEOUT + Duration::from_secs(1));
    let err = m.attach("pvc-1", "node-c", RWX, None).unwrap_err();
    assert!(
        matches!(err, AttachError::MigrationTimedOut { .. }),
        "{err}"
    );
    assert_eq!(tonic::Status::from(err).code(), Code::FailedPrecondition);
    let timed_out = m.timed_out_migrations();
    assert_eq!(timed_out.len(), 1);
    assert_eq!(timed_out[0].volume_id, "pvc-1");
    assert_eq!(m.nodes("pvc-1"), ["node-a", "node-b"], "nobody evicted");

    // The source detaches: the migration is over, the target is the only holder.
    assert!(!m.detach("pvc-1", "node-a"));
    let state = m.get("pvc-1").unwrap();
    assert_eq!(state.node_ids(), ["node-b"]);
    assert!(!state.is_migrating());
    assert_eq!(
        state.migration_started_at, None,
        "one holder is no migration"
    );
    assert!(m.timed_out_migrations().is_empty());

    // The volume context overrides the timeout.
    let ctx = HashMap::from([("migrationTimeoutSeconds".to_string(), "60".to_string())]);
    let timeout = m.migration_timeout_for(&ctx);
    assert_eq!(timeout, Duration::from_secs(60));
    m.attach("pvc-1", "node-c", RWX, Some(timeout)).unwrap();
    clock.advance(Duration::from_secs(60));
    assert!(
        m.timed_out_migrations().is_empty(),
        "timed out only once longer than its timeout"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(m.timed_out_migrations().len(), 1);
}

/// `migrationTimeoutSeconds: 0` used to mark every migration timed out the moment it began.
/// Timeouts from the context, the flag and a rebuilt PV are clamped to a sane range.
#[test]
fn migration_timeout_is_clamped_to_a_sane_range() {
    let (_clock, m) = manual();
    let ctx = |v: &str| HashMap::from([("migrationTimeoutSeconds".to_string(), v.to_string())]);
    assert_eq!(m.migration_timeout_for(&ctx("0")), MIN_MIGRATION_TIMEOUT);
    assert_eq!(m.migration_timeout_for(&ctx("1")), MIN_MIGRATION_TIMEOUT);
    assert_eq!(
        m.migration_timeout_for(&ctx("99999999999")),
        MAX_MIGRATION_TIMEOUT
    );
    assert_eq!(m.migration_timeout_for(&ctx("90")), Duration::from_secs(90));
    let timeout = m.migration_timeout_for(&ctx("0"));
    m.attach("pvc-1", "node-a", RWX, Some(timeout)).unwrap();
    m.attach("pvc-1", "node-b", RWX, Some(timeout)).unwrap();
    assert!(
        m.timed_out_migrations().is_empty(),
        "a migration that just began is not timed out"
    );
    let flag = AttachmentManager::new().with_migration_timeout(Duration::ZERO);
    assert_eq!(flag.default_migration_timeout(), MIN_MIGRATION_TIMEOUT);
}

#[test]
fn empty_node_detaches_everywhere() {
    let (_clock, m) = manual();
    m.attach("pvc-1", "node-a", RWX, None).unwrap();
    m.attach("pvc-1", "node-b", RWX, None).unwrap();
    assert!(m.detach("pvc-1", ""));
    assert!(m.get("pvc-1").is_none());
    assert!(m.detach_time("pvc-1").is_some());
}

/// `--max-volumes-per-node` is per node: what other nodes hold does not fill this one.
#[test]
fn the_attach_limit_counts_only_the_nodes_own_volumes() {
    let (_clock, m) = manual();
    m.attach("pvc-1", "node-b", RWO, None).unwrap();
    m.attach("pvc-2", "node-b", RWO, None).unwrap();
    assert_eq!(
        m.attach_within_limit("pvc-3", "node-a", RWO, None, Some(1)),
        Ok(true)
    );
    assert!(matches!(
        m.attach_within_limit("pvc-4", "node-a", RWO, None, Some(1)),
        Err(AttachError::NodeFull { limit: 1, .. })
    ));
    assert_eq!(
        m.attach_within_limit("pvc-3", "node-a", RWO, None, Some(1)),
        Ok(false),
        "a retry on a full node is not a new volume"
    );
}

#[test]
fn not_ready_refuses_publishes() {
    let m = AttachmentManager::new().not_ready();
    let err = m.attach("pvc-1", "node-a", RWO, None).unwrap_err();
    assert_eq!(err, AttachError::NotReady);
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
    assert!(format!("{m:?}").contains("ready: false"), "{m:?}");
    m.set_ready(true);
    assert_eq!(m.attach("pvc-1", "node-a", RWO, None), Ok(true));
}

#[test]
fn readers_share_a_volume_and_exclude_writers() {
    let (_clock, m) = manual();
    for node in ["node-a", "node-b", "node-c", "node-d"] {
        assert_eq!(m.attach("pvc-rox", node, ROX, None), Ok(true), "{node}");
    }
    assert_eq!(m.attach("pvc-rox", "node-b", ROX, None), Ok(false));
    let held = m.get("pvc-rox").unwrap();
    assert_eq!(held.nodes.len(), 4);
    assert!(!held.is_migrating(), "readers are no live migration");
    assert!(m.timed_out_migrations().is_empty());
    for options in [RWO, RWX] {
        let err = m.attach("pvc-rox", "node-e", options, None).unwrap_err();
        assert!(
            matches!(err, AttachError::ReaderWriterConflict { .. }),
            "{err:?}"
        );
        assert_eq!(tonic::Status::from(err).code(), Code::FailedPrecondition);
    }
    m.attach("pvc-rwo", "node-a", RWO, None).unwrap();
    let err = m.attach("pvc-rwo", "node-b", ROX, None).unwrap_err();
    assert!(
        matches!(err, AttachError::ReaderWriterConflict { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("node-a"), "{err}");
    // Readers leave one by one.
    assert!(!m.detach("pvc-rox", "node-a"));
    assert_eq!(m.nodes("pvc-rox"), ["node-b", "node-c", "node-d"]);
}

/// The cluster as the API server would serve these VolumeAttachments (and their PVs, named
/// after their volumes, ReadWriteOnce).
fn cluster_of(vas: Vec<serde_json::Value>) -> ClusterAttachments {
    let pvs = vas
        .iter()
        .map(|va| {
            let name = va["spec"]["source"]["persistentVolumeName"]
                .as_str()
                .unwrap();
            pv(name, name, DRIVER, "ReadWriteOnce", "Filesystem")
        })
        .collect();
    cluster_from(vas, pvs)
}

/// The cluster as the API server would serve these VolumeAttachments and PVs.
fn cluster_from(vas: Vec<serde_json::Value>, pvs: Vec<serde_json::Value>) -> ClusterAttachments {
    fn parse<T: serde::de::DeserializeOwned>(objects: Vec<serde_json::Value>) -> Vec<T> {
        objects
            .into_iter()
            .map(|o| serde_json::from_value(o).unwrap())
            .collect()
    }
    let (vas, pvs) = (parse(vas), parse(pvs));
    ClusterAttachments::from_objects(&vas, &pvs, DRIVER, DEFAULT_MIGRATION_TIMEOUT)
}

/// An attached VolumeAttachment of `volume` to `node`, created at `created`.
fn va_created(volume: &str, node: &str, created: SystemTime) -> serde_json::Value {
    let mut va = va(&format!("va-{node}"), volume, node, DRIVER, true);
    let created = k8s_openapi::jiff::Timestamp::try_from(created).unwrap();
    va["metadata"]["creationTimestamp"] = created.to_string().into();
    va
}

/// Two nodes attached in the cluster are a migration from the second one's attach on, whether
/// the table held neither node or the first: a sync starts it there, and it times out after the
/// migration timeout like one this replica published.
#[test]
fn a_migration_read_from_the_cluster_starts_at_the_second_attach() {
    for held in [None, Some("node-a")] {
        let (clock, m) = manual();
        if let Some(node) = held {
            m.attach("pvc-m", node, RWO, None).unwrap();
        }
        let second_attach = clock.now_for_test();
        let first_attach = second_attach - Duration::from_secs(60);
        let cluster = cluster_of(vec![
            va_created("pvc-m", "node-a", first_attach),
            va_created("pvc-m", "node-b", second_attach),
        ]);
        m.sync(None, &cluster);
        assert_eq!(m.nodes("pvc-m"), ["node-a", "node-b"], "held {held:?}");
        let state = m.get("pvc-m").unwrap();
        assert_eq!(
            state.migration_started_at,
            Some(second_attach),
            "held {held:?}"
        );
        assert!(m.timed_out_migrations().is_empty(), "held {held:?}");
        clock.advance(DEFAULT_MIGRATION_TIMEOUT + Duration::from_secs(1));
        let timed_out: Vec<_> = m
            .timed_out_migrations()
            .into_iter()
            .map(|s| s.volume_id)
            .collect();
        assert_eq!(timed_out, ["pvc-m"], "held {held:?}");
    }
}

/// A fence the PV records reaches the table for a volume the table already holds, and a PV
/// without one never takes the table's fence away.
#[test]
fn a_sync_adds_the_fence_a_pv_records_and_never_drops_one() {
    let m = AttachmentManager::new();
    m.attach("pvc-f", "node-a", RWO, None).unwrap();
    assert!(!m.is_fenced("pvc-f"));
    let mut fenced = pv("pvc-f", "pvc-f", DRIVER, "ReadWriteOnce", "Filesystem");
    fenced["spec"]["csi"]["volumeAttributes"] = serde_json::json!({"nvmeFencing": "true"});
    let attached = va("va-a", "pvc-f", "node-a", DRIVER, true);
    m.sync(None, &cluster_from(vec![attached.clone()], vec![fenced]));
    assert!(m.is_fenced("pvc-f"), "the PV's fence");
    m.sync(None, &cluster_of(vec![attached]));
    assert!(m.is_fenced("pvc-f"), "kept");
}

/// Readers join without limit only when the table and the cluster both hold the volume
/// ReadOnlyMany: a two-node migration the table holds stays two nodes, whatever the PV says.
#[test]
fn a_third_node_never_joins_a_migration_from_the_cluster() {
    let m = AttachmentManager::new();
    m.attach("pvc-x", "node-a", RWX, None).unwrap();
    m.attach("pvc-x", "node-b", RWX, None).unwrap();
    let readers = ["a", "b", "c"].map(|n| {
        va(
            &format!("va-{n}"),
            "pvc-x",
            &format!("node-{n}"),
            DRIVER,
            true,
        )
    });
    let read_only_many = pv("pvc-x", "pvc-x", DRIVER, "ReadOnlyMany", "Block");
    m.sync(None, &cluster_from(readers.to_vec(), vec![read_only_many]));
    assert_eq!(m.nodes("pvc-x"), ["node-a", "node-b"]);
}

/// Another replica's attaches and detaches reach the table through the cluster: a node whose
/// VolumeAttachment is gone leaves it, an attached one joins it, a sync of one volume leaves
/// the others alone, and a node the reconciler cleared stays cleared while its
/// VolumeAttachment lingers.
#[test]
fn a_sync_follows_the_cluster_but_keeps_a_cleared_node_cleared() {
    let m = AttachmentManager::new();
    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    m.attach("pvc-4", "node-a", RWO, None).unwrap();
    let c_attached = va("va-c", "pvc-2", "node-c", DRIVER, true);
    let cluster = cluster_of(vec![c_attached.clone()]);
    m.sync(Some("pvc-1"), &cluster);
    assert!(m.nodes("pvc-1").is_empty(), "detached elsewhere");
    assert_eq!(m.nodes("pvc-4"), ["node-a"], "out of scope");
    m.sync(None, &cluster);
    assert!(m.nodes("pvc-4").is_empty());
    assert_eq!(m.nodes("pvc-2"), ["node-c"], "attached elsewhere");
    assert!(cluster.changing.is_empty());

    m.clear_gone_node("pvc-2", "node-c");
    m.sync(None, &cluster);
    assert!(
        m.nodes("pvc-2").is_empty(),
        "cleared while its attachment lingers"
    );
    m.sync(None, &cluster_of(vec![]));
    m.sync(None, &cluster);
    assert_eq!(
        m.nodes("pvc-2"),
        ["node-c"],
        "a new attachment to the node counts"
    );

    // Not yet attached, or being deleted: a change under way, which joins nothing.
    let mut deleting = va("va-d", "pvc-3", "node-d", DRIVER, true);
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    let pending = va("va-e", "pvc-5", "node-e", DRIVER, false);
    let cluster = cluster_of(vec![deleting, pending, c_attached]);
    assert_eq!(
        cluster.changing.iter().collect::<Vec<_>>(),
        ["pvc-3", "pvc-5"]
    );
    m.sync(None, &cluster);
    assert_eq!(m.nodes("pvc-3"), ["node-d"], "attached until it is gone");
    assert!(m.nodes("pvc-5").is_empty());
}

#[tokio::test]
async fn rebuild_keeps_every_reader_of_a_read_only_many_volume() {
    let api = RealApi::start().await;
    api.put(
        PVS,
        pv("pvc-rox", "pvc-rox", DRIVER, "ReadOnlyMany", "Filesystem"),
    )
    .await;
    for node in ["node-a", "node-b", "node-c"] {
        api.put(
            VAS,
            va(&format!("va-{node}"), "pvc-rox", node, DRIVER, true),
        )
        .await;
    }
    let m = AttachmentManager::new().not_ready();
    let report = rebuild(&api.client(), DRIVER, &m).await.unwrap();
    assert_eq!(report.attachments, 3);
    let held = m.get("pvc-rox").unwrap();
    assert_eq!(held.node_ids(), ["node-a", "node-b", "node-c"]);
    assert!(held.multi_node_reader && !held.is_migrating());
    // A fourth reader is admitted, a writer is not.
    assert_eq!(m.attach("pvc-rox", "node-d", ROX, None), Ok(true));
    assert!(m.attach("pvc-rox", "node-e", RWO, None).is_err());
}

/// The objects a restarted controller finds: an RWO volume attached to node-a (and pending on
/// node-z), an RWX block volume attached to node-b and node-c, created in the order given
/// (a second apart), another driver's volume, and an attachment whose PV is gone. Returns
/// the RWX volume's VolumeAttachments as stored, oldest first.
async fn seed(api: &RealApi, rwx_nodes: [&str; 2]) -> [serde_json::Value; 2] {
    let mut rwx_pv = pv("pvc-rwx", "pvc-rwx", DRIVER, "ReadWriteMany", "Block");
    rwx_pv["spec"]["csi"]["volumeAttributes"] =
        serde_json::json!({"migrationTimeoutSeconds": "120", "nvmePort": "4421"});
    api.put(
        PVS,
        pv("pvc-rwo", "pvc-rwo", DRIVER, "ReadWriteOnce", "Filesystem"),
    )
    .await;
    api.put(PVS, rwx_pv).await;
    api.put(
        PVS,
        pv(
            "pv-other",
            "vol-x",
            "ebs.csi.aws.com",
            "ReadWriteOnce",
            "Filesystem",
        ),
    )
    .await;
    let rwx_va = |node: &str| va(&format!("va-{node}"), "pvc-rwx", node, DRIVER, true);
    let older = api.put(VAS, rwx_va(rwx_nodes[0])).await;
    let newer = api.put_after(&older, VAS, rwx_va(rwx_nodes[1])).await;
    api.put(VAS, va("va-a", "pvc-rwo", "node-a", DRIVER, true))
        .await;
    api.put(
        VAS,
        va("va-other", "pv-other", "node-a", "ebs.csi.aws.com", true),
    )
    .await;
    api.put(VAS, va("va-pending", "pvc-rwo", "node-z", DRIVER, false))
        .await;
    // Its PV is gone: the PV name is the volume ID.
    api.put(VAS, va("va-nopv", "pvc-nopv", "node-d", DRIVER, true))
        .await;
    [older, newer]
}

/// Whichever of the two RWX attachments is older is the primary, whether the API server lists
/// it first (its name sorts first) or last.
#[tokio::test]
async fn rebuild_after_restart_in_either_list_order() {
    for rwx_nodes in [["node-b", "node-c"], ["node-c", "node-b"]] {
        let api = RealApi::start().await;
        let [_, newer] = seed(&api, rwx_nodes).await;
        let m = AttachmentManager::new().not_ready();
        assert!(!m.is_ready());
        let report = rebuild(&api.client(), DRIVER, &m).await.unwrap();
        assert!(m.is_ready());
        assert_eq!(report.volumes, 3, "order {rwx_nodes:?}");
        assert_eq!(report.attachments, 4);

        let table = m.list();
        assert_eq!(
            table.keys().collect::<Vec<_>>(),
            ["pvc-nopv", "pvc-rwo", "pvc-rwx"]
        );
        assert_eq!(m.nodes("pvc-rwo"), ["node-a"]);
        assert!(!table["pvc-rwo"].multi_node_block);
        assert_eq!(m.nodes("pvc-nopv"), ["node-d"]);
        let rwx = &table["pvc-rwx"];
        assert_eq!(rwx.node_ids(), rwx_nodes, "oldest is the primary");
        assert!(rwx.multi_node_block && rwx.is_migrating());
        assert_eq!(rwx.migration_started_at, Some(created_at(&newer)));
        assert_eq!(rwx.migration_timeout, Duration::from_secs(120));
        // The port its nodes connect to, for the volume's condition.
        assert_eq!(rwx.nvme_port, Some(4421));
        assert_eq!(table["pvc-rwo"].nvme_port, None);

        // The rebuilt table protects as the live one did.
        let err = m.attach("pvc-rwo", "node-b", RWO, None).unwrap_err();
        assert!(err.to_string().contains("node-a"), "{err}");
        assert_eq!(
            m.attach("pvc-rwo", "node-a", RWO, None),
            Ok(false),
            "adopts options"
        );
        assert!(matches!(
            m.attach("pvc-rwx", "node-d", RWX, None),
            Err(AttachError::MigrationLimit { .. } | AttachError::MigrationTimedOut { .. })
        ));
    }
}

/// Three attachments of an RWX volume, created a second apart in an order their names do not
/// sort in: the two oldest are kept.
#[tokio::test]
async fn rebuild_keeps_the_two_oldest_of_three() {
    let api = RealApi::start().await;
    api.put(
        PVS,
        pv("pvc-rwx", "pvc-rwx", DRIVER, "ReadWriteMany", "Block"),
    )
    .await;
    let first = api
        .put(VAS, va("va-3", "pvc-rwx", "node-3", DRIVER, true))
        .await;
    let second = api
        .put_after(&first, VAS, va("va-1", "pvc-rwx", "node-1", DRIVER, true))
        .await;
    api.put_after(&second, VAS, va("va-2", "pvc-rwx", "node-2", DRIVER, true))
        .await;
    let m = AttachmentManager::new();
    rebuild(&api.client(), DRIVER, &m).await.unwrap();
    assert_eq!(m.nodes("pvc-rwx"), ["node-3", "node-1"]);
}

#[tokio::test]
async fn rebuild_merges_and_never_forgets_a_live_attachment() {
    let api = RealApi::start().await;
    api.put(
        PVS,
        pv("pvc-1", "pvc-1", DRIVER, "ReadWriteOnce", "Filesystem"),
    )
    .await;
    let m = AttachmentManager::new();
    // Published, but the VA is not marked attached yet.
    m.attach("pvc-1", "node-a", RWO, None).unwrap();
    rebuild(&api.client(), DRIVER, &m).await.unwrap();
    assert_eq!(m.nodes("pvc-1"), ["node-a"]);
}

#[tokio::test]
async fn rebuild_fails_closed_while_the_api_errors_then_recovers() {
    let api = FakeApi::start().await;
    api.put(
        PVS,
        pv("pvc-rwo", "pvc-rwo", DRIVER, "ReadWriteOnce", "Filesystem"),
    );
    api.put(VAS, va("va-a", "pvc-rwo", "node-a", DRIVER, true));
    api.fail(VAS, None, 500, None);
    let m = Arc::new(AttachmentManager::new().not_ready());
    let err = rebuild(&api.client(), DRIVER, &m).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 500),
        "{err}"
    );
    assert!(!m.is_ready());
    assert_eq!(
        m.attach("pvc-rwo", "node-b", RWO, None),
        Err(AttachError::NotReady)
    );

    let cancel = CancellationToken::new();
    let task = tokio::spawn(rebuild_until_ready(
        api.client(),
        DRIVER.into(),
        m.clone(),
        cancel.clone(),
    ));
    // Retrying, still refused.
    assert!(
        eventually(Duration::from_secs(5), || api
            .requests()
            .iter()
            .filter(|(_, p)| p == VAS)
            .count()
            >= 2)
        .await
    );
    assert!(!m.is_ready());
    api.clear_faults();
    assert!(eventually(Duration::from_secs(10), || m.is_ready()).await);
    task.await.unwrap();
    assert_eq!(m.nodes("pvc-rwo"), ["node-a"]);
}
