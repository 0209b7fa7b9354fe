//! The cluster's side of the attachment table: this driver's VolumeAttachments and the PVs they
//! name, read from the API server to rebuild the table at start and to bring it up to date
//! before each decision, so any replica answers from what every replica has done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::kube::api::{Api, ListParams};
use ::kube::Client;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::VolumeAttachment;

use super::{
    clamp_migration_timeout, AttachmentManager, AttachmentState, NodeAttachment,
    MIGRATION_TIMEOUT_KEY, NVME_FENCING_KEY, NVME_PORT_KEY,
};
use crate::ids::parse_volume_id;
use crate::kube::api_deadline::{within, LIST_TIMEOUT};

fn by_name(pvs: &[PersistentVolume]) -> HashMap<&str, &PersistentVolume> {
    pvs.iter()
        .filter_map(|pv| Some((pv.metadata.name.as_deref()?, pv)))
        .collect()
}

/// The volume ID a VolumeAttachment of `driver` is for, and its PV when it still exists.
fn volume_of<'a>(
    va: &VolumeAttachment,
    pvs: &HashMap<&str, &'a PersistentVolume>,
    driver: &str,
) -> Option<(String, Option<&'a PersistentVolume>)> {
    let pv_name = va
        .spec
        .source
        .persistent_volume_name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    let pv = pvs.get(pv_name).copied();
    let handle = pv
        .and_then(|pv| pv.spec.as_ref()?.csi.as_ref())
        .filter(|csi| csi.driver == driver)
        .map(|csi| csi.volume_handle.clone());
    // Without the PV, fall back to its name: provisioned PVs are named `pvc-<uuid>`, which is
    // also their volume ID.
    match handle.or_else(|| parse_volume_id(pv_name).map(|s| s.to_string())) {
        Some(volume) => Some((volume, pv)),
        None => {
            tracing::debug!(
                pv = pv_name,
                "VolumeAttachment without a usable PV; ignored"
            );
            None
        }
    }
}

/// This driver's attachments as the API server shows them at one moment.
#[derive(Debug, Clone, Default)]
pub struct ClusterAttachments {
    /// The attached VolumeAttachments, as attachment states ([`states_from`]).
    pub states: Vec<AttachmentState>,
    /// Per volume, every node with a VolumeAttachment: attached or not, being deleted or not.
    /// A node without one was detached, by whichever replica.
    pub with_attachment: HashMap<String, BTreeSet<String>>,
    /// Volumes with an attach or detach under way: a VolumeAttachment not yet attached, or
    /// being deleted.
    pub changing: BTreeSet<String>,
}

impl ClusterAttachments {
    pub fn from_objects(
        vas: &[VolumeAttachment],
        pvs: &[PersistentVolume],
        driver: &str,
        default_timeout: Duration,
    ) -> Self {
        let mut out = Self {
            states: states_from(vas, pvs, driver, default_timeout),
            ..Self::default()
        };
        let pvs = by_name(pvs);
        for va in vas.iter().filter(|va| va.spec.attacher == driver) {
            let Some((volume, _)) = volume_of(va, &pvs, driver) else {
                continue;
            };
            let attached = va.status.as_ref().is_some_and(|s| s.attached);
            if !attached || va.metadata.deletion_timestamp.is_some() {
                out.changing.insert(volume.clone());
            }
            out.with_attachment
                .entry(volume)
                .or_default()
                .insert(va.spec.node_name.clone());
        }
        out
    }

    /// Reads every VolumeAttachment and PV, each list bounded by the list timeout.
    pub async fn read(
        client: &Client,
        driver: &str,
        default_timeout: Duration,
    ) -> Result<Self, ::kube::Error> {
        let vas = within(
            LIST_TIMEOUT,
            Api::<VolumeAttachment>::all(client.clone()).list(&ListParams::default()),
        )
        .await?;
        let pvs = within(
            LIST_TIMEOUT,
            Api::<PersistentVolume>::all(client.clone()).list(&ListParams::default()),
        )
        .await?;
        Ok(Self::from_objects(
            &vas.items,
            &pvs.items,
            driver,
            default_timeout,
        ))
    }
}

/// Brings an attachment table up to date from the API server before a decision: the other
/// replicas' publishes and unpublishes reach the table only through the objects they leave.
#[derive(Clone)]
pub struct AttachmentSync {
    client: Client,
    driver: String,
    manager: Arc<AttachmentManager>,
}

impl AttachmentSync {
    pub fn new(client: Client, driver: &str, manager: Arc<AttachmentManager>) -> Self {
        Self {
            client,
            driver: driver.to_string(),
            manager,
        }
    }

    /// Re-reads the cluster and syncs `volume` (every volume: None) into the table; what it
    /// read, for callers that also want to know what is changing. The caller holds the
    /// volume's lock when it names one.
    pub async fn refresh(&self, volume: Option<&str>) -> Result<ClusterAttachments, ::kube::Error> {
        let cluster = ClusterAttachments::read(
            &self.client,
            &self.driver,
            self.manager.default_migration_timeout(),
        )
        .await?;
        self.manager.sync(volume, &cluster);
        Ok(cluster)
    }
}

