//! RDS failures seen through CSI: injected errors, hung and dropped commands, an RDS restart.
//! Each checks the gRPC code, that the driver recovers, and that the mock ends up with exactly
//! what was asked: nothing lost, nothing duplicated.

use std::time::{Duration, Instant};

use csi_proto::v1::{CreateVolumeRequest, DeleteVolumeRequest, ProbeRequest};
use e2e::{create_request, list_volumes, mount_cap, poll_until, Env, BASE_PATH, MIB};
use rstest::rstest;
use tonic::{Code, Request};

fn req(env: &Env, suffix: &str) -> CreateVolumeRequest {
    create_request(&env.name(suffix), 8 * MIB, mount_cap("ext4"))
}

fn with_timeout<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

fn slots(env: &Env) -> Vec<String> {
    let mut s: Vec<String> = env
        .mock
        .disks()
        .unwrap()
        .into_iter()
        .map(|d| d.slot)
        .collect();
    s.sort();
    s
}

fn files(env: &Env) -> Vec<String> {
    let mut f: Vec<String> = env
        .mock
        .files()
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    f.sort();
    f
}

async fn out_of_space(exit_status: Option<u32>, test: &str, profile: &str) {
    let env = Env::start_profile(test, profile).await.unwrap();
    let mut ctl = env.controller();
    let exit = exit_status.map_or(String::new(), |e| format!(" exit-status={e}"));
    env.exec_ok(&format!(
        "/mock fault fail pattern=\"^/disk add\" times=1 message=\"failure: not enough space\"{exit}"
    ))
    .await
    .unwrap();
    let err = ctl.create_volume(req(&env, "full")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(slots(&env).is_empty());
    assert!(files(&env).is_empty());
    // Not retried: a full pool does not empty itself in a second.
    let adds: Vec<_> = env
        .rds_commands()
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.command.starts_with("/disk add"))
        .collect();
    assert_eq!(adds.len(), 1, "{adds:#?}");
    assert_eq!(adds[0].disposition, "Failed");

    // The fault was for one command only; the retry by the CO succeeds, once.
    let name = env.name("full");
    ctl.create_volume(req(&env, "full")).await.unwrap();
    assert_eq!(slots(&env), vec![name.clone()]);
    assert_eq!(files(&env), vec![format!("{BASE_PATH}/{name}.img")]);
    assert_eq!(env.disk_adds(&name).await.unwrap(), 1);
    assert_eq!(env.cleanup_run().await.unwrap(), (1, 0));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_enough_space_is_resource_exhausted(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    out_of_space(None, "full", profile).await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_enough_space_with_exit_status_zero_is_resource_exhausted(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    // Real RouterOS's exit status on errors is unknown: the text alone must decide.
    out_of_space(Some(0), "full0", profile).await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hung_command_fails_by_the_deadline_and_the_next_call_works(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("hang", profile).await.unwrap();
    let mut ctl = env.controller();
    env.exec_ok("/mock fault hang pattern=\"^/disk add\" times=1")
        .await
        .unwrap();
    let started = Instant::now();
    let err = ctl
        .create_volume(with_timeout(req(&env, "h"), Duration::from_secs(2)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // The driver's own answer, a margin before the caller's deadline, not the caller's timeout
    // (Cancelled).
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let hung: Vec<_> = env
        .rds_commands()
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.disposition == "Hung")
        .collect();
    assert_eq!(hung.len(), 1, "{hung:#?}");
    assert!(hung[0].command.starts_with("/disk add"));
    assert!(slots(&env).is_empty(), "a hung command is not run");

    env.exec_ok("/mock fault clear").await.unwrap();
    // The hung channel must not wedge the driver: the retry completes well within its deadline.
    let started = Instant::now();
    let vol = ctl
        .create_volume(with_timeout(req(&env, "h"), Duration::from_secs(20)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(vol.volume_id, env.name("h"));
    assert_eq!(slots(&env), vec![env.name("h")]);
    assert_eq!(env.disk_adds(&env.name("h")).await.unwrap(), 1);
    let probe = env.identity().probe(ProbeRequest {}).await.unwrap();
    assert_eq!(probe.into_inner().ready, Some(true));
    assert_eq!(env.cleanup_run().await.unwrap(), (1, 0));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_dropped_after_disk_add_creates_exactly_one_disk(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("drop", profile).await.unwrap();
    let mut ctl = env.controller();
    let name = env.name("d");
    // The base directory exists, so the dropped add is one that works (under dirs-no-create
    // the first add would otherwise be refused for want of it).
    env.exec_ok(&format!(
        "/file add type=directory name={}",
        &BASE_PATH[1..]
    ))
    .await
    .unwrap();
    env.exec_ok("/mock fault drop pattern=\"^/disk add\" times=1")
        .await
        .unwrap();
    // The add ran but its reply was lost; the driver must notice the disk, not add it again.
    // A CO would retry an Unavailable, so the test does too (once).
    let vol = match ctl.create_volume(req(&env, "d")).await {
        Ok(r) => r.into_inner().volume.unwrap(),
        Err(e) if e.code() == Code::Unavailable => ctl
            .create_volume(req(&env, "d"))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap(),
        Err(e) => panic!("create after a dropped reply: {e:?}"),
    };
    assert_eq!(vol.volume_id, name);
    assert_eq!(vol.capacity_bytes, 8 * MIB);
    assert_eq!(slots(&env), vec![name.clone()]);
    assert_eq!(files(&env), vec![format!("{BASE_PATH}/{name}.img")]);
    let history = env.rds_commands().await.unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.disposition == "Dropped" && h.command.starts_with("/disk add")),
        "the fault did not fire: {history:#?}"
    );
    assert_eq!(env.disk_adds(&name).await.unwrap(), 1, "{history:#?}");

    // A dropped `/disk remove` too: delete converges, nothing is left.
    env.exec_ok("/mock fault drop pattern=\"^/disk remove\" times=1")
        .await
        .unwrap();
    let del = DeleteVolumeRequest {
        volume_id: name.clone(),
        ..Default::default()
    };
    if let Err(e) = ctl.delete_volume(del.clone()).await {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        ctl.delete_volume(del).await.unwrap();
    }
    assert!(slots(&env).is_empty());
    assert!(files(&env).is_empty());
    assert_eq!(env.cleanup_run().await.unwrap(), (0, 0));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_connections_dropped_between_calls(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("cut", profile).await.unwrap();
    let mut ctl = env.controller();
    ctl.create_volume(req(&env, "a")).await.unwrap();
    env.exec_ok("/mock drop-connections").await.unwrap();
    // The driver's connection is gone; the next calls reconnect transparently.
    ctl.create_volume(req(&env, "b")).await.unwrap();
    let listed: Vec<String> = list_volumes(&mut ctl)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.volume_id)
        .collect();
    assert_eq!(listed, vec![env.name("a"), env.name("b")]);
    assert_eq!(env.cleanup_run().await.unwrap(), (2, 0));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rds_restart_during_a_run(#[values("default", "hardware-a", "hardware-b")] profile: &str) {
    let mut env = Env::start_profile("reboot", profile).await.unwrap();
    let mut ctl = env.controller();
    let mut id = env.identity();
    let before: Vec<String> = ["a", "b", "c"].iter().map(|s| env.name(s)).collect();
    for s in ["a", "b", "c"] {
        ctl.create_volume(req(&env, s)).await.unwrap();
    }

    env.mock.stop().await.unwrap();
    poll_until("Probe to report not ready", Duration::from_secs(20), || {
        let mut id = id.clone();
        async move {
            let ready = id.probe(ProbeRequest {}).await.ok()?.into_inner().ready;
            (ready == Some(false)).then_some(())
        }
    })
    .await
    .unwrap();
    // The driver answers before the deadline, when its next reconnect would come too late.
    let err = ctl
        .create_volume(with_timeout(req(&env, "down"), Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    env.mock.resume(&env.keys).await.unwrap();
    // Bounded by the driver's reconnect backoff (at most 30 s).
    poll_until("Probe to report ready", Duration::from_secs(40), || {
        let mut id = id.clone();
        async move {
            let ready = id.probe(ProbeRequest {}).await.ok()?.into_inner().ready;
            (ready == Some(true)).then_some(())
        }
    })
    .await
    .unwrap();
    let listed: Vec<String> = list_volumes(&mut ctl)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.volume_id)
        .collect();
    assert_eq!(listed, before, "volumes made before the restart");
    // The call that failed while the RDS was down left nothing; its retry now works, once.
    ctl.create_volume(req(&env, "down")).await.unwrap();
    let mut want = before.clone();
    want.push(env.name("down"));
    want.sort();
    assert_eq!(slots(&env), want);
    assert_eq!(files(&env).len(), 4);
    assert_eq!(env.disk_adds(&env.name("down")).await.unwrap(), 1);
    assert!(id.probe(ProbeRequest {}).await.unwrap().into_inner().ready == Some(true));
    assert_eq!(env.cleanup_run().await.unwrap(), (4, 0));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hung_rds_makes_probe_not_ready_within_its_own_timeout(
    #[values("default", "hardware-a", "hardware-b")] profile: &str,
) {
    let env = Env::start_profile("hangprobe", profile).await.unwrap();
    let mut id = env.identity();
    env.exec_ok("/mock fault hang pattern=\"^/system identity\" times=1")
        .await
        .unwrap();
    // No client deadline here: the driver's own bound (5 s) must end the call, not the test's.
    let started = Instant::now();
    let ready = id.probe(ProbeRequest {}).await.unwrap().into_inner().ready;
    let took = started.elapsed();
    assert_eq!(ready, Some(false));
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let hung = env.mock.history(&env.keys).await.unwrap();
    assert!(
        hung.iter()
            .any(|h| h.disposition == "Hung" && h.command.starts_with("/system identity")),
        "{hung:#?}"
    );
    // One hung channel does not make the driver unready for good.
    let ready = id.probe(ProbeRequest {}).await.unwrap().into_inner().ready;
    assert_eq!(ready, Some(true));
}
