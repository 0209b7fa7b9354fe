//! The workers: each operation is one random CSI call (or a stage/publish/write cycle) on a
//! small pool of names, with the fault it drew injected just before it, and the model's check
//! of the reply after it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use csi_proto::v1::*;
use e2e::{create_request, mount_cap, Env, MIB, NODE_ID};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{Mutex, RwLock};
use tonic::transport::Channel;
use tonic::Request;

use crate::faults::{self, Adds, Counts, Fault, Target};
use crate::fence::{self, Oracle};
use crate::model::{Call, Known, Model};

pub const VOLUMES: usize = 6;
pub const SNAPSHOTS: usize = 3;
/// The content of a new volume: no token written yet.
const NO_TOKEN: u64 = u64::MAX;
/// Each call's deadline, as a sidecar would set it.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);
/// Operations between two quiet points, where no call is in flight and the fences are checked.
const QUIET_EVERY: usize = 25;

pub struct Soak {
    pub env: RwLock<Env>,
    pub model: Model,
    pub seed: u64,
    /// The next operation's number; held while a worker takes one, and through a quiet point.
    pub next_op: Mutex<usize>,
    /// Held (read) by every operation while it runs; a quiet point takes it (write) once every
    /// earlier operation is done.
    pub running: RwLock<()>,
    pub ops: usize,
    pub faults: Counts,
    pub root: bool,
    /// Progress lines every 1,000 operations.
    pub progress: bool,
    pub verbose: bool,
    /// Whether operations inject the faults they draw (`--no-faults`: they still draw them, so
    /// the calls are the same).
    pub inject: bool,
    /// Tokens read back and compared with the one written last (or copied).
    pub data_checks: AtomicU64,
    /// The fence NQNs, derived from the run's key file.
    pub oracle: Oracle,
    /// Fenced disks compared with the one NQN their holders need.
    pub fence_checks: AtomicU64,
    /// The run's own RouterOS behaviour profile (`--profile`).
    pub profile: String,
    pub adds: Adds,
}

/// A volume name of the pool; `pvc-` so that it is its own volume ID.
pub fn vol(i: usize) -> String {
    format!("pvc-soak-v{i}")
}
pub fn snap(i: usize) -> String {
    format!("soak-s{i}")
}
/// The size asked for a volume: fixed per name, so every retry sends the same arguments.
fn size_of(i: usize) -> i64 {
    (16 + 2 * i as i64) * MIB
}

/// A CreateVolume of volume `i` for `bytes`, fenced for a fenced name (its StorageClass).
fn create_of(i: usize, bytes: i64) -> CreateVolumeRequest {
    let mut req = create_request(&vol(i), bytes, mount_cap("ext4"));
    if fence::fenced(i) {
        req.parameters.insert("nvmeFencing".into(), "true".into());
    }
    req
}

pub fn timed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// What a create-like call leaves on the volume's filesystem when it succeeds.
#[derive(Clone, Copy)]
enum Content {
    /// An empty volume (a new one; an existing one keeps what it holds).
    Keep,
    /// A copy of a source that held this token (a volume that existed keeps what it holds).
    CopyOf(Option<u64>),
}

impl Soak {
    pub async fn clients(&self) -> (ControllerClient<Channel>, NodeClient<Channel>) {
        let env = self.env.read().await;
        (env.controller(), env.node())
    }

    /// The size of the disk the mock holds in a slot.
    pub async fn disk(&self, slot: &str) -> Option<u64> {
        let env = self.env.read().await;
        env.mock
            .disks()
            .ok()?
            .into_iter()
            .find(|d| d.slot == slot)
            .map(|d| d.file_size)
    }

    /// Whether the mock holds a file whose name contains `id` (a volume's or snapshot's file).
    async fn file_of(&self, id: &str) -> Option<String> {
        let env = self.env.read().await;
        let name = format!("/{id}.");
        env.mock
            .files()
            .ok()?
            .into_iter()
            .find(|f| f.path.contains(&name))
            .map(|f| f.path)
    }