/// (creation time, VA name, node): sorts VAs by age, then name.
type VaKey<'a> = (SystemTime, &'a str, &'a str);

/// Builds attachment states from this driver's attached VolumeAttachments and the PVs they
/// name. Per volume the VAs are ordered by creation time (then name), so the result does not
/// depend on list order: the oldest is the primary, the second's creation starts the migration,
/// and any further VA is ignored with a warning, except for ReadOnlyMany PVs, whose readers are
/// all kept.
pub fn states_from(
    vas: &[VolumeAttachment],
    pvs: &[PersistentVolume],
    driver: &str,
    default_timeout: Duration,
) -> Vec<AttachmentState> {
    let pvs = by_name(pvs);
    let mut by_volume: BTreeMap<String, (Option<&PersistentVolume>, Vec<VaKey<'_>>)> =
        BTreeMap::new();
    for va in vas {
        let attached = va.status.as_ref().is_some_and(|s| s.attached);
        if va.spec.attacher != driver || !attached {
            continue;
        }
        let Some((volume, pv)) = volume_of(va, &pvs, driver) else {
            continue;
        };
        let created = va
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0));
        let name = va.metadata.name.as_deref().unwrap_or_default();
        let entry = by_volume.entry(volume).or_insert((pv, Vec::new()));
        entry.1.push((created, name, va.spec.node_name.as_str()));
    }
    by_volume
        .into_iter()
        .map(|(volume, (pv, mut vas))| {
            vas.sort();
            let mut seen = std::collections::HashSet::new();
            vas.retain(|v| seen.insert(v.2));
            let spec = pv.and_then(|pv| pv.spec.as_ref());
            let modes: &[String] = spec
                .and_then(|s| s.access_modes.as_deref())
                .unwrap_or_default();
            let multi_node_block = spec.is_some_and(|s| s.volume_mode.as_deref() == Some("Block"))
                && modes.iter().any(|m| m == "ReadWriteMany");
            // ReadOnlyMany alone is published MULTI_NODE_READER_ONLY: every reader is kept.
            let multi_node_reader = modes.iter().any(|m| m == "ReadOnlyMany")
                && !modes.iter().any(|m| m.starts_with("ReadWrite"));
            if vas.len() > 2 && !multi_node_reader {
                tracing::warn!(volume = %volume, count = vas.len(),
                    "more than two attached VolumeAttachments; keeping the two oldest");
                vas.truncate(2);
            }
            let attributes = spec.and_then(|s| s.csi.as_ref()?.volume_attributes.as_ref());
            let fenced = attributes
                .and_then(|a| a.get(NVME_FENCING_KEY))
                .is_some_and(|v| v == "true");
            let migration_timeout = attributes
                .and_then(|a| a.get(MIGRATION_TIMEOUT_KEY)?.trim().parse::<u64>().ok())
                .map_or(default_timeout, |secs| {
                    clamp_migration_timeout(Duration::from_secs(secs))
                });
            let nvme_port = attributes.and_then(|a| a.get(NVME_PORT_KEY)?.trim().parse().ok());
            AttachmentState {
                migration_started_at: vas.get(1).filter(|_| !multi_node_reader).map(|v| v.0),
                nodes: vas
                    .iter()
                    .map(|(at, _, node)| NodeAttachment {
                        node: node.to_string(),
                        attached_at: *at,
                        options: None,
                    })
                    .collect(),
                volume_id: volume,
                multi_node_block,
                multi_node_reader,
                migration_timeout,
                fenced,
                nvme_port,
            }
        })
        .collect()
}

/// What a rebuild found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub volumes: usize,
    pub attachments: usize,
}

/// Lists VolumeAttachments and PVs and merges this driver's attachments into `manager`, then
/// marks it ready. On an API error nothing changes and the manager stays as it was.
pub async fn rebuild(
    client: &Client,
    driver: &str,
    manager: &AttachmentManager,
) -> Result<RebuildReport, ::kube::Error> {
    let states = ClusterAttachments::read(client, driver, manager.default_migration_timeout())
        .await?
        .states;
    let report = RebuildReport {
        volumes: states.len(),
        attachments: states.iter().map(|s| s.nodes.len()).sum(),
    };
    manager.merge(states);
    manager.set_ready(true);
    tracing::info!(
        volumes = report.volumes,
        attachments = report.attachments,
        "attachment state rebuilt from VolumeAttachments"
    );
    Ok(report)
}

/// Retries `rebuild` with capped backoff until it succeeds or `cancel` fires. Publishes are
/// refused (Unavailable) meanwhile: admitting them without the cluster's view could attach an
/// RWO volume to a second node.
pub async fn rebuild_until_ready(
    client: Client,
    driver: String,
    manager: Arc<AttachmentManager>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        match rebuild(&client, &driver, &manager).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay,
                    "cannot rebuild attachments from VolumeAttachments; publishes wait");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
