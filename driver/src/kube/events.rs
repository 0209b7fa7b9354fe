//! Kubernetes Events for what an operator must know: a stale attachment cleared, a migration
//! timed out, an orphan found on the RDS, an expansion done. Events are best effort: a failure
//! is logged, never returned to the caller, because no driver operation depends on one.

use std::time::SystemTime;

use ::kube::api::{Api, ListParams, PostParams};
use ::kube::Client;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, PersistentVolume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::api_deadline::{within, CALL_TIMEOUT, LIST_TIMEOUT};

pub const REASON_STALE_ATTACHMENT_CLEARED: &str = "StaleAttachmentCleared";
pub const REASON_MIGRATION_TIMED_OUT: &str = "MigrationTimedOut";
pub const REASON_ORPHAN_FOUND: &str = "OrphanFound";
pub const REASON_ORPHAN_DELETED: &str = "OrphanDeleted";
pub const REASON_EXPANSION_DONE: &str = "ControllerExpansionDone";

/// Where events about cluster-scoped objects (PVs, the CSIDriver) are stored.
pub const CLUSTER_EVENT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Posts core/v1 Events (POST /api/v1/namespaces/{ns}/events).
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    driver: String,
    /// `reportingInstance`: the pod or host name.
    instance: String,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("driver", &self.driver)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// The PV of a volume handle and the PVC bound to it, for events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeRefs {
    pub pv: Option<ObjectReference>,
    pub pvc: Option<ObjectReference>,
}

impl EventRecorder {
    pub fn new(client: Client, driver: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            client,
            driver: driver.into(),
            instance: instance.into(),
        }
    }

    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Posts one event; errors are logged and dropped.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_publish(object, kind, reason, message).await {
            tracing::warn!(error = %e, reason, object = ?object.name, "could not post an event");
        }
    }

    pub async fn try_publish(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<Event, ::kube::Error> {
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| CLUSTER_EVENT_NAMESPACE.to_string());
        let now = Timestamp::try_from(SystemTime::now()).unwrap_or(Timestamp::UNIX_EPOCH);
        let base = object.name.as_deref().unwrap_or("rds-csi");
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{base}.")),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.chars().take(1024).collect()),
            type_: Some(kind.as_str().to_string()),
            source: Some(EventSource {
                component: Some(self.driver.clone()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            action: Some(reason.to_string()),
            reporting_component: Some(self.driver.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        within(
            CALL_TIMEOUT,
            Api::<Event>::namespaced(self.client.clone(), &namespace)
                .create(&PostParams::default(), &event),
        )
        .await
    }

    /// Finds the PV whose `csi.volumeHandle` is `volume_id` (of this driver) and its claim.
    pub async fn volume_refs(&self, volume_id: &str) -> Result<VolumeRefs, ::kube::Error> {
        let pvs = within(
            LIST_TIMEOUT,
            Api::<PersistentVolume>::all(self.client.clone()).list(&ListParams::default()),
        )
        .await?;
        Ok(pvs
            .items
            .iter()
            .find(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.csi.as_ref())
                    .is_some_and(|c| c.driver == self.driver && c.volume_handle == volume_id)
            })
            .map(volume_refs_of)
            .unwrap_or_default())
    }

    /// Posts an event on a volume's PV and on its PVC (when bound); best effort.
    pub async fn publish_for_volume(
        &self,
        volume_id: &str,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        match self.volume_refs(volume_id).await {
            Ok(refs) => {
                for object in refs.pv.iter().chain(refs.pvc.iter()) {
                    self.publish(object, kind, reason, message).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, volume = volume_id, reason,
                    "could not look up the PV for an event");
            }
        }
    }

    /// For the controller's expand path: the RDS disk of `volume_id` now has `bytes`.
    pub async fn expansion_done(&self, volume_id: &str, bytes: u64) {
        let message = format!("volume {volume_id} was expanded on the RDS to {bytes} bytes");
        self.publish_for_volume(
            volume_id,
            EventType::Normal,
            REASON_EXPANSION_DONE,
            &message,
        )
        .await;
    }

    /// The CSIDriver object: the anchor for events about things without a PV (orphans).
    pub fn driver_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("storage.k8s.io/v1".into()),
            kind: Some("CSIDriver".into()),
            name: Some(self.driver.clone()),
            ..ObjectReference::default()
        }
    }
}

pub fn volume_refs_of(pv: &PersistentVolume) -> VolumeRefs {
    let pv_ref = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: pv.metadata.name.clone(),
        uid: pv.metadata.uid.clone(),
        ..ObjectReference::default()
    };
    let pvc = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .filter(|c| c.name.is_some() && c.namespace.is_some())
        .map(|c| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            name: c.name.clone(),
            namespace: c.namespace.clone(),
            uid: c.uid.clone(),
            ..ObjectReference::default()
        });
    VolumeRefs {
        pv: Some(pv_ref),
        pvc,
    }
}
