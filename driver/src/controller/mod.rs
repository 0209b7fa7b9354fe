//! The CSI Controller service: volumes and snapshots as file-backed disks on the RDS.

pub mod caps;
mod classes;
mod cluster;
mod copy_source;
mod disks;
pub mod fence;
pub mod health;
mod leftovers;
pub mod page;
pub mod params;
pub mod publish;
mod snapshots;
mod volumes;

use std::collections::HashMap;
use std::sync::Arc;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::controller_service_capability::rpc::Type as RpcType;
use csi_proto::v1::*;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::grpc::{deadline, rds_status, KeyedLocks};
use crate::ids::{self, parse_volume_id, ManagedFile};
use crate::kube::attachments::{AttachmentManager, AttachmentSync};
use crate::rds::command::{AllocSize, NvmeExport, RdsPath, Slot};
use crate::rds::{Disk, FileInfo, RdsClient, RdsClock, RdsError};
use caps::{check_capabilities, is_block};
use health::Backing;
use page::{Listing, Page};
use params::{keys, ParamDefaults, VolumeParams};

pub const TOPOLOGY_KEY: &str = "topology.rds.csi.srvlab.io/zone";
pub const TOPOLOGY_VALUE: &str = "default";
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub defaults: ParamDefaults,
    /// Size of a volume whose request gives none.
    pub default_size: u64,
    /// Largest volume accepted.
    pub max_size: u64,
    /// Where volumes may be published without Kubernetes.
    pub known_nodes: publish::KnownNodes,
    /// `--nvme-fencing`: volumes with `nvmeFencing` are fenced on the RDS, with identities
    /// derived from this key (`--fence-key-file`).
    pub fencing: Option<crate::fence_key::FenceKey>,
}

impl ControllerConfig {
    pub fn new(defaults: ParamDefaults) -> Self {
        Self {
            defaults,
            default_size: GIB,
            max_size: 16 << 40,
            known_nodes: publish::KnownNodes::Any,
            fencing: None,
        }
    }
}

pub struct ControllerService {
    rds: Arc<RdsClient>,
    config: ControllerConfig,
    /// Shared with the fence's repair pass.
    locks: Arc<KeyedLocks>,
    /// Which nodes hold each volume (in memory, or rebuilt from VolumeAttachments).
    attachments: Arc<AttachmentManager>,
    /// Posts events on the PV/PVC when Kubernetes is configured.
    events: Option<crate::kube::events::EventRecorder>,
    /// Whether a node exists and its attach limit, checked before publishing to it.
    node_source: publish::NodeSource,
    /// With `--nvme-fencing`.
    fence: Option<fence::Fence>,
    /// With Kubernetes: an encrypted volume's StorageClass is checked for its node-stage Secret.
    classes: Option<classes::ClassLookup>,
    /// The last condition of each volume, for the `abnormal_volumes` gauge.
    health: health::HealthBook,
    /// With Kubernetes: re-reads the cluster's attachments before each decision, so any
    /// replica answers from what every replica did.
    sync: Option<AttachmentSync>,
}

/// A fence that could not be set: the call fails (Unavailable, so it is retried) rather than
/// leave a volume open or closed against the attachment table.
fn fence_status(id: &Slot, e: RdsError) -> Status {
    Status::unavailable(format!(
        "could not set the NVMe/TCP fence (nvme-tcp-server-allow-host-name) of volume {id}: {e}"
    ))
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

fn topology() -> Vec<Topology> {
    vec![Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), TOPOLOGY_VALUE.to_string())]),
    }]
}

