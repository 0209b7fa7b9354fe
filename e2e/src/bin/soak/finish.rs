//! The end of a run: quiesce, check the model against the RDS, read back the data of every
//! volume whose content is known, clean up through CSI as a CO would, then check that nothing
//! was left on the RDS or the host and that no process panicked or leaked.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use csi_proto::v1::{DeleteSnapshotRequest, DeleteVolumeRequest};

use crate::model::{Call, Known};
use crate::ops::{timed, vol, Soak, VOLUMES};

pub fn panic_in(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("panicked at"))
        .map(|l| format!("panic in {}: {l}", log.display()))
}

pub async fn finish(soak: &Soak) -> anyhow::Result<()> {
    let model = &soak.model;
    let at = soak.ops;
    // A refuse-connections fault may still be on for a moment.
    retry(|| async {
        let env = soak.env.read().await;
        env.exec_ok("/mock fault clear").await?;
        env.exec_ok(&format!("/mock profile set={}", soak.profile))
            .await
            .map(drop)
    })
    .await?;
    // Whatever a fault interrupted is finished by retries, as a CO would.
    let (mut ctl, node) = soak.clients().await;
    for v in 0..VOLUMES {
        let name = vol(v);
        let (staging, target) = soak.paths(&name).await;
        retry(|| async {
            let mut c = ctl.clone();
            let mut n = node.clone();
            let (node_clean, unpublished) =
                soak.unstage(&name, &staging, &target, &mut c, &mut n).await;
            (node_clean && unpublished).then_some(()).context("unstage")
        })
        .await?;
        // The last unpublish succeeded, with nothing else in flight.
        model.set(&name, |o| o.hold.after(Call::Unpublish, true, true));
    }
    // Every fenced volume is closed.
    crate::fence::check(soak, at).await;
    check_state(soak).await?;
    soak.adds.tally(&*soak.env.read().await).await;
    // Data written on a staged volume (or copied into it) reads back intact.
    if soak.root {
        for v in 0..VOLUMES {
            let o = model.get(&vol(v));
            if o.known == Known::Present && o.content.is_some() {
                let (mut c, mut n) = (ctl.clone(), node.clone());
                soak.stage_cycle(at, v, false, &mut c, &mut n).await;
            }
        }
    }
    // Clean up through CSI: every snapshot and volume the driver lists (the mock is this run's
    // alone), snapshots first. As a CO does, every object it was ever told about is deleted
    // until that succeeds, whether the RDS still lists it or not (a failed delete may have left
    // only a file).
    let objects = model.objects.lock().unwrap().clone();
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
    for d in env.mock.disks()? {
        model.violation(
            at,
            format!("disk left after clean-up: {} ({})", d.slot, d.file_path),
        );
    }
    for f in env.mock.files()? {
        model.violation(at, format!("file left after clean-up: {}", f.path));
    }
    for l in env.host.leftovers() {
        model.violation(at, format!("host: {l} left behind"));
    }
    for p in stray_processes(&env) {
        model.violation(at, format!("process left behind: {p}"));
    }
    for log in [&env.driver.log, &env.mock.log] {
        if let Some(p) = panic_in(log) {
            model.violation(at, p);
        }
    }
    // `SOAK_LOGS=DIR` keeps the logs of a run that found violations (the run's own directories
    // are deleted with it).
    if let Some(dir) = std::env::var_os("SOAK_LOGS") {
        if !model.violations.lock().unwrap().is_empty() {
            let dir = Path::new(&dir);
            std::fs::create_dir_all(dir)?;
            std::fs::copy(
                &env.driver.log,
                dir.join(format!("driver-{}.log", soak.ops)),
            )?;
            std::fs::copy(&env.mock.log, dir.join(format!("mock-{}.log", soak.ops)))?;
            let history = env.exec_ok("/mock history count=100000").await?;
            std::fs::write(dir.join(format!("history-{}.txt", soak.ops)), history)?;
        }
    }
    Ok(())
}

/// The RDS at rest against the model: every acknowledged volume and snapshot there once with
/// its size, every deleted one gone, every disk with its file and one of the run's names.
async fn check_state(soak: &Soak) -> anyhow::Result<()> {
    let model = &soak.model;
    let at = soak.ops;
    let env = soak.env.read().await;
    let disks = env.mock.disks()?;
    let files: HashSet<String> = env.mock.files()?.into_iter().map(|f| f.path).collect();
    let objects = model.objects.lock().unwrap().clone();
    let mut ours: HashSet<String> = (0..VOLUMES).map(vol).collect();
    ours.extend(objects.values().filter_map(|o| o.id.clone()));
    let mut paths = HashSet::new();
    for d in &disks {
        if !files.contains(&d.file_path) {
            model.violation(at, format!("disk {} has no file ({})", d.slot, d.file_path));
        }
        if !paths.insert(d.file_path.clone()) {
            model.violation(at, format!("two disks share the file {}", d.file_path));
        }
        // A snapshot whose create failed has an ID the run never learnt; its file names its
        // source.
        let snapshot_of_ours =
            d.slot.starts_with("snap-") && d.file_path.contains(".from-pvc-soak-v");
        if !ours.contains(&d.slot) && !snapshot_of_ours {
            model.violation(
                at,
                format!("disk {} is no volume or snapshot of the run", d.slot),
            );
        }
    }
    for (name, o) in &objects {
        let id = if name.starts_with("soak-s") {
            match &o.id {
                Some(id) => id.clone(),
                None => continue,
            }
        } else {
            name.clone()
        };
        let actual = disks.iter().find(|d| d.slot == id).map(|d| d.file_size);
        match (o.known, actual) {
            (Known::Present, Some(size)) if size >= o.size => {}
            (Known::Present, other) => model.violation(
                at,
                format!(
                    "{name} was acknowledged ({} bytes) but the RDS holds {other:?}",
                    o.size
                ),
            ),
            (Known::Absent, Some(_)) => {
                model.violation(at, format!("{name} was deleted but still exists"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Processes that outlived their work: children of the driver (mkfs, mount, losetup) still
/// running at rest, and any process but the current driver and mock naming the run's
/// directories (a driver or mock left over from a restart).
fn stray_processes(env: &e2e::Env) -> Vec<String> {
    let driver = env.driver.process.id();
    let mock = env.mock.process.id();
    let dirs: Vec<String> = [env.work.path(), &env.mock.data_dir, &env.mock.state_dir]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == driver || pid == mock || pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        // The parent is the fourth field of `stat`, after the parenthesised command name.
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_string();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if ppid == Some(driver) || dirs.iter().any(|d| cmdline.contains(d.as_str())) {
            out.push(format!("{pid} {}", cmdline.trim()));
        }
    }
    out
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
