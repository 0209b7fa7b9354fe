//! A seeded soak over the real binaries: workers issue random CSI calls on a small pool of names
//! (so calls collide on the same volume) while a fault thread injects mock-rds faults, restarts
//! mock-rds and the driver, and switches RouterOS behaviour profiles. A model says what must
//! hold after each reply; at the end everything is cleaned up through CSI and the mock's state,
//! the host and the logs are checked.
//!
//! `cargo run --release -p e2e --bin soak -- --ops N --seed S [--workers K] [--profile P]
//! [--no-faults]`. Exit status 1 on any violation, with the seed and the prefix to replay.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use csi_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use csi_proto::v1::*;
use e2e::{create_request, is_root, mount_cap, Env, MIB, NODE_ID};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::RwLock;
use tonic::Request;

mod model;
use model::{Known, Model};

const VOLUMES: usize = 6;
const SNAPSHOTS: usize = 3;
/// Each call's deadline, as a sidecar would set it.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);
/// Variants the fault thread switches between (and back to `default`).
const PROFILES: &[&str] = &[
    "default",
    "hardware-a",
    "hardware-b",
    "exit-zero",
    "errors-unknown,exit-zero",
    "copy-async",
    "wrap-hyphen,wrap-trailing-space",
    "resize-delayed",
];

struct Options {
    ops: usize,
    seed: u64,
    workers: usize,
    profile: String,
    faults: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        ops: 1000,
        seed: 1,
        workers: 4,
        profile: "default".into(),
        faults: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ops" => o.ops = value()?.parse().context("--ops")?,
            "--seed" => o.seed = value()?.parse().context("--seed")?,
            "--workers" => o.workers = value()?.parse().context("--workers")?,
            "--profile" => o.profile = value()?,
            "--no-faults" => o.faults = false,
            other => anyhow::bail!(
                "unknown flag {other}: use --ops N --seed S [--workers K] [--profile P] [--no-faults]"
            ),
        }
    }
    anyhow::ensure!(o.workers > 0, "--workers must be at least 1");
    Ok(o)
}

struct Soak {
    env: RwLock<Env>,
    model: Model,
    seed: u64,
    next_op: AtomicUsize,
    ops: usize,
    faults: AtomicU64,
    root: bool,
}

fn vol(i: usize) -> String {
    format!("soak-v{i}")
}
fn snap(i: usize) -> String {
    format!("soak-s{i}")
}
/// The size asked for a volume: fixed per name, so every retry sends the same arguments.
fn size_of(i: usize) -> i64 {
    (16 + 2 * i as i64) * MIB
}

