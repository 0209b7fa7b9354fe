//! Control-plane benchmarks: the real `rds-csi` (controller) against the real `mock-rds`, over
//! CSI on a Unix socket and SSH on loopback. Prints a table and writes JSON.
//!
//! `cargo run --release -p e2e --bin bench -- [--quick] [--json FILE]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;
use e2e::{Driver, Env, Keys, Mock, MIB, NODE_ID};
use russh::ChannelMsg;
use serde_json::json;
use tonic::transport::Channel;

/// One persistent SSH connection, many channels: the ceiling the driver is measured against.
/// Against an RDS that serves channel opens one at a time, the raw client opens one at a time
/// too (more pending opens are never answered there, so no client could do better).
#[derive(Clone)]
struct RawSsh {
    handle: Arc<russh::client::Handle<AcceptAny>>,
    open_gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

struct AcceptAny;
impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true) // a loopback benchmark against a mock started by this process
    }
}

impl RawSsh {
    async fn connect(mock: &Mock, keys: &Keys) -> anyhow::Result<Self> {
        let key = russh::keys::load_secret_key(&keys.client_key, None)?;
        // Like the driver: no Nagle delay on small request/reply exchanges.
        let config = russh::client::Config {
            nodelay: true,
            ..Default::default()
        };
        let mut handle = russh::client::connect(Arc::new(config), mock.addr, AcceptAny).await?;
        let auth = handle
            .authenticate_publickey(
                "admin",
                russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
            )
            .await?;
        anyhow::ensure!(auth.success(), "mock refused the key");
        Ok(Self {
            handle: Arc::new(handle),
            open_gate: None,
        })
    }

    fn serial_opens(mut self) -> Self {
        self.open_gate = Some(Arc::default());
        self
    }

    async fn exec(&self, command: &str) -> anyhow::Result<String> {
        let mut channel = match &self.open_gate {
            Some(gate) => {
                let _turn = gate.lock().await;
                self.handle.channel_open_session().await?
            }
            None => self.handle.channel_open_session().await?,
        };
        channel.exec(true, command).await?;
        let mut out = Vec::new();
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn cap() -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn create_req(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap()],
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `total` create+delete pairs with `concurrency` workers; returns pairs/s and latencies.
async fn churn(
    ctl: &ControllerClient<Channel>,
    prefix: &str,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, Vec<Duration>, Vec<Duration>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut ctl = ctl.clone();
        let next = Arc::clone(&next);
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut creates, mut deletes) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>((creates, deletes));
                }
                let name = format!("{prefix}-{i}");
                let t = Instant::now();
                let id = ctl
                    .create_volume(create_req(&name))
                    .await?
                    .into_inner()
                    .volume
                    .context("no volume")?
                    .volume_id;
                creates.push(t.elapsed());
                let t = Instant::now();
                ctl.delete_volume(DeleteVolumeRequest {
                    volume_id: id,
                    ..Default::default()
                })
                .await?;
                deletes.push(t.elapsed());
            }
        }));
    }
    let (mut creates, mut deletes) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, d) = t.await??;
        creates.extend(c);
        deletes.extend(d);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    creates.sort();
    deletes.sort();
    Ok((rate, creates, deletes))
}