/// Bytes to allocate for a capacity range: at least `required`, at most `limit` (0 = none),
/// rounded up to whole MiB.
fn allocation(
    range: Option<&CapacityRange>,
    config: &ControllerConfig,
) -> Result<AllocSize, Status> {
    let (required, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if required < 0 || limit < 0 {
        return Err(Status::invalid_argument(
            "capacity_range: sizes must not be negative",
        ));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit != 0 && required > limit {
        return Err(Status::invalid_argument(format!(
            "capacity_range: required_bytes {required} exceeds limit_bytes {limit}"
        )));
    }
    let wanted = match (required, limit) {
        (0, 0) => config.default_size,
        (0, limit) => config.default_size.min(limit),
        (required, _) => required,
    };
    if wanted > config.max_size {
        return Err(Status::out_of_range(format!(
            "capacity_range: {wanted} bytes is more than the largest volume, {} bytes",
            config.max_size
        )));
    }
    let size = AllocSize::round_up(wanted)
        .map_err(|e| Status::out_of_range(format!("capacity_range: {e}")))?;
    if limit != 0 && size.bytes() > limit {
        return Err(Status::out_of_range(format!(
            "capacity_range: volumes are allocated in whole MiB; {} bytes does not fit under limit_bytes {limit}",
            size.bytes()
        )));
    }
    Ok(size)
}

impl ControllerService {
    /// A controller whose attachment table lives in memory only (no Kubernetes).
    pub fn new(rds: Arc<RdsClient>, config: ControllerConfig) -> Self {
        Self::with_attachments(rds, config, Arc::new(AttachmentManager::new()))
    }

    /// A controller sharing `attachments` with the Kubernetes integration (rebuild, reconciler).
    pub fn with_attachments(
        rds: Arc<RdsClient>,
        config: ControllerConfig,
        attachments: Arc<AttachmentManager>,
    ) -> Self {
        let locks = Arc::new(KeyedLocks::default());
        let fence = config.fencing.clone().map(|key| {
            fence::Fence::new(
                Arc::clone(&rds),
                Arc::clone(&attachments),
                Arc::clone(&locks),
                config.defaults.base_paths.clone(),
                key,
            )
        });
        Self {
            rds,
            node_source: publish::NodeSource::Config(config.known_nodes.clone()),
            config,
            locks,
            attachments,
            events: None,
            fence,
            classes: None,
            health: health::HealthBook::default(),
            sync: None,
        }
    }

    /// Take nodes from the cluster: publishes to nodes it does not know are NotFound (as the
    /// CSI spec asks), and a node's attach limit is what kubelet registered for `driver` in its
    /// CSINode.
    pub fn with_node_lookup(mut self, client: ::kube::Client, driver: &str) -> Self {
        self.node_source = publish::NodeSource::Kube(Box::new(publish::ClusterNodes {
            nodes: ::kube::Api::all(client.clone()),
            csi_nodes: ::kube::Api::all(client),
            driver: driver.to_string(),
        }));
        self
    }

    /// Check that the StorageClass of an encrypted volume names a node-stage Secret (read
    /// through the claim the external-provisioner's `--extra-create-metadata` names).
    pub fn with_class_lookup(mut self, client: ::kube::Client) -> Self {
        self.classes = Some(classes::ClassLookup { client });
        self
    }

    /// Decide publishes, unpublishes, expansions, deletions and fence repairs from the
    /// cluster's VolumeAttachments as they are at that moment (re-read under the volume's
    /// lock), not from what this replica remembers: with two replicas, either may be asked.
    pub fn with_attachment_sync(mut self, sync: AttachmentSync) -> Self {
        self.fence = self.fence.map(|f| f.with_sync(sync.clone()));
        self.sync = Some(sync);
        self
    }

    /// Tell operators what happened (expansions) through Kubernetes events.
    pub fn with_events(mut self, events: crate::kube::events::EventRecorder) -> Self {
        self.fence = self.fence.map(|f| f.with_events(events.clone()));
        self.events = Some(events);
        self
    }

    /// The fences, with `--nvme-fencing`: for the periodic repair pass.
    pub fn fence(&self) -> Option<&fence::Fence> {
        self.fence.as_ref()
    }

    pub fn attachments(&self) -> &Arc<AttachmentManager> {
        &self.attachments
    }

    /// Where the driver's volumes and snapshots live: the base path, then any others.
    fn bases(&self) -> &[RdsPath] {
        &self.config.defaults.base_paths
    }

    /// The volume ID of a disk this driver made.
    fn owned_volume(&self, disk: &Disk) -> Option<Slot> {
        match ids::classify_disk(self.bases(), disk)? {
            ManagedFile::Volume(id) => Some(id),
            ManagedFile::Snapshot { .. } => None,
        }
    }

    /// Unavailable until the attachment table has been rebuilt from the cluster after a start.
    fn require_attachments_ready(&self) -> Result<(), Status> {
        if self.attachments.is_ready() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "the attachment table is being rebuilt from the cluster; try again",
            ))
        }
    }

    /// The disk of the driver's volume `raw`, or NotFound (also for IDs that cannot exist and for
    /// disks of the same name that the driver did not make).
    async fn existing_volume(&self, raw: &str, deadline: Instant) -> Result<(Slot, Disk), Status> {
        let not_found = || Status::not_found(format!("volume {raw} does not exist"));
        let id = parse_volume_id(raw).ok_or_else(not_found)?;
        let disk = self
            .rds
            .get_disk(&id, deadline)
            .await
            .map_err(rds_status)?
            .ok_or_else(not_found)?;
        if self.owned_volume(&disk).is_none() {
            return Err(not_found());
        }
        Ok((id, disk))
    }

    /// Removes a disk, then its file (in one exec where the RDS runs scripts): RouterOS keeps
    /// the file after `/disk remove`. If the file removal fails the call fails, and the CO's
    /// retry finds the file by the leftover search.
    async fn remove_disk_and_file(
        &self,
        id: &Slot,
        disk: &Disk,
        deadline: Instant,
    ) -> Result<(), Status> {
        let path = Self::file_path_of(disk)?;
        if self.rds.scripting(deadline).await.map_err(rds_status)? {
            match self.rds.remove_scripted(id, &path, deadline).await {
                // Refused as a script: the commands one by one say what RouterOS thinks.
                Err(RdsError::InvalidArgument(_)) => {}
                done => return done.map_err(rds_status),
            }
        }
        self.rds
            .remove_disk(id, deadline)
            .await
            .map_err(rds_status)?;
        self.rds
            .remove_file(&path, deadline)
            .await
            .map_err(rds_status)
    }

    /// The backing file of a disk, for its `last-modified`.
    async fn file_of(&self, disk: &Disk, deadline: Instant) -> Result<Option<FileInfo>, Status> {
        let path = Self::file_path_of(disk)?;
        self.rds.get_file(&path, deadline).await.map_err(rds_status)
    }

    /// The RDS's clock, to read the times it prints; None (and no times) when it cannot be read.
    async fn clock(&self, deadline: Instant) -> Option<RdsClock> {
        match self.rds.clock(deadline).await {
            Ok(clock) => Some(clock),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the RDS clock; snapshot times are left out");
                None
            }
        }
    }

    fn volume_context(disk: &Disk, params: Option<&VolumeParams>) -> HashMap<String, String> {
        let mut ctx = HashMap::new();
        if let Some(nqn) = &disk.nqn {
            ctx.insert(keys::NQN.into(), nqn.clone());
        }
        if let Some(port) = disk.nvme_port {
            ctx.insert(keys::NVME_PORT.into(), port.to_string());
        }
        if let Some(path) = &disk.file_path {
            ctx.insert(keys::FILE_PATH.into(), path.clone());
        }
        if let Some(p) = params {
            ctx.insert(keys::NVME_ADDRESS.into(), p.nvme_address.clone());
            ctx.insert(keys::FS_TYPE.into(), p.fs_type.clone());
            for (k, v) in &p.passthrough {
                ctx.insert((*k).to_string(), v.clone());
            }
        }
        ctx
    }

    fn volume_of(&self, disk: &Disk, id: &Slot, params: Option<&VolumeParams>) -> Volume {
        Volume {
            capacity_bytes: disk.size_bytes.unwrap_or_default() as i64,
            volume_id: id.to_string(),
            volume_context: Self::volume_context(disk, params),
            content_source: None,
            accessible_topology: topology(),
        }
    }

    /// The last step of every call that reports a volume usable (create, expand, publish): its
    /// disk is exported, and a fenced one allows exactly its holders. A fenced volume is added
    /// unexported and exported here with its fence in one command, so no host can reach it (or
    /// a copy still filling it) before its fence is set.
    async fn usable(
        &self,
        id: &Slot,
        disk: Disk,
        fenced: bool,
        export: NvmeExport,
        deadline: tokio::time::Instant,
    ) -> Result<Disk, Status> {
        if !fenced {
            return self
                .ensure_exported(id, disk, export, deadline)
                .await
                .map_err(rds_status);
        }
        let Some(fence) = &self.fence else {
            return Err(Status::failed_precondition(format!(
                "volume {id} is fenced (nvmeFencing) but this controller runs without \
                 --nvme-fencing"
            )));
        };
        fence
            .apply_exported(id, disk, &export, deadline)
            .await
            .map_err(|e| fence_status(id, e))
    }

    fn attached_nodes(&self, id: &str) -> Vec<String> {
        self.attachments.nodes(id)
    }

    /// Brings the attachments of volume `id` (every volume: None) up to date from the cluster
    /// (with Kubernetes); a caller that decides holds the volume's lock. Unavailable (retried)
    /// when the cluster cannot be read by `deadline`: deciding from an old table could attach
    /// an RWO volume to a second node or unexport a disk in use. Calls that only report log
    /// the error and answer from the table.
    async fn refresh_attachments(&self, id: Option<&str>, deadline: Instant) -> Result<(), Status> {
        let Some(sync) = &self.sync else {
            return Ok(());
        };
        let which = id.map_or("the".to_string(), |id| format!("volume {id}'s"));
        match tokio::time::timeout_at(deadline, sync.refresh(id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "cannot read {which} VolumeAttachments from the API server: {e}"
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "the API server did not list {which} VolumeAttachments in time"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        self.volume_create(request).await
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.volume_delete(request).await
    }

    async fn controller_publish_volume(
        &self,
        request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        self.publish(request).await
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        self.unpublish(request).await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let raw = required(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        self.existing_volume(raw, deadline).await?;
        let response = match check_capabilities(&req.volume_capabilities, "volume_capabilities") {
            Ok(()) => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            },
            Err(message) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let page = Page::parse(Listing::Volumes, req.max_entries, &req.starting_token)?;
        let disks = self.rds.list_disks(deadline).await.map_err(rds_status)?;
        let files = self.backing_files(deadline).await;
        if let Err(e) = self.refresh_attachments(None, deadline).await {
            tracing::warn!(error = %e.message(), "reporting the attachment table as it is");
        }
        let attachments = self.attachments.list();
        let mut book = std::collections::BTreeMap::new();
        let items: Vec<_> = disks
            .iter()
            .filter_map(|disk| {
                let id = self.owned_volume(disk)?;
                let nodes = attachments
                    .get(id.as_str())
                    .map(|a| a.node_ids())
                    .unwrap_or_default();
                let backing = files
                    .as_ref()
                    .map_or(Backing::Unread, |files| Backing::of(disk, files));
                let problems = self.problems(&id, disk, backing);
                book.insert(
                    id.to_string(),
                    problems.iter().map(|p| p.reason).collect::<Vec<_>>(),
                );
                let entry = list_volumes_response::Entry {
                    volume: Some(self.volume_of(disk, &id, None)),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids: nodes,
                        volume_condition: Some(health::condition_of(&problems)),
                    }),
                };
                Some((id.to_string(), entry))
            })
            .collect();
        self.health.replace(book);
        let (entries, next_token) = page.of(items);
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        check_capabilities(&req.volume_capabilities, "volume_capabilities")
            .or_else(|e| {
                if req.volume_capabilities.is_empty() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(Status::invalid_argument)?;
        if let Some(t) = &req.accessible_topology {
            if t.segments
                .iter()
                .any(|(k, v)| k != TOPOLOGY_KEY || v != TOPOLOGY_VALUE)
            {
                return Ok(Response::new(GetCapacityResponse::default()));
            }
        }
        let params = VolumeParams::parse(&req.parameters, &self.config.defaults).or_else(|e| {
            // Capacity does not need an NVMe address; only the path matters here.
            if e.message().contains("nvmeAddress: not set") {
                let mut defaults = self.config.defaults.clone();
                defaults.nvme_address = Some("0.0.0.0".into());
                VolumeParams::parse(&req.parameters, &defaults)
            } else {
                Err(e)
            }
        })?;
        let capacity = self
            .rds
            .capacity(&params.dir, deadline)
            .await
            .map_err(rds_status)?;
        let free = capacity.free_bytes;
        // What can really be allocated: whole MiB, within the size limit.
        let max = (free - free % MIB).min(self.config.max_size);
        Ok(Response::new(GetCapacityResponse {
            available_capacity: free as i64,
            maximum_volume_size: Some(max as i64),
            minimum_volume_size: Some(MIB as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = [
            RpcType::CreateDeleteVolume,
            RpcType::PublishUnpublishVolume,
            RpcType::ListVolumes,
            RpcType::GetCapacity,
            RpcType::CreateDeleteSnapshot,
            RpcType::ListSnapshots,
            RpcType::CloneVolume,
            RpcType::ExpandVolume,
            RpcType::ListVolumesPublishedNodes,
            RpcType::GetVolume,
            RpcType::VolumeCondition,
            RpcType::GetSnapshot,
            RpcType::SingleNodeMultiWriter,
            RpcType::PublishReadonly,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        self.snapshot_create(request).await
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        self.snapshot_delete(request).await
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        self.snapshot_list(request).await
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        self.snapshot_get(request).await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let raw = required(&req.volume_id, "volume_id")?;
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        let size = allocation(Some(range), &self.config)?;
        let _guard = self.locks.lock(raw, deadline).await?;
        let (id, disk) = self.existing_volume(raw, deadline).await?;
        // Whether a node uses it decides whether the disk may be unexported to resize.
        self.refresh_attachments(Some(id.as_str()), deadline)
            .await?;
        // Filesystems need the node to grow them, even when this call is a retry at the same size;
        // block volumes never do (a pending node expansion would block them forever).
        let node_expansion_required = !req.volume_capability.as_ref().is_some_and(is_block);
        let current = disk.size_bytes.unwrap_or_default();
        // Read before the resize, which may unexport the disk.
        let export = Self::export_for(&id, &disk, self.config.defaults.nvme_port);
        let fenced = self
            .fence
            .as_ref()
            .is_some_and(|f| f.is_fenced(id.as_str(), &disk));
        if self.fence.is_some() && !disk.nvme_export && !fenced {
            // An unexported disk need not show its fence, and an expansion carries no volume
            // context: exporting it could open a fenced volume to any host.
            return Err(Status::failed_precondition(format!(
                "the disk of volume {id} is not exported, and this call cannot tell whether the \
                 volume is fenced (an expansion carries no volume context): a ControllerPublish \
                 or CreateVolume retry exports it with its fence, and the expansion completes \
                 after that"
            )));
        }
        let disk = if current >= size.bytes() {
            disk
        } else {
            let resized = match self.grow(&id, &disk, size, deadline).await {
                Ok(resized) => resized,
                Err(e) => {
                    // The resize may have failed with the export off: export the disk again
                    // (with its fence) before failing, so the volume stays reachable.
                    if let Ok(Some(now)) = self.rds.get_disk(&id, deadline).await {
                        if let Err(again) = self.usable(&id, now, fenced, export, deadline).await {
                            tracing::warn!(volume = %id, error = %again,
                                "could not export the disk again after a failed resize");
                        }
                    }
                    return Err(rds_status(e));
                }
            };
            tracing::info!(volume = %id, from = current, to = size.bytes(), "volume expanded");
            self.expansion_event(id.as_str(), size.bytes());
            resized
        };
        // Also a retry after an expansion that could not export the disk again.
        let disk = self.usable(&id, disk, fenced, export, deadline).await?;
        let capacity = disk.size_bytes.unwrap_or(size.bytes()).max(current);
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: capacity as i64,
            node_expansion_required,
        }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        let raw = required(&req.volume_id, "volume_id")?;
        let (id, disk) = match self.existing_volume(raw, deadline).await {
            Err(e) if e.code() == tonic::Code::NotFound => {
                self.health.forget(raw);
                return Err(e);
            }
            found => found?,
        };
        let file = self.backing_file(&id, &disk, deadline).await;
        if let Err(e) = self.refresh_attachments(Some(id.as_str()), deadline).await {
            tracing::warn!(volume = %id, error = %e.message(), "reporting the attachment table as it is");
        }
        let backing = match &file {
            Some(Some(file)) => Backing::Found(file),
            Some(None) => Backing::Missing,
            None => Backing::Unread,
        };
        Ok(Response::new(ControllerGetVolumeResponse {
            volume: Some(self.volume_of(&disk, &id, None)),
            status: Some(controller_get_volume_response::VolumeStatus {
                published_node_ids: self.attached_nodes(id.as_str()),
                volume_condition: Some(self.condition(&id, &disk, backing)),
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not supported",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ControllerConfig {
        ControllerConfig::new(ParamDefaults {
            base_paths: vec![RdsPath::new("/p/csi").unwrap()],
            nvme_address: None,
            nvme_port: crate::rds::Port::new(4420).unwrap(),
        })
    }

    fn range(required: i64, limit: i64) -> CapacityRange {
        CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    #[test]
    fn allocation_rounds_up_and_respects_limits() {
        let c = config();
        assert_eq!(allocation(None, &c).unwrap().bytes(), GIB);
        assert_eq!(
            allocation(Some(&range(3 * GIB as i64 / 2, 0)), &c)
                .unwrap()
                .bytes(),
            3 * GIB / 2
        );
        assert_eq!(allocation(Some(&range(1, 0)), &c).unwrap().bytes(), MIB);
        assert_eq!(
            allocation(Some(&range(0, 10 * MIB as i64)), &c)
                .unwrap()
                .bytes(),
            10 * MIB
        );
        let code = |r| allocation(Some(&r), &c).unwrap_err().code();
        assert_eq!(code(range(2, 1)), tonic::Code::InvalidArgument);
        assert_eq!(code(range(-1, 0)), tonic::Code::InvalidArgument);
        assert_eq!(
            code(range((17u64 << 40) as i64, 0)),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            code(range(MIB as i64 + 1, MIB as i64 + 1)),
            tonic::Code::OutOfRange
        );
    }
}
