//! An encrypted volume is only usable when kubelet hands its node the passphrase, which it does
//! when the StorageClass names a node-stage Secret. The external-provisioner strips every
//! `csi.storage.k8s.io/` key from the parameters CreateVolume receives, so the controller reads
//! the class itself, through the claim `--extra-create-metadata` names.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use tonic::Status;

use crate::kube::api_deadline::{within, CALL_TIMEOUT};
use crate::node::crypt::PASSPHRASE_KEY;

use super::params::keys;

pub const NODE_STAGE_SECRET_NAME: &str = "csi.storage.k8s.io/node-stage-secret-name";
pub const NODE_STAGE_SECRET_NAMESPACE: &str = "csi.storage.k8s.io/node-stage-secret-namespace";
/// Added to the parameters by the external-provisioner's `--extra-create-metadata`.
const CLAIM_NAME: &str = "csi.storage.k8s.io/pvc/name";
const CLAIM_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";

pub(super) struct ClassLookup {
    pub client: ::kube::Client,
}

impl ClassLookup {
    /// Refuses (InvalidArgument) an encrypted volume whose claim's StorageClass names no
    /// node-stage Secret. Whatever cannot be read (no claim named, the API not answering) lets
    /// the volume be made: the node still refuses to stage it without a passphrase.
    pub async fn check_node_stage_secret(
        &self,
        parameters: &HashMap<String, String>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Status> {
        let (Some(claim), Some(namespace)) =
            (parameters.get(CLAIM_NAME), parameters.get(CLAIM_NAMESPACE))
        else {
            tracing::debug!("no claim named (--extra-create-metadata): the class is not checked");
            return Ok(());
        };
        // Bounded to half of what is left, so that CreateVolume itself still has time.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let limit = CALL_TIMEOUT
            .min(left / 2)
            .max(std::time::Duration::from_millis(100));
        let claims: ::kube::Api<PersistentVolumeClaim> =
            ::kube::Api::namespaced(self.client.clone(), namespace);
        let class = match within(limit, claims.get_opt(claim)).await {
            Ok(found) => found
                .and_then(|c| c.spec)
                .and_then(|s| s.storage_class_name),
            Err(e) => {
                tracing::warn!(claim, namespace, error = %e,
                    "cannot read the claim of an encrypted volume; its class is not checked");
                return Ok(());
            }
        };
        let Some(class) = class else {
            return Ok(());
        };
        let classes: ::kube::Api<StorageClass> = ::kube::Api::all(self.client.clone());
        let parameters = match within(limit, classes.get_opt(&class)).await {
            Ok(Some(sc)) => sc.parameters.unwrap_or_default(),
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(class, error = %e,
                    "cannot read the StorageClass of an encrypted volume; it is not checked");
                return Ok(());
            }
        };
        let missing: Vec<&str> = [NODE_STAGE_SECRET_NAME, NODE_STAGE_SECRET_NAMESPACE]
            .into_iter()
            .filter(|k| !parameters.contains_key(*k))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "parameters.{}: StorageClass {class} encrypts its volumes but sets no {}, so no node \
             would be given the passphrase (a Secret with the key {PASSPHRASE_KEY})",
            keys::ENCRYPTED,
            missing.join(" or ")
        )))
    }
}