/// Replays `commands_per_pair` (with `{id}` for a fresh slot) straight over SSH, `total` times
/// with `concurrency` workers; returns pairs/s.
async fn raw_churn(
    raw: &RawSsh,
    template: &[String],
    prefix: &str,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let template = Arc::new(template.to_vec());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (raw, next, template, prefix) = (
            raw.clone(),
            Arc::clone(&next),
            Arc::clone(&template),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let id = format!("{prefix}-{i}");
                for command in template.iter() {
                    let command = command.replace("{id}", &id);
                    let out = raw.exec(&command).await?;
                    // Each pair must really create and delete its own volume, as the
                    // driver's do: a refusal would be cheaper and flatter the ceiling.
                    anyhow::ensure!(
                        !out.contains("failure") && !out.contains("rds-csi:file-exists"),
                        "the raw replay of `{command}` failed: {out}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Execs the mock received after the last `marker` command, excluding `/mock` ones (a script
/// is one exec; the commands in it, recorded as `Scripted`, are not counted again).
async fn commands_since(mock: &Mock, keys: &Keys, marker: &str) -> anyhow::Result<Vec<String>> {
    let history = mock.history(keys).await?;
    let start = history
        .iter()
        .rposition(|h| h.command == marker)
        .map_or(0, |i| i + 1);
    Ok(history[start..]
        .iter()
        .filter(|h| h.disposition != "Scripted")
        .map(|h| h.command.clone())
        .filter(|c| !c.contains("/system identity"))
        .collect())
}

async fn counted<T>(
    mock: &Mock,
    keys: &Keys,
    raw: &RawSsh,
    tag: &str,
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Vec<String>)> {
    let marker = format!("/disk print detail where slot=bench-marker-{tag}");
    raw.exec(&marker).await?;
    let value = call.await?;
    Ok((value, commands_since(mock, keys, &marker).await?))
}

/// The commands of one CreateVolume+DeleteVolume pair, as a template with `{id}` for the
/// volume, after a warm-up pair (so once-per-connection probes are not counted).
async fn pair_template(
    ctl: &ControllerClient<Channel>,
    mock: &Mock,
    keys: &Keys,
    raw: &RawSsh,
    tag: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let mut c = ctl.clone();
    for name in [format!("bench-warm-{tag}"), format!("bench-count-{tag}")] {
        let (volume, create_cmds) = counted(mock, keys, raw, &format!("{tag}-c"), async {
            c.create_volume(create_req(&name))
                .await?
                .into_inner()
                .volume
                .context("no volume")
        })
        .await?;
        let (_, delete_cmds) = counted(mock, keys, raw, &format!("{tag}-d"), async {
            Ok(c.delete_volume(DeleteVolumeRequest {
                volume_id: volume.volume_id.clone(),
                ..Default::default()
            })
            .await?)
        })
        .await?;
        if name.starts_with("bench-count") {
            // The RDS sees the volume ID (derived from the name), never the name.
            let template: Vec<String> = create_cmds
                .iter()
                .chain(&delete_cmds)
                .map(|c| c.replace(&volume.volume_id, "{id}"))
                .collect();
            anyhow::ensure!(
                template.iter().all(|c| c.contains("{id}")),
                "a command of the pair does not name the volume {}: {template:?}",
                volume.volume_id
            );
            return Ok((create_cmds, delete_cmds, template));
        }
    }
    unreachable!("the loop returns on its second pass")
}

/// The execs of one CreateSnapshot of a fresh volume (after a warm-up snapshot, so the clock
/// read and once-per-connection probes are not counted); both are deleted again.
async fn snapshot_execs(
    ctl: &ControllerClient<Channel>,
    mock: &Mock,
    keys: &Keys,
    raw: &RawSsh,
    tag: &str,
) -> anyhow::Result<Vec<String>> {
    let mut c = ctl.clone();
    let source = c
        .create_volume(create_req(&format!("bench-snap-src-{tag}")))
        .await?
        .into_inner()
        .volume
        .context("no volume")?;
    let mut counted_execs = Vec::new();
    for name in ["warm", "count"] {
        let (snapshot, execs) = counted(mock, keys, raw, &format!("{tag}-s{name}"), async {
            c.create_snapshot(CreateSnapshotRequest {
                name: format!("bench-snap-{tag}-{name}"),
                source_volume_id: source.volume_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .context("no snapshot")
        })
        .await?;
        c.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id,
            ..Default::default()
        })
        .await?;
        counted_execs = execs;
    }
    c.delete_volume(DeleteVolumeRequest {
        volume_id: source.volume_id,
        ..Default::default()
    })
    .await?;
    Ok(counted_execs)
}

/// One row of the throughput table: the driver and the raw replay of its commands, at one
/// concurrency.
/// The processes whose CPU time a row accounts for, beside the bench's own.
#[derive(Debug, Clone, Copy)]
struct Pids {
    driver: u32,
    mock: u32,
}

/// CPU time (user and system, all threads) a process has used so far, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses, which may hold spaces) come the fields from the
    // third on: utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks * 1000.0 / hz
}

/// CPU milliseconds per pair that the driver, the mock and the bench itself spent while
/// `run` did `pairs` pairs.
async fn cpu_per_pair<T>(
    pids: Pids,
    pairs: usize,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, [f64; 3])> {
    let now = || {
        [
            cpu_ms(pids.driver),
            cpu_ms(pids.mock),
            cpu_ms(std::process::id()),
        ]
    };
    let before = now();
    let value = run.await?;
    let after = now();
    Ok((
        value,
        std::array::from_fn(|i| (after[i] - before[i]) / pairs as f64),
    ))
}

async fn measure(
    ctl: &ControllerClient<Channel>,
    raw: &RawSsh,
    pids: Pids,
    template: &[String],
    mode: &str,
    concurrency: usize,
    total: usize,
) -> anyhow::Result<serde_json::Value> {
    let prefix = format!("bench-{mode}-c{concurrency}");
    let ((rate, creates, deletes), cpu) =
        cpu_per_pair(pids, total, churn(ctl, &prefix, total, concurrency)).await?;
    let (raw_rate, raw_cpu) = cpu_per_pair(
        pids,
        total,
        raw_churn(raw, template, &format!("raw-{prefix}"), total, concurrency),
    )
    .await?;
    let ratio = rate / raw_rate;
    println!(
        "  {mode:<10} {concurrency:>4} {rate:>10.1} {raw_rate:>10.1} {:>5.0}% {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        ratio * 100.0,
        percentile(&creates, 0.5),
        percentile(&creates, 0.99),
        percentile(&deletes, 0.5),
        percentile(&deletes, 0.99)
    );
    // What bounds a row with no latency on this machine: the CPU a pair costs.
    let sum = |c: [f64; 3]| c.iter().sum::<f64>();
    println!(
        "  {:<15} CPU ms per pair: driver run {:.2} (driver {:.2}, mock {:.2}, bench {:.2}), raw run {:.2} (mock {:.2}, bench {:.2})",
        "",
        sum(cpu),
        cpu[0],
        cpu[1],
        cpu[2],
        sum(raw_cpu),
        raw_cpu[1],
        raw_cpu[2]
    );
    Ok(json!({
        "latency": mode, "concurrency": concurrency, "pairs": total,
        "driver_pairs_per_s": rate, "raw_pairs_per_s": raw_rate, "ratio": ratio,
        "create_p50_ms": percentile(&creates, 0.5), "create_p99_ms": percentile(&creates, 0.99),
        "delete_p50_ms": percentile(&deletes, 0.5), "delete_p99_ms": percentile(&deletes, 0.99),
        "cpu_ms_per_pair": {"driver": cpu[0], "mock": cpu[1], "bench": cpu[2],
                            "raw_mock": raw_cpu[1], "raw_bench": raw_cpu[2]},
    }))
}

fn print_table_header() {
    println!(
        "  {:<10} {:>4} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "latency",
        "conc",
        "driver/s",
        "raw/s",
        "ratio",
        "cr p50ms",
        "cr p99ms",
        "del p50",
        "del p99"
    );
}

/// Realistic per-command RouterOS latency (the low end of what users report), as mock faults.
const REALISTIC_LATENCY: &[(&str, &str)] = &[
    ("^/disk print", "50ms"),
    ("^/file print", "100ms"),
    // A script's `find` counts (a `find` walks the same list a `print` does).
    ("^/disk find", "50ms"),
    ("^/file find", "100ms"),
    ("^/disk add", "500ms"),
    ("^/disk remove", "500ms"),
    ("^/file remove", "100ms"),
];

async fn inject_realistic_latency(mock: &Mock, keys: &Keys) -> anyhow::Result<()> {
    for (pattern, latency) in REALISTIC_LATENCY {
        mock.exec_ok(
            keys,
            &format!("/mock fault latency pattern=\"{pattern}\" min={latency} max={latency}"),
        )
        .await?;
    }
    Ok(())
}

/// CreateVolume's and DeleteVolume's execs against an RDS that refuses scripts: the
/// command-by-command way.
async fn without_scripts(keys: &Keys) -> anyhow::Result<[Vec<String>; 3]> {
    let mock = Mock::start_profile(keys, "scripting-refused").await?;
    let mut args: Vec<String> = vec!["--controller".into()];
    args.extend(mock.driver_args(keys));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let driver = Driver::start(&refs).await?;
    let ctl = ControllerClient::new(driver.channel.clone());
    let raw = RawSsh::connect(&mock, keys).await?;
    let (create, delete, _) = pair_template(&ctl, &mock, keys, &raw, "noscript").await?;
    let snapshot = snapshot_execs(&ctl, &mock, keys, &raw, "noscript").await?;
    Ok([create, delete, snapshot])
}

/// The driver at its default settings against an RDS that runs one command at a time (one CLI
/// lock, realistic latency per command kind, channel opens served one by one), beside the raw
/// replay of the same commands.
async fn serial_routeros(keys: &Keys, scale: usize) -> anyhow::Result<serde_json::Value> {
    let mock = Mock::start_profile(keys, "cli-lock,sessions-serial-open").await?;
    let mut args: Vec<String> = vec!["--controller".into()];
    args.extend(mock.driver_args(keys));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let driver = Driver::start(&refs).await?;
    let ctl = ControllerClient::new(driver.channel.clone());
    let raw = RawSsh::connect(&mock, keys).await?.serial_opens();
    let (_, _, template) = pair_template(&ctl, &mock, keys, &raw, "serial").await?;
    inject_realistic_latency(&mock, keys).await?;
    println!("\nSerial RouterOS (one CLI lock, realistic latency, serialised channel opens), driver defaults");
    print_table_header();
    let mut rows = Vec::new();
    for (concurrency, total) in [(1usize, 3 * scale), (8, 8 * scale)] {
        let pids = Pids {
            driver: driver.process.id(),
            mock: mock.process.id(),
        };
        rows.push(measure(&ctl, &raw, pids, &template, "serial", concurrency, total).await?);
    }
    Ok(json!(rows))
}

/// Volumes staged for the node plugin's memory figure.
const STAGED: usize = 50;

/// The node plugin's resident memory (KiB), idle and with [`STAGED`] ext4 volumes staged, in a
/// node-only process (the loop connector over the mock's files: root only). None without root.
async fn node_memory() -> anyhow::Result<Option<(u64, u64)>> {
    if !e2e::is_root() {
        println!("\nNode plugin memory: not measured (staging needs root for loop devices)");
        return Ok(None);
    }
    let env = Env::start("bench-node").await?;
    let state = env.work.path().join("node-only-state");
    let args: Vec<String> = vec![
        "--node".into(),
        "--node-id".into(),
        NODE_ID.into(),
        "--kubelet-dir".into(),
        String::new(),
        "--connector".into(),
        "loop".into(),
        "--loop-root".into(),
        env.mock.data_dir.display().to_string(),
        "--node-state-dir".into(),
        state.display().to_string(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let plugin = Driver::start(&refs).await?;
    let pid = plugin.process.id();
    let idle = rss_kib(pid, "VmRSS:")?;
    let mut node = NodeClient::new(plugin.channel.clone());
    let mut staged = Vec::new();
    for i in 0..STAGED {
        let volume =
            e2e::staged::provision(&env, &format!("m{i}"), 16 * MIB, e2e::mount_cap("ext4")).await;
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            publish_context: volume.publish_context.clone(),
            staging_target_path: volume.staging.clone(),
            volume_capability: Some(volume.cap.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await?;
        staged.push(volume);
    }
    let loaded = rss_kib(pid, "VmRSS:")?;
    let mut ctl = env.controller();
    for volume in &staged {
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: volume.volume_id.clone(),
            staging_target_path: volume.staging.clone(),
        })
        .await?;
        ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            node_id: NODE_ID.into(),
            ..Default::default()
        })
        .await?;
    }
    env.cleanup_run().await?;
    println!(
        "\nNode plugin memory: idle RSS {:.1} MiB, with {STAGED} volumes staged {:.1} MiB",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
    Ok(Some((idle, loaded)))
}

fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>())
        })
        .context("no such field")?
        .map_err(Into::into)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let scale = if quick { 1 } else { 4 };
    let mut report = serde_json::Map::new();

    let keys = Keys::generate()?;
    let mock = Mock::start(&keys).await?;
    let mut driver_args: Vec<String> = vec![
        "--controller".into(),
        "--rds-max-channels".into(),
        "64".into(),
    ];
    driver_args.extend(mock.driver_args(&keys));
    let refs: Vec<&str> = driver_args.iter().map(String::as_str).collect();
    let driver = Driver::start(&refs).await?;
    let pid = driver.process.id();
    let ctl = ControllerClient::new(driver.channel.clone());
    let raw = RawSsh::connect(&mock, &keys).await?;

    // SSH commands per CSI call.
    let mut c = ctl.clone();
    let (create_cmds, delete_cmds, template) =
        pair_template(&ctl, &mock, &keys, &raw, "default").await?;
    let (_, list_cmds) = counted(&mock, &keys, &raw, "list", async {
        Ok(c.list_volumes(ListVolumesRequest::default()).await?)
    })
    .await?;
    let (_, cap_cmds) = counted(&mock, &keys, &raw, "capacity", async {
        Ok(c.get_capacity(GetCapacityRequest::default()).await?)
    })
    .await?;
    let snapshot_cmds = snapshot_execs(&ctl, &mock, &keys, &raw, "default").await?;
    let [plain_create, plain_delete, plain_snapshot] = without_scripts(&keys).await?;
    println!("SSH execs per CSI call (RDS running scripts; a script is one exec)");
    for (rpc, cmds) in [
        ("CreateVolume", &create_cmds),
        ("DeleteVolume", &delete_cmds),
        ("CreateSnapshot", &snapshot_cmds),
        ("ListVolumes page", &list_cmds),
        ("GetCapacity", &cap_cmds),
    ] {
        println!("  {rpc:<18} {:>2}   {}", cmds.len(), cmds.join(" | "));
    }
    // Without `:put` a copy's file size is only the rounded one: CreateSnapshot then polls
    // until it has stood still for the copy window, so its count is set by time.
    println!("SSH execs per CSI call (RDS refusing scripts: profile scripting-refused)");
    for (rpc, cmds) in [
        ("CreateVolume", &plain_create),
        ("DeleteVolume", &plain_delete),
        ("CreateSnapshot", &plain_snapshot),
    ] {
        println!("  {rpc:<18} {:>2}   {}", cmds.len(), cmds.join(" | "));
    }
    report.insert(
        "ssh_commands_per_call".into(),
        json!({"CreateVolume": create_cmds.len(), "DeleteVolume": delete_cmds.len(), "CreateSnapshot": snapshot_cmds.len(), "ListVolumesPage": list_cmds.len(), "GetCapacity": cap_cmds.len(),
               "without_scripts": {"CreateVolume": plain_create.len(), "DeleteVolume": plain_delete.len(), "CreateSnapshot": plain_snapshot.len()}}),
    );
    let idle_rss = rss_kib(pid, "VmRSS:")?;

    // Throughput and latency, with and without realistic RouterOS latency.
    println!("\nCreateVolume+DeleteVolume pairs per second (driver vs the same SSH commands sent directly)");
    print_table_header();
    let mut rows = Vec::new();
    for (mode, realistic) in [("zero", false), ("realistic", true)] {
        if realistic {
            inject_realistic_latency(&mock, &keys).await?;
        }
        for concurrency in [1usize, 8, 64] {
            let total = match (realistic, concurrency) {
                (false, 1) => 50 * scale,
                (false, _) => 100 * scale,
                (true, 1) => 3 * scale,
                (true, c) => 2 * c * scale,
            };
            let pids = Pids {
                driver: pid,
                mock: mock.process.id(),
            };
            rows.push(measure(&ctl, &raw, pids, &template, mode, concurrency, total).await?);
        }
        // Leave the raw replays' volumes out of later measurements.
        mock.exec_ok(&keys, "/mock fault clear").await?;
    }
    report.insert("throughput".into(), json!(rows));
    report.insert(
        "serial_routeros".into(),
        serial_routeros(&keys, scale).await?,
    );

    // Peak RSS under 256 concurrent calls.
    let mut tasks = Vec::new();
    for i in 0..256 {
        let mut c = ctl.clone();
        tasks.push(tokio::spawn(async move {
            c.create_volume(create_req(&format!("bench-rss-{i}"))).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let peak_rss = rss_kib(pid, "VmHWM:")?;
    println!(
        "\nDriver memory: idle RSS {:.1} MiB, peak RSS under 256 concurrent CreateVolume {:.1} MiB",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    report.insert(
        "rss_mib".into(),
        json!({"idle": idle_rss as f64 / 1024.0, "peak_256_concurrent": peak_rss as f64 / 1024.0}),
    );
    if let Some((idle, staged)) = node_memory().await? {
        report.insert(
            "node_rss_mib".into(),
            json!({"idle": idle as f64 / 1024.0, format!("staged_{STAGED}"): staged as f64 / 1024.0}),
        );
    }

    // mock-rds alone: 8 connections x 32 channels.
    let per_channel = 20 * scale;
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(RawSsh::connect(&mock, &keys).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in &conns {
        for _ in 0..32 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_channel {
                    conn.exec("/disk print detail where slot=bench-absent")
                        .await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let mock_rate = (8 * 32 * per_channel) as f64 / started.elapsed().as_secs_f64();
    println!("mock-rds alone, 8 connections x 32 channels: {mock_rate:.0} commands/s");
    report.insert("mock_commands_per_s".into(), json!(mock_rate));

    // ListVolumes and an orphan scan over many volumes.
    let volumes = if quick { 1000 } else { 10_000 };
    let seed_started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < volumes {
                let out = raw.exec(&format!(
                    "/disk add type=file file-path=/storage-pool/metal-csi/pvc-scale-{i}.img file-size=1M slot=pvc-scale-{i} nvme-tcp-export=yes nvme-tcp-server-port=4420"
                ))
                .await?;
                anyhow::ensure!(!out.contains("failure"), "seeding pvc-scale-{i}: {out}");
                i += 32;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "\nSeeded {volumes} volumes in {:.1} s",
        seed_started.elapsed().as_secs_f64()
    );
    let mut c = ctl.clone();
    let started = Instant::now();
    let (count, list_all_cmds) = counted(&mock, &keys, &raw, "list-all", async {
        let mut n = 0;
        let mut token = String::new();
        loop {
            let page = c
                .list_volumes(ListVolumesRequest {
                    max_entries: 0,
                    starting_token: token,
                })
                .await?
                .into_inner();
            n += page.entries.len();
            if page.next_token.is_empty() {
                return Ok(n);
            }
            token = page.next_token;
        }
    })
    .await?;
    let list_time = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        count >= volumes,
        "ListVolumes returned {count} of {volumes} volumes"
    );
    println!(
        "ListVolumes over {count} volumes (all pages): {list_time:.3} s, {} SSH command(s)",
        list_all_cmds.len()
    );

    let started = Instant::now();
    let mut orphan_cmd = std::process::Command::new(e2e::binary("rds-csi"));
    orphan_cmd.args(["orphans", "--output", "json", "--grace-period", "0s"]);
    orphan_cmd.args(mock.driver_args(&keys).iter().take(10));
    let (out, scan_cmds) = counted(&mock, &keys, &raw, "orphans", async {
        Ok(tokio::task::spawn_blocking(move || orphan_cmd.output()).await??)
    })
    .await?;
    anyhow::ensure!(
        out.status.success(),
        "orphan scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scan_time = started.elapsed().as_secs_f64();
    println!("Orphan scan over {volumes} disks and files (rds-csi orphans, new process): {scan_time:.3} s, {} SSH command(s)", scan_cmds.len());
    report.insert(
        "scale".into(),
        json!({"volumes": count, "list_all_pages_s": list_time, "list_ssh_commands": list_all_cmds.len(), "orphan_scan_s": scan_time, "orphan_scan_ssh_commands": scan_cmds.len()}),
    );

    let mut machine = BTreeMap::new();
    machine.insert(
        "cpus",
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    );
    machine.insert(
        "profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_string(),
    );
    report.insert("machine".into(), json!(machine));
    if let Some(path) = json_path {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
        )?;
        println!("\nJSON written to {path}");
    }
    Ok(())
}