    /// The ID a CreateSnapshot of `name` returned (the driver derives it from the name).
    fn snapshot_id(&self, name: &str) -> Option<String> {
        self.model.get(name).id
    }

    pub async fn worker(&self) {
        loop {
            // Operations start in the order of their numbers: a quiet point before operation
            // `op` waits for every earlier one, and no later one starts until it is done.
            let (op, _running) = {
                let mut next = self.next_op.lock().await;
                let op = *next;
                if op >= self.ops {
                    return;
                }
                *next += 1;
                if op > 0 && op.is_multiple_of(QUIET_EVERY) {
                    let _quiet = self.running.write().await;
                    fence::check(self, op).await;
                }
                (op, self.running.read().await)
            };
            if self.progress && op > 0 && op.is_multiple_of(1000) {
                println!(
                    "{op} operations, {} faults, {} violations",
                    self.faults.total(),
                    self.model.violations.lock().unwrap().len()
                );
            }
            // Every operation draws from its own RNG, so what it does depends on the seed and
            // its number only, not on which worker runs it.
            let mut rng =
                StdRng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ op as u64);
            // Stage cycles (10 and 11, as root) are the only data checks: twice as frequent as the rest.
            let kind = rng.random_range(0..if self.root { 12 } else { 10 });
            let v = rng.random_range(0..VOLUMES);
            let s = rng.random_range(0..SNAPSHOTS);
            let w = rng.random_range(0..VOLUMES);
            let (targets, name): (&[Target], String) = match kind {
                0 | 1 | 3 | 6 | 7 => (&[Target::Add, Target::Set, Target::Print], vol(v)),
                2 => (
                    &[
                        Target::Remove,
                        Target::Remove,
                        Target::FileRemove,
                        Target::Print,
                    ],
                    vol(v),
                ),
                4 => (&[Target::Add, Target::Print], vol(v)),
                5 => match self.snapshot_id(&snap(s)) {
                    Some(id) => (
                        &[
                            Target::Remove,
                            Target::Remove,
                            Target::FileRemove,
                            Target::Print,
                        ],
                        id,
                    ),
                    None => (&[], String::new()),
                },
                _ => (&[Target::Print], vol(v)),
            };
            match faults::draw(&mut rng, targets, &name, &self.profile) {
                Some(fault) if self.inject => self.inject(op, fault).await,
                _ => {}
            }
            self.one(op, kind, v, s, w).await;
        }
    }

    async fn inject(&self, op: usize, fault: Fault) {
        if self.verbose {
            eprintln!("soak: operation {op}: fault {fault:?}");
        }
        let kind = fault.kind();
        let result = match &fault {
            Fault::Mock(_, command) | Fault::Control(_, command) => {
                let env = self.env.read().await;
                env.exec_ok(command).await.map(drop)
            }
            Fault::Restart(faults::Kind::RestartMock) => {
                let mut guard = self.env.write().await;
                let env = &mut *guard;
                self.adds.tally(env).await;
                match env.mock.stop().await {
                    Ok(()) => env.mock.resume(&env.keys).await,
                    Err(e) => Err(e),
                }
            }
            Fault::Restart(_) => {
                let mut env = self.env.write().await;
                if let Some(p) = crate::finish::panic_in(&env.driver.log) {
                    self.model.violation(op, p);
                }
                self.model.driver_stopping();
                let restarted = env.restart_driver().await;
                self.model.driver_restarted(restarted.is_ok());
                restarted
            }
        };
        match result {
            Ok(()) => self.faults.add(kind),
            // The mock may be refusing connections, or restarting: the fault is not counted.
            Err(e) if self.verbose => eprintln!("soak: fault {fault:?}: {e:#}"),
            Err(_) => {}
        }
    }

    async fn one(&self, op: usize, kind: u32, v: usize, s: usize, w: usize) {
        let (mut ctl, mut node) = self.clients().await;
        let name = vol(v);
        match kind {
            // create (the most frequent: a pool of names is mostly full)
            0 | 1 => {
                let names = [name.as_str()];
                let started = self.model.begin_read(&names);
                let r = ctl.create_volume(timed(create_of(v, size_of(v)))).await;
                // Only a writer (a delete, a copy into it) could change what a create finds.
                let (idle, alone) = self.model.end_both(&names, &started);
                self.model
                    .hold_after(&name, Call::Apply, r.is_ok(), idle, &started);
                self.after_present(op, &name, size_of(v) as u64, &r, alone, Content::Keep)
                    .await;
            }
            2 => self.delete_volume(op, &name, &mut ctl).await,
            3 => self.expand(op, v, &mut ctl).await,
            4 => self.create_snapshot(op, &name, &snap(s), &mut ctl).await,
            5 => self.delete_snapshot(op, &snap(s), &mut ctl).await,
            6 | 7 => self.copy(op, kind == 6, v, s, w, &mut ctl).await,
            8 => {
                // A CO publishes with the PV's volume attributes (the context CreateVolume
                // returned); a fenced volume it never created has no PV to publish.
                let context = self.model.get(&name).context;
                if fence::fenced(v) && context.is_none() {
                    return;
                }
                let names = [name.as_str()];
                let started = self.model.begin_read(&names);
                let r = ctl
                    .controller_publish_volume(timed(publish_request(
                        &name,
                        context.unwrap_or_default(),
                    )))
                    .await;
                let alone = self.model.end(&names, &started);
                self.model
                    .hold_after(&name, Call::Publish, r.is_ok(), alone, &started);
            }
            9 => {
                let names = [name.as_str()];
                let started = self.model.begin_read(&names);
                let r = ctl
                    .controller_unpublish_volume(timed(unpublish_request(&name)))
                    .await;
                let alone = self.model.end(&names, &started);
                self.model
                    .hold_after(&name, Call::Unpublish, r.is_ok(), alone, &started);
            }
            _ => self.stage_cycle(op, v, true, &mut ctl, &mut node).await,
        }
    }

    async fn delete_volume(&self, op: usize, name: &str, ctl: &mut ControllerClient<Channel>) {
        let names = [name];
        let started = self.model.begin(&names);
        let r = ctl
            .delete_volume(timed(DeleteVolumeRequest {
                volume_id: name.to_string(),
                ..Default::default()
            }))
            .await;
        let alone = self.model.end(&names, &started);
        let held = self.model.get(name).hold.table == Some(true);
        if r.is_ok() && alone && held && !self.model.restarted_since(&started) {
            self.model.violation(
                op,
                format!("{name} was deleted while published to {NODE_ID} (DeleteVolume succeeded)"),
            );
        }
        self.model
            .hold_after(name, Call::Delete, r.is_ok(), alone, &started);
        match (r, alone) {
            (Ok(_), true) => {
                self.model.set(name, |o| {
                    o.known = Known::Absent;
                    o.content = None;
                    o.size = 0;
                });
                if self.disk(name).await.is_some() {
                    self.model
                        .violation(op, format!("{name} still exists after DeleteVolume"));
                }
                if let Some(file) = self.file_of(name).await {
                    self.model
                        .violation(op, format!("{name}'s file {file} left after DeleteVolume"));
                }
            }
            // Published (FailedPrecondition) changes nothing; any other failure may have.
            (Err(e), true) if e.code() == tonic::Code::FailedPrecondition => {}
            _ => self.model.set(name, |o| o.known = Known::Unknown),
        }
    }

    async fn expand(&self, op: usize, v: usize, ctl: &mut ControllerClient<Channel>) {
        let name = vol(v);
        let current = self.model.get(&name);
        let want = (current.size.max(size_of(v) as u64) + 4 * MIB as u64).min(64 << 20);
        let names = [name.as_str()];
        let started = self.model.begin_read(&names);
        let r = ctl
            .controller_expand_volume(timed(ControllerExpandVolumeRequest {
                volume_id: name.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: want as i64,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await;
        let (idle, alone) = self.model.end_both(&names, &started);
        self.model
            .hold_after(&name, Call::Apply, r.is_ok(), idle, &started);
        if let (Ok(resp), true) = (&r, alone) {
            let got = resp.get_ref().capacity_bytes as u64;
            if got < want {
                self.model
                    .violation(op, format!("{name} expanded to {got}, asked {want}"));
            }
            self.after_present(
                op,
                &name,
                want,
                &Err(tonic::Status::ok("")),
                true,
                Content::Keep,
            )
            .await;
        }
        // A failed expand leaves the size unknown (the model keeps the least acknowledged), not
        // the volume or its data.
    }

    async fn create_snapshot(
        &self,
        op: usize,
        source: &str,
        sname: &str,
        ctl: &mut ControllerClient<Channel>,
    ) {
        let started = self.model.begin(&[sname]);
        let reading = self.model.begin_read(&[source]);
        let before = self.model.get(sname);
        let from = self.model.get(source);
        let r = ctl
            .create_snapshot(timed(CreateSnapshotRequest {
                source_volume_id: source.to_string(),
                name: sname.to_string(),
                ..Default::default()
            }))
            .await;
        let alone = self.model.end(&[sname], &started);
        let (source_alone, source_unwritten) = self.model.end_both(&[source], &reading);
        match (r, alone && source_alone) {
            (Ok(resp), true) => {
                let snapshot = resp.into_inner().snapshot.unwrap_or_default();
                // A new snapshot holds what its source held; one that existed, what it held.
                let content = match (before.known, from.known) {
                    (Known::Present, _) => before.content,
                    (Known::Absent, Known::Present) if source_unwritten => from.content,
                    _ => None,
                };
                self.model.set(sname, |o| {
                    o.known = Known::Present;
                    o.id = Some(snapshot.snapshot_id.clone());
                    o.content = content;
                });
                if self.disk(&snapshot.snapshot_id).await.is_none() {
                    self.model
                        .violation(op, format!("snapshot {sname} acknowledged but absent"));
                }
            }
            // AlreadyExists: the name holds a snapshot of another volume; nothing changed.
            (Err(e), true) if e.code() == tonic::Code::AlreadyExists => {}
            _ => self.model.set(sname, |o| {
                o.known = Known::Unknown;
                o.content = None;
            }),
        }
    }

    async fn delete_snapshot(&self, op: usize, sname: &str, ctl: &mut ControllerClient<Channel>) {
        let Some(id) = self.snapshot_id(sname) else {
            return;
        };
        let names = [sname];
        let started = self.model.begin(&names);
        let r = ctl
            .delete_snapshot(timed(DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            }))
            .await;
        let alone = self.model.end(&names, &started);
        match (r.is_ok(), alone) {
            (true, true) => {
                self.model.set(sname, |o| {
                    o.known = Known::Absent;
                    o.content = None;
                });
                if self.disk(&id).await.is_some() {
                    self.model
                        .violation(op, format!("snapshot {sname} still exists after delete"));
                }
                if let Some(file) = self.file_of(&id).await {
                    self.model.violation(
                        op,
                        format!("snapshot {sname}'s file {file} left after delete"),
                    );
                }
            }
            _ => self.model.set(sname, |o| o.known = Known::Unknown),
        }
    }

    /// Restores snapshot `s` (`restore`) or clones volume `w` into volume `v`.
    async fn copy(
        &self,
        op: usize,
        restore: bool,
        v: usize,
        s: usize,
        w: usize,
        ctl: &mut ControllerClient<Channel>,
    ) {
        let name = vol(v);
        let (source_name, source) = if restore {
            let Some(id) = self.snapshot_id(&snap(s)) else {
                return;
            };
            (
                snap(s),
                SourceType::Snapshot(SnapshotSource { snapshot_id: id }),
            )
        } else {
            if w == v {
                return;
            }
            (
                vol(w),
                SourceType::Volume(VolumeSource { volume_id: vol(w) }),
            )
        };
        let mut req = create_of(v, size_of(v).max(64 * MIB));
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(source),
        });
        let started = self.model.begin(&[name.as_str()]);
        let reading = self.model.begin_read(&[source_name.as_str()]);
        let from = self.model.get(&source_name);
        let r = ctl.create_volume(timed(req)).await;
        let (source_alone, source_unwritten) =
            self.model.end_both(&[source_name.as_str()], &reading);
        let target_alone = self.model.end(&[name.as_str()], &started);
        self.model
            .hold_after(&name, Call::Apply, r.is_ok(), target_alone, &started);
        let alone = target_alone && source_alone;
        let content = (from.known == Known::Present && source_unwritten)
            .then_some(from.content)
            .flatten();
        match &r {
            // A name that already holds a different volume: nothing changed.
            Err(e) if alone && e.code() == tonic::Code::AlreadyExists => {}
            _ => {
                let size = 64 * MIB as u64;
                self.after_present(op, &name, size, &r, alone, Content::CopyOf(content))
                    .await
            }
        }
    }

    /// After a create-like call (`reply`; an expand passes `Err(Status::ok)`): on success with
    /// no writer overlapping (`alone`) the volume must exist with at least `size`.
    async fn after_present(
        &self,
        op: usize,
        name: &str,
        size: u64,
        reply: &Result<tonic::Response<CreateVolumeResponse>, tonic::Status>,
        alone: bool,
        content: Content,
    ) {
        let ok = match reply {
            Ok(_) => true,
            Err(e) => e.code() == tonic::Code::Ok,
        };
        let context = reply
            .as_ref()
            .ok()
            .and_then(|r| r.get_ref().volume.as_ref())
            .map(|v| v.volume_context.clone());
        if context.is_some() {
            self.model.set(name, |o| o.context = context.clone());
        }
        if !ok && alone && self.model.get(name).known == Known::Present {
            // A failed create (or expand) of a volume that exists changes nothing.
            return;
        }
        if !(ok && alone) {
            self.model.set(name, |o| {
                o.known = Known::Unknown;
                o.content = None;
            });
            return;
        }
        match self.disk(name).await {
            Some(actual) if actual >= size => self.model.set(name, |o| {
                // Only a volume known to exist keeps what it held and its acknowledged size.
                match (o.known, content) {
                    (Known::Present, _) => {}
                    (Known::Absent, Content::CopyOf(token)) => o.content = token,
                    (Known::Absent, Content::Keep) => o.content = Some(NO_TOKEN),
                    _ => o.content = None,
                }
                o.size = if o.known == Known::Present {
                    o.size.max(size)
                } else {
                    size
                };
                o.known = Known::Present;
            }),
            other => self.model.violation(
                op,
                format!("{name} acknowledged with {size} bytes, the RDS holds {other:?}"),
            ),
        }
    }

    /// The staging and target paths of a volume.
    pub async fn paths(&self, name: &str) -> (String, String) {
        let env = self.env.read().await;
        (
            env.path(&format!("staging-{name}")).display().to_string(),
            env.path(&format!("pods/{name}/mount"))
                .display()
                .to_string(),
        )
    }

    /// Publish, stage, check the last token written, write a new one (with `write`), unstage,
    /// unpublish.
    pub async fn stage_cycle(
        &self,
        op: usize,
        v: usize,
        write: bool,
        ctl: &mut ControllerClient<Channel>,
        node: &mut NodeClient<Channel>,
    ) {
        let name = vol(v);
        let (staging, target) = self.paths(&name).await;
        let names = [name.as_str()];
        let started = self.model.begin(&names);
        let before = self.model.get(&name);
        let cap = mount_cap("ext4");
        let wrote = std::sync::atomic::AtomicBool::new(false);
        // Whether ControllerPublish was called, and succeeded.
        let published = std::sync::Mutex::new(None);
        let result: anyhow::Result<Option<u64>> = async {
            // A CO stages only a volume it created, with the context CreateVolume returned.
            let volume_context = before.context.clone().context("never created")?;
            let reply = ctl
                .controller_publish_volume(timed(publish_request(&name, volume_context.clone())))
                .await;
            *published.lock().unwrap() = Some(reply.is_ok());
            let publish_context = reply?.into_inner().publish_context;
            self.model.set(&name, |o| o.staged = true);
            node.node_stage_volume(timed(NodeStageVolumeRequest {
                volume_id: name.clone(),
                publish_context: publish_context.clone(),
                staging_target_path: staging.clone(),
                volume_capability: Some(cap.clone()),
                volume_context: volume_context.clone(),
                ..Default::default()
            }))
            .await?;
            node.node_publish_volume(timed(NodePublishVolumeRequest {
                volume_id: name.clone(),
                publish_context,
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: Some(cap.clone()),
                volume_context,
                ..Default::default()
            }))
            .await?;
            let file = Path::new(&target).join("soak-token");
            let seen = match std::fs::read_to_string(&file) {
                Ok(t) => t.trim().parse().ok(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(NO_TOKEN),
                Err(_) => None,
            };
            if let (Some(want), Known::Present) = (before.content, before.known) {
                self.data_checks.fetch_add(1, Ordering::Relaxed);
                if seen != Some(want) {
                    anyhow::bail!("DATA: {name} holds token {seen:?}, {want} was written last");
                }
            }
            if !write {
                return Ok(seen);
            }
            wrote.store(true, Ordering::Relaxed);
            std::fs::write(&file, format!("{op}\n"))?;
            nix::unistd::sync();
            Ok(Some(op as u64))
        }
        .await;
        let (node_clean, unpublished) = self.unstage(&name, &staging, &target, ctl, node).await;
        let cleaned = node_clean && unpublished;
        // Calls that change neither content nor existence (a create, an expand, a publish)
        // may overlap: the token read must still be the last one written.
        let (idle, alone) = self.model.end_both(&names, &started);
        if let Some(ok) = published.into_inner().unwrap() {
            self.model
                .hold_after(&name, Call::Publish, ok, idle, &started);
        }
        self.model
            .hold_after(&name, Call::Unpublish, unpublished, idle, &started);
        if self.verbose {
            eprintln!("soak: operation {op}: stage cycle of {name}: {result:?}, cleaned up {cleaned}, alone {alone}");
        }
        match result {
            Err(e) if e.to_string().starts_with("DATA:") && alone => {
                self.model.violation(op, e.to_string())
            }
            // Synced before the reply, the token is in the file even if the unstage failed.
            Ok(token) if alone => self.model.set(&name, |o| {
                o.content = token;
                o.staged = !cleaned;
            }),
            // Failed before writing: the content is what it was.
            Err(_) if alone && !wrote.load(Ordering::Relaxed) => {
                self.model.set(&name, |o| o.staged |= !cleaned)
            }
            _ => self.model.set(&name, |o| {
                o.content = None;
                o.staged |= !cleaned;
            }),
        }
    }

    /// Node unpublish, node unstage and controller unpublish: whether both node calls
    /// succeeded, and whether the controller's did.
    pub async fn unstage(
        &self,
        name: &str,
        staging: &str,
        target: &str,
        ctl: &mut ControllerClient<Channel>,
        node: &mut NodeClient<Channel>,
    ) -> (bool, bool) {
        let a = node
            .node_unpublish_volume(timed(NodeUnpublishVolumeRequest {
                volume_id: name.into(),
                target_path: target.into(),
            }))
            .await
            .is_ok();
        let b = node
            .node_unstage_volume(timed(NodeUnstageVolumeRequest {
                volume_id: name.into(),
                staging_target_path: staging.into(),
            }))
            .await
            .is_ok();
        let c = ctl
            .controller_unpublish_volume(timed(unpublish_request(name)))
            .await
            .is_ok();
        (a && b, c)
    }
}

/// A ControllerPublish of volume `name` to the node, with the volume's context.
fn publish_request(
    name: &str,
    volume_context: HashMap<String, String>,
) -> ControllerPublishVolumeRequest {
    ControllerPublishVolumeRequest {
        volume_id: name.into(),
        node_id: NODE_ID.into(),
        volume_capability: Some(mount_cap("ext4")),
        volume_context,
        ..Default::default()
    }
}

fn unpublish_request(name: &str) -> ControllerUnpublishVolumeRequest {
    ControllerUnpublishVolumeRequest {
        volume_id: name.into(),
        node_id: NODE_ID.into(),
        ..Default::default()
    }
}
