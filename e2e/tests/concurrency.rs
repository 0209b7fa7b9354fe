//! Many CSI calls at once against one driver: every call succeeds, nothing is created twice,
//! and the mock ends up holding exactly what was asked for.

use std::collections::BTreeSet;

use csi_proto::v1::DeleteVolumeRequest;
use e2e::{create_request, list_volumes, mount_cap, Env, BASE_PATH, MIB};
use rstest::rstest;

/// The slots of the mock's disks that belong to this run.
fn run_slots(env: &Env) -> BTreeSet<String> {
    env.mock
        .disks()
        .unwrap()
        .into_iter()
        .filter(|d| d.slot.starts_with(&env.run_id))
        .map(|d| d.slot)
        .collect()
}

fn run_files(env: &Env) -> BTreeSet<String> {
    env.mock
        .files()
        .unwrap()
        .into_iter()
        .filter(|f| f.path.contains(&env.run_id))
        .map(|f| f.path)
        .collect()
}

fn file_of(id: &str) -> String {
    format!("{BASE_PATH}/{id}.img")
}

async fn create_all(env: &Env, names: &[String]) {
    let calls = names.iter().map(|name| {
        let mut ctl = env.controller();
        let req = create_request(name, 8 * MIB, mount_cap("ext4"));
        let name = name.clone();
        async move { (name, ctl.create_volume(req).await) }
    });
    for (name, result) in futures_join_all(calls).await {
        let vol = result
            .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(vol.volume_id, name);
        assert_eq!(vol.capacity_bytes, 8 * MIB);
    }
}

async fn delete_all(env: &Env, ids: &[String]) {
    let calls = ids.iter().map(|id| {
        let mut ctl = env.controller();
        let req = DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        };
        let id = id.clone();
        async move { (id, ctl.delete_volume(req).await) }
    });
    for (id, result) in futures_join_all(calls).await {
        result.unwrap_or_else(|e| panic!("delete {id}: {e:?}"));
    }
}

/// Runs the futures concurrently on the test's runtime (spawned, so they really overlap).
async fn futures_join_all<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task panicked"));
    }
    out
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_creates_then_fifty_parallel_deletes(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("par", profile).await.unwrap();
    let names: Vec<String> = (0..50).map(|i| env.name(&format!("v{i:02}"))).collect();

    create_all(&env, &names).await;
    let want: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(run_slots(&env), want);
    assert_eq!(
        run_files(&env),
        names.iter().map(|n| file_of(n)).collect::<BTreeSet<_>>()
    );
    for name in &names {
        assert_eq!(env.disk_adds(name).await.unwrap(), 1, "{name}");
    }
    let listed: BTreeSet<String> = list_volumes(&mut env.controller())
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.volume_id)
        .collect();
    assert_eq!(listed, want);

    delete_all(&env, &names).await;
    assert!(run_slots(&env).is_empty());
    assert!(run_files(&env).is_empty());
    assert!(list_volumes(&mut env.controller())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(env.cleanup_run().await.unwrap(), (0, 0));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_mixed_creates_and_deletes(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("mix", profile).await.unwrap();
    let old: Vec<String> = (0..25).map(|i| env.name(&format!("old{i:02}"))).collect();
    let new: Vec<String> = (0..25).map(|i| env.name(&format!("new{i:02}"))).collect();
    create_all(&env, &old).await;

    // Interleave the two kinds so creates and deletes really overlap.
    let mut calls = Vec::new();
    for (o, n) in old.iter().zip(&new) {
        let mut ctl = env.controller();
        let id = o.clone();
        calls.push(tokio::spawn(async move {
            ctl.delete_volume(DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| format!("delete {id}: {e:?}"))
        }));
        let mut ctl = env.controller();
        let req = create_request(n, 8 * MIB, mount_cap("xfs"));
        let name = n.clone();
        calls.push(tokio::spawn(async move {
            ctl.create_volume(req)
                .await
                .map(drop)
                .map_err(|e| format!("create {name}: {e:?}"))
        }));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let want: BTreeSet<String> = new.iter().cloned().collect();
    assert_eq!(run_slots(&env), want);
    assert_eq!(
        run_files(&env),
        new.iter().map(|n| file_of(n)).collect::<BTreeSet<_>>()
    );
    for name in &new {
        assert_eq!(env.disk_adds(name).await.unwrap(), 1, "{name}");
    }
    assert_eq!(env.cleanup_run().await.unwrap(), (25, 0));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_parallel_creates_of_one_name_make_one_disk(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("same", profile).await.unwrap();
    let name = env.name("one");
    let calls = (0..16).map(|_| {
        let mut ctl = env.controller();
        let req = create_request(&name, 16 * MIB, mount_cap("ext4"));
        async move { ctl.create_volume(req).await }
    });
    for result in futures_join_all(calls).await {
        let vol = result.unwrap().into_inner().volume.unwrap();
        assert_eq!(vol.volume_id, name);
        assert_eq!(vol.capacity_bytes, 16 * MIB);
    }
    assert_eq!(run_slots(&env), BTreeSet::from([name.clone()]));
    assert_eq!(run_files(&env), BTreeSet::from([file_of(&name)]));
    // Exactly one `/disk add` for the slot took effect: the others found the disk. (Under
    // dirs-no-create one more was refused before the driver made the directory.)
    let adds: Vec<_> = env
        .mock
        .history(&env.keys)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.command.starts_with("/disk add") && h.took_effect())
        .collect();
    assert_eq!(adds.len(), 1, "{adds:#?}");
    assert_eq!(env.cleanup_run().await.unwrap(), (1, 0));
}