fn timed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl Soak {
    async fn clients(
        &self,
    ) -> (
        controller_client::ControllerClient<tonic::transport::Channel>,
        node_client::NodeClient<tonic::transport::Channel>,
    ) {
        let env = self.env.read().await;
        (env.controller(), env.node())
    }

    /// The disk the mock holds for a slot, as (size, exported).
    async fn disk(&self, slot: &str) -> Option<u64> {
        let env = self.env.read().await;
        env.mock
            .disks()
            .ok()?
            .into_iter()
            .find(|d| d.slot == slot)
            .map(|d| d.file_size)
    }

    /// The ID a CreateSnapshot of `name` returned (the driver derives it from the name).
    fn snapshot_id(&self, name: &str) -> Option<String> {
        self.model.get(name).id
    }

    async fn worker(self: Arc<Self>, id: usize) {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(1000).wrapping_add(id as u64));
        loop {
            let op = self.next_op.fetch_add(1, Ordering::Relaxed);
            if op >= self.ops {
                return;
            }
            if op > 0 && op.is_multiple_of(1000) {
                eprintln!(
                    "{op} operations, {} faults, {} violations",
                    self.faults.load(Ordering::Relaxed),
                    self.model.violations.lock().unwrap().len()
                );
            }
            let kind = rng.random_range(0..if self.root { 11 } else { 10 });
            let v = rng.random_range(0..VOLUMES);
            let s = rng.random_range(0..SNAPSHOTS);
            let w = rng.random_range(0..VOLUMES);
            self.one(op, kind, v, s, w).await;
        }
    }

    async fn one(&self, op: usize, kind: u32, v: usize, s: usize, w: usize) {
        let (mut ctl, mut node) = self.clients().await;
        let name = vol(v);
        match kind {
            // create (the most frequent: a pool of names is mostly full)
            0 | 1 => {
                let names = [name.as_str()];
                let started = self.model.begin(&names);
                let r = ctl
                    .create_volume(timed(create_request(&name, size_of(v), mount_cap("ext4"))))
                    .await;
                let alone = self.model.end(&names, &started);
                self.after_present(op, &name, size_of(v) as u64, r.is_ok(), alone, false)
                    .await;
            }
            2 => {
                let names = [name.as_str()];
                let started = self.model.begin(&names);
                let r = ctl
                    .delete_volume(timed(DeleteVolumeRequest {
                        volume_id: name.clone(),
                        ..Default::default()
                    }))
                    .await;
                let alone = self.model.end(&names, &started);
                match (r, alone) {
                    (Ok(_), true) => {
                        self.model.set(&name, |o| {
                            o.known = Known::Absent;
                            o.content = None;
                            o.size = 0;
                        });
                        if self.disk(&name).await.is_some() {
                            self.model
                                .violation(op, format!("{name} still exists after DeleteVolume"));
                        }
                    }
                    // Published (FailedPrecondition) changes nothing; any other failure may have.
                    (Err(e), true) if e.code() == tonic::Code::FailedPrecondition => {}
                    _ => self.model.set(&name, |o| o.known = Known::Unknown),
                }
            }
            3 => {
                let current = self.model.get(&name);
                let want = (current.size.max(size_of(v) as u64) + 4 * MIB as u64).min(64 << 20);
                let names = [name.as_str()];
                let started = self.model.begin(&names);
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
                let alone = self.model.end(&names, &started);
                if let (Ok(resp), true) = (&r, alone) {
                    let got = resp.get_ref().capacity_bytes as u64;
                    if got < want {
                        self.model
                            .violation(op, format!("{name} expanded to {got}, asked {want}"));
                    }
                    self.after_present(op, &name, want, true, true, false).await;
                } else if !alone || r.as_ref().is_err_and(|e| e.code() != tonic::Code::NotFound) {
                    // A failed expand leaves the size unknown, not the volume.
                    self.model
                        .set(&name, |o| o.content = o.content.filter(|_| alone));
                }
            }
            4 => {
                let sname = snap(s);
                let names = [sname.as_str(), name.as_str()];
                let started = self.model.begin(&names);
                let r = ctl
                    .create_snapshot(timed(CreateSnapshotRequest {
                        source_volume_id: name.clone(),
                        name: sname.clone(),
                        ..Default::default()
                    }))
                    .await;
                let alone = self.model.end(&names, &started);
                match (r, alone) {
                    (Ok(resp), true) => {
                        let snapshot = resp.into_inner().snapshot.unwrap_or_default();
                        self.model.set(&sname, |o| {
                            o.known = Known::Present;
                            o.id = Some(snapshot.snapshot_id.clone());
                        });
                        if self.disk(&snapshot.snapshot_id).await.is_none() {
                            self.model
                                .violation(op, format!("snapshot {sname} acknowledged but absent"));
                        }
                    }
                    // AlreadyExists: the name holds a snapshot of another volume; nothing changed.
                    (Err(e), true) if e.code() == tonic::Code::AlreadyExists => {}
                    _ => self.model.set(&sname, |o| o.known = Known::Unknown),
                }
            }
            5 => {
                let sname = snap(s);
                let Some(id) = self.snapshot_id(&sname) else {
                    return;
                };
                let names = [sname.as_str()];
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
                        self.model.set(&sname, |o| o.known = Known::Absent);
                        if self.disk(&id).await.is_some() {
                            self.model.violation(
                                op,
                                format!("snapshot {sname} still exists after delete"),
                            );
                        }
                    }
                    _ => self.model.set(&sname, |o| o.known = Known::Unknown),
                }
            }
            6 | 7 => {
                // restore from a snapshot, or clone a volume, into volume `v`
                let source = if kind == 6 {
                    let Some(id) = self.snapshot_id(&snap(s)) else {
                        return;
                    };
                    SourceType::Snapshot(SnapshotSource { snapshot_id: id })
                } else {
                    if w == v {
                        return;
                    }
                    SourceType::Volume(VolumeSource { volume_id: vol(w) })
                };
                let mut req = create_request(&name, size_of(v).max(64 * MIB), mount_cap("ext4"));
                req.volume_content_source = Some(VolumeContentSource {
                    r#type: Some(source),
                });
                let names = if kind == 6 {
                    vec![name.clone(), snap(s)]
                } else {
                    vec![name.clone(), vol(w)]
                };
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let started = self.model.begin(&refs);
                let r = ctl.create_volume(timed(req)).await;
                let alone = self.model.end(&refs, &started);
                match &r {
                    // A name that already holds a different volume: nothing changed.
                    Err(e) if alone && e.code() == tonic::Code::AlreadyExists => {}
                    _ => {
                        self.after_present(op, &name, 64 * MIB as u64, r.is_ok(), alone, true)
                            .await
                    }
                }
            }
            8 | 9 => {
                let publish = kind == 8;
                let names = [name.as_str()];
                let started = self.model.begin(&names);
                if publish {
                    let _ = ctl
                        .controller_publish_volume(timed(ControllerPublishVolumeRequest {
                            volume_id: name.clone(),
                            node_id: NODE_ID.into(),
                            volume_capability: Some(mount_cap("ext4")),
                            ..Default::default()
                        }))
                        .await;
                } else {
                    let _ = ctl
                        .controller_unpublish_volume(timed(ControllerUnpublishVolumeRequest {
                            volume_id: name.clone(),
                            node_id: NODE_ID.into(),
                            ..Default::default()
                        }))
                        .await;
                }
                self.model.end(&names, &started);
            }
            _ => self.stage_cycle(op, v, &mut ctl, &mut node).await,
        }
    }

    /// After a create-like call: on success alone the volume must exist with at least `size`.
    async fn after_present(
        &self,
        op: usize,
        name: &str,
        size: u64,
        ok: bool,
        alone: bool,
        copy: bool,
    ) {
        if !(ok && alone) {
            self.model.set(name, |o| o.known = Known::Unknown);
            return;
        }
        match self.disk(name).await {
            Some(actual) if actual >= size => self.model.set(name, |o| {
                if o.known != Known::Present || copy {
                    o.content = None;
                }
                // Only a volume known to exist keeps what it was acknowledged before.
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

    /// Publish, stage, check the last token written, write a new one, unstage, unpublish.
    async fn stage_cycle(
        &self,
        op: usize,
        v: usize,
        ctl: &mut controller_client::ControllerClient<tonic::transport::Channel>,
        node: &mut node_client::NodeClient<tonic::transport::Channel>,
    ) {
        let name = vol(v);
        let (staging, target) = {
            let env = self.env.read().await;
            (
                env.path(&format!("staging-{name}")).display().to_string(),
                env.path(&format!("pods/{name}/mount"))
                    .display()
                    .to_string(),
            )
        };
        let names = [name.as_str()];
        let started = self.model.begin(&names);
        let before = self.model.get(&name);
        let cap = mount_cap("ext4");
        let result: anyhow::Result<u64> = async {
            let volume_context = HashMap::new();
            let publish_context = ctl
                .controller_publish_volume(timed(ControllerPublishVolumeRequest {
                    volume_id: name.clone(),
                    node_id: NODE_ID.into(),
                    volume_capability: Some(cap.clone()),
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .publish_context;
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
            let seen = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if let (Some(want), Known::Present) = (before.content, before.known) {
                if seen != Some(want) {
                    anyhow::bail!("DATA: {name} holds token {seen:?}, {want} was written last");
                }
            }
            std::fs::write(&file, format!("{op}\n"))?;
            nix::unistd::sync();
            Ok(op as u64)
        }
        .await;
        let cleaned = self.unstage(&name, &staging, &target, ctl, node).await;
        let alone = self.model.end(&names, &started);
        match result {
            Err(e) if e.to_string().starts_with("DATA:") && alone => {
                self.model.violation(op, e.to_string())
            }
            Ok(token) if alone && cleaned => self.model.set(&name, |o| {
                o.content = Some(token);
                o.staged = false;
            }),
            _ => self.model.set(&name, |o| {
                o.content = None;
                o.staged = o.staged || !cleaned;
            }),
        }
    }

    async fn unstage(
        &self,
        name: &str,
        staging: &str,
        target: &str,
        ctl: &mut controller_client::ControllerClient<tonic::transport::Channel>,
        node: &mut node_client::NodeClient<tonic::transport::Channel>,
    ) -> bool {
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
            .controller_unpublish_volume(timed(ControllerUnpublishVolumeRequest {
                volume_id: name.into(),
                node_id: NODE_ID.into(),
                ..Default::default()
            }))
            .await
            .is_ok();
        a && b && c
    }

    /// Injects a fault, restarts something or switches the profile, every few hundred ms.
    async fn fault_thread(self: Arc<Self>, stop: Arc<std::sync::atomic::AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0xfa17);
        let patterns = [
            "^/disk add",
            "^/disk remove",
            "^/disk set",
            "^/file remove",
            "print",
            "",
        ];
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..150))).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let pattern = patterns[rng.random_range(0..patterns.len())];
            let command = match rng.random_range(0..20) {
                // Failures of the commands that change something, half in words no driver has
                // seen, half with exit status 0.
                0..=5 => format!(
                    "/mock fault fail pattern=\"{}\" times=1 message=\"{}\" exit-status={}",
                    patterns[rng.random_range(0..4)],
                    [
                        "failure: execution error",
                        "something new",
                        "disk is busy",
                        "all done"
                    ][rng.random_range(0..4)],
                    rng.random_range(0..2)
                ),
                6 | 7 => format!("/mock fault drop pattern=\"{pattern}\" times=1"),
                8 => format!("/mock fault hang pattern=\"{pattern}\" times=1"),
                9 | 10 => format!("/mock fault latency pattern=\"{pattern}\" min=5ms max=150ms"),
                11 => "/mock fault refuse-connections enabled=yes for=300ms".into(),
                12 => "/mock drop-connections".into(),
                13 => "restart-mock".into(),
                14 => "restart-driver".into(),
                _ => format!(
                    "/mock profile set={}",
                    PROFILES[rng.random_range(0..PROFILES.len())]
                ),
            };
            self.faults.fetch_add(1, Ordering::Relaxed);
            if std::env::var_os("SOAK_VERBOSE").is_some() {
                eprintln!("soak: fault: {command}");
            }
            let result = match command.as_str() {
                "restart-mock" => {
                    let mut guard = self.env.write().await;
                    let env = &mut *guard;
                    match env.mock.stop().await {
                        Ok(()) => env.mock.resume(&env.keys).await,
                        Err(e) => Err(e),
                    }
                }
                "restart-driver" => {
                    let mut env = self.env.write().await;
                    if let Some(p) = panic_in(&env.driver.log) {
                        self.model.violation(0, p);
                    }
                    env.restart_driver().await
                }
                _ => {
                    let env = self.env.read().await;
                    let _ = env.exec("/mock fault clear").await;
                    env.exec(&command).await.map(drop)
                }
            };
            if let Err(e) = result {
                eprintln!("soak: fault `{command}`: {e:#}");
            }
        }
    }
}

fn panic_in(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("panicked at"))
        .map(|l| format!("panic in {}: {l}", log.display()))
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The run's processes, mounts and loop devices are cleaned up when `run` returns, before
    // the exit status is set.
    match runtime.block_on(run()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The whole soak; false when it found violations.
async fn run() -> anyhow::Result<bool> {
    let o = options()?;
    let started = Instant::now();
    let env = Env::start_profile("soak", &o.profile).await?;
    let soak = Arc::new(Soak {
        env: RwLock::new(env),
        model: Model::default(),
        seed: o.seed,
        next_op: AtomicUsize::new(0),
        ops: o.ops,
        faults: AtomicU64::new(0),
        root: is_root(),
    });
    if !soak.root {
        eprintln!("soak: not root, so no stage/unstage (they need loop devices and mount)");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let faults = o
        .faults
        .then(|| tokio::spawn(Arc::clone(&soak).fault_thread(Arc::clone(&stop))));
    let workers: Vec<_> = (0..o.workers)
        .map(|i| tokio::spawn(Arc::clone(&soak).worker(i)))
        .collect();
    for w in workers {
        w.await?;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = faults {
        f.await?;
    }
    finish(&soak).await?;
    let violations = soak.model.violations.lock().unwrap().clone();
    println!(
        "{} operations, {} faults, {} violations ({:.0} s, seed {}, {} workers, profile {})",
        o.ops,
        soak.faults.load(Ordering::Relaxed),
        violations.len(),
        started.elapsed().as_secs_f64(),
        o.seed,
        o.workers,
        o.profile
    );
    if let Some(first) = violations.iter().map(|(op, _)| *op).min() {
        for (op, what) in &violations {
            println!("  operation {op}: {what}");
        }
        println!(
            "replay: cargo run --release -p e2e --bin soak -- --ops {} --seed {} --workers {} --profile {}",
            first + 1,
            o.seed,
            o.workers,
            o.profile
        );
        return Ok(false);
    }
    Ok(true)
}

/// Quiesces, checks the model against the RDS, cleans up through CSI, then checks that nothing
/// was left on the RDS or the host and that no process panicked.
async fn finish(soak: &Soak) -> anyhow::Result<()> {
    let model = &soak.model;
    {
        let env = soak.env.read().await;
        env.exec_ok("/mock fault clear").await?;
        env.exec_ok("/mock fault refuse-connections enabled=no")
            .await?;
        env.exec_ok("/mock profile set=default").await?;
    }
    // Whatever a fault interrupted is finished by retries, as a CO would.
    let (mut ctl, node) = soak.clients().await;
    for v in 0..VOLUMES {
        let name = vol(v);
        let (staging, target) = {
            let env = soak.env.read().await;
            (
                env.path(&format!("staging-{name}")).display().to_string(),
                env.path(&format!("pods/{name}/mount"))
                    .display()
                    .to_string(),
            )
        };
        retry(|| async {
            let mut c = ctl.clone();
            let mut n = node.clone();
            soak.unstage(&name, &staging, &target, &mut c, &mut n)
                .await
                .then_some(())
                .context("unstage")
        })
        .await?;
    }
    let objects = model.objects.lock().unwrap().clone();
    for (name, o) in &objects {
        let id = if name.starts_with("soak-s") {
            match &o.id {
                Some(id) => id.clone(),
                None => continue,
            }
        } else {
            name.clone()
        };
        let actual = soak.disk(&id).await;
        match (o.known, actual) {
            (Known::Present, Some(size)) if size >= o.size => {}
            (Known::Present, other) => model.violation(
                soak.ops,
                format!(
                    "{name} was acknowledged ({} bytes) but the RDS holds {other:?}",
                    o.size
                ),
            ),
            (Known::Absent, Some(_)) => {
                model.violation(soak.ops, format!("{name} was deleted but still exists"))
            }
            _ => {}
        }
    }
    // Clean up through CSI: every snapshot and volume the driver lists (the mock is this run's
    // alone), snapshots first.
    // As a CO does, every object it was ever told about is deleted until that succeeds, whether
    // the RDS still lists it or not (a failed delete may have left only a file).
    let mut snapshots: Vec<String> = e2e::list_snapshots(&mut ctl)
        .await?
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect();
    snapshots.extend(objects.values().filter_map(|o| o.id.clone()));
    snapshots.sort();
    snapshots.dedup();
    for id in snapshots {
        retry(|| async {
            ctl.clone()
                .delete_snapshot(timed(DeleteSnapshotRequest {
                    snapshot_id: id.clone(),
                    ..Default::default()
                }))
                .await
                .map(drop)
                .map_err(Into::into)
        })
        .await?;
    }
    let mut volumes: Vec<String> = e2e::list_volumes(&mut ctl)
        .await?
        .into_iter()
        .map(|v| v.volume_id)
        .collect();
    volumes.extend((0..VOLUMES).map(vol));
    volumes.sort();
    volumes.dedup();
    for id in volumes {
        retry(|| async {
            ctl.clone()
                .delete_volume(timed(DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                }))
                .await
                .map(drop)
                .map_err(Into::into)
        })
        .await?;
    }
    let env = soak.env.read().await;
    let disks = env.mock.disks()?;
    let files = env.mock.files()?;
    for d in &disks {
        model.violation(
            soak.ops,
            format!("disk left after clean-up: {} ({})", d.slot, d.file_path),
        );
    }
    for f in &files {
        model.violation(soak.ops, format!("file left after clean-up: {}", f.path));
    }
    for l in env.host.leftovers() {
        model.violation(soak.ops, format!("host: {l} left behind"));
    }
    for log in [&env.driver.log, &env.mock.log] {
        if let Some(p) = panic_in(log) {
            model.violation(soak.ops, p);
        }
    }
    Ok(())
}

/// Retries a clean-up call for up to a minute: the faults are off, but a restart may still be
/// settling.
async fn retry<F, Fut>(mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
