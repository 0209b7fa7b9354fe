//! Leader election on a Lease: acquire, renew, handover on release and on expiry against a real
//! API server; against the fake one, kept for faults and for counting one client's requests:
//! 409 conflicts on cue, API errors, a partitioned leader, and `run` never letting two
//! replicas work at once (the standby's Lease reads show it kept trying).

mod kube_fake;
mod kube_objects;
mod kube_real;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::FutureExt;
use hyper::Method;
use kube_fake::*;
use kube_objects::*;
use kube_real::RealApi;
use rds_csi::kube::attachments::ManualClock;
use rds_csi::kube::leader::{LeaderElector, LeaseConfig};
use tokio_util::sync::CancellationToken;

const NS: &str = "csi";
const LEASE: &str = "rds-csi-controller";

fn elector(client: kube::Client, who: &str, clock: &Arc<ManualClock>) -> LeaderElector {
    LeaderElector::new(client, LeaseConfig::new(NS, LEASE, who)).with_clock(clock.clone())
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ))
}

fn holder_in(lease: Option<serde_json::Value>) -> Option<String> {
    lease?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

fn holder(api: &FakeApi) -> Option<String> {
    holder_in(api.get(&leases(NS), LEASE))
}

async fn holder_real(api: &RealApi) -> Option<String> {
    holder_in(api.get(&leases(NS), LEASE).await)
}

#[tokio::test]
async fn second_replica_takes_over_after_release() {
    let api = RealApi::start().await;
    api.put(
        "/api/v1/namespaces",
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;
    let c = clock();
    let (a, b) = (
        elector(api.client(), "a", &c),
        elector(api.client(), "b", &c),
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "creates the Lease");
    assert!(a.is_leader());
    assert_eq!(holder_real(&api).await.as_deref(), Some("a"));
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(!b.is_leader());
    assert!(a.try_acquire_or_renew().await.unwrap(), "renews");

    a.release().await.unwrap();
    assert!(!a.is_leader());
    assert_eq!(holder_real(&api).await, None);
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "free at once after release"
    );
    assert_eq!(holder_real(&api).await.as_deref(), Some("b"));
    assert_eq!(
        api.get(&leases(NS), LEASE).await.unwrap()["spec"]["leaseTransitions"],
        1
    );
    assert!(!a.try_acquire_or_renew().await.unwrap());
    // Releasing a Lease someone else holds changes nothing.
    a.release().await.unwrap();
    assert_eq!(holder_real(&api).await.as_deref(), Some("b"));
}

#[tokio::test]
async fn second_replica_takes_over_when_the_lease_expires() {
    let api = RealApi::start().await;
    api.put(
        "/api/v1/namespaces",
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;
    let c = clock();
    let (a, b) = (
        elector(api.client(), "a", &c),
        elector(api.client(), "b", &c),
    );
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b first sees a's Lease"
    );
    c.advance(Duration::from_secs(10));
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "not expired (15s)"
    );
    c.advance(Duration::from_secs(6));
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "a stopped renewing"
    );
    assert_eq!(holder_real(&api).await.as_deref(), Some("b"));
    // a comes back: the Lease is b's and fresh.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert!(!a.is_leader());
}

#[tokio::test]
async fn renewals_keep_the_lease() {
    let api = RealApi::start().await;
    api.put(
        "/api/v1/namespaces",
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;
    let c = clock();
    let (a, b) = (
        elector(api.client(), "a", &c),
        elector(api.client(), "b", &c),
    );
    a.try_acquire_or_renew().await.unwrap();
    for _ in 0..5 {
        c.advance(Duration::from_secs(10));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "every renewal resets b's view"
        );
    }
}

#[tokio::test]
async fn conflicts_mean_not_leader_and_errors_are_errors() {
    let api = FakeApi::start().await;
    let c = clock();
    let (a, b) = (
        elector(api.client(), "a", &c),
        elector(api.client(), "b", &c),
    );
    // Another replica created the Lease between our GET and POST.
    api.fail(&leases(NS), Some(Method::POST), 409, Some(1));
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap());
    // Takeover of an expired Lease losing the race (409): not leader, no error.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    c.advance(Duration::from_secs(16));
    api.fail(&leases(NS), Some(Method::PUT), 409, Some(1));
    assert!(!b.try_acquire_or_renew().await.unwrap(), "409 on takeover");
    assert!(!b.is_leader());
    assert_eq!(holder(&api).as_deref(), Some("a"));
    assert!(b.try_acquire_or_renew().await.unwrap(), "next round wins");
    assert_eq!(holder(&api).as_deref(), Some("b"));
    // The API failing is an error, and not leadership.
    api.fail(&leases(NS), Some(Method::GET), 500, None);
    assert!(b.try_acquire_or_renew().await.is_err());
    assert!(!b.is_leader());
}

#[tokio::test]
async fn run_hands_over_and_never_runs_two_leaders() {
    let api = FakeApi::start().await;
    let working = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(AtomicUsize::new(0));
    let start = |who: &str| {
        let mut config = LeaseConfig::new(NS, LEASE, who);
        config.lease_duration = Duration::from_secs(1);
        config.renew_interval = Duration::from_millis(50);
        config.retry_interval = Duration::from_millis(20);
        let elector = Arc::new(LeaderElector::new(api.client(), config));
        let cancel = CancellationToken::new();
        let (working, most, terms) = (working.clone(), most.clone(), terms.clone());
        let task = tokio::spawn(elector.clone().run(cancel.clone(), move |token| {
            let (working, most, terms) = (working.clone(), most.clone(), terms.clone());
            async move {
                let now = working.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                terms.fetch_add(1, Ordering::SeqCst);
                token.cancelled().await;
                working.fetch_sub(1, Ordering::SeqCst);
            }
            .boxed()
        }));
        (elector, cancel, task)
    };
    let (a, cancel_a, task_a) = start("a");
    assert!(eventually(Duration::from_secs(10), || a.is_leader()).await);
    let (b, cancel_b, task_b) = start("b");
    assert!(
        eventually(Duration::from_secs(10), || terms.load(Ordering::SeqCst)
            == 1)
        .await
    );
    // b keeps campaigning but never gets the Lease while a renews.
    assert!(
        eventually(Duration::from_secs(10), || api
            .requests()
            .iter()
            .filter(|(m, p)| m == "GET" && p.ends_with(LEASE))
            .count()
            > 10)
        .await
    );
    assert!(!b.is_leader());

    cancel_a.cancel();
    task_a.await.unwrap();
    assert!(eventually(Duration::from_secs(10), || b.is_leader()).await);
    assert!(
        eventually(Duration::from_secs(10), || terms.load(Ordering::SeqCst)
            == 2)
        .await
    );
    assert_eq!(holder(&api).as_deref(), Some("b"));
    cancel_b.cancel();
    task_b.await.unwrap();
    assert_eq!(working.load(Ordering::SeqCst), 0, "work stopped on cancel");
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two leaders at once");
    assert_eq!(holder(&api), None, "released on exit");
}

/// A leader cut off from the API server (its Lease calls hang) must stop its work within the
/// renew deadline, before the lease runs out and another replica takes over: never two at
/// once, even while a renewal is still waiting for an answer.
#[tokio::test]
async fn a_partitioned_leader_steps_down_before_another_takes_over() {
    let api = FakeApi::start().await;
    let working = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(AtomicUsize::new(0));
    let start = |who: &str| {
        let mut config = LeaseConfig::new(NS, LEASE, who);
        config.lease_duration = Duration::from_secs(2);
        config.renew_interval = Duration::from_millis(100);
        config.retry_interval = Duration::from_millis(50);
        let elector = Arc::new(LeaderElector::new(api.client_named(who), config));
        let cancel = CancellationToken::new();
        let (working, most, terms) = (working.clone(), most.clone(), terms.clone());
        let task = tokio::spawn(elector.clone().run(cancel.clone(), move |token| {
            let (working, most, terms) = (working.clone(), most.clone(), terms.clone());
            async move {
                let now = working.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                terms.fetch_add(1, Ordering::SeqCst);
                token.cancelled().await;
                working.fetch_sub(1, Ordering::SeqCst);
            }
            .boxed()
        }));
        (elector, cancel, task)
    };
    let (a, cancel_a, task_a) = start("a");
    assert!(
        eventually(Duration::from_secs(10), || terms.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let (b, cancel_b, task_b) = start("b");
    // b has seen a's Lease at least once before the partition.
    assert!(
        eventually(Duration::from_secs(10), || api
            .requests()
            .iter()
            .filter(|(m, p)| m == "GET" && p.ends_with(LEASE))
            .count()
            > 4)
        .await
    );
    api.hang_client("a", &leases(NS));
    assert!(
        eventually(Duration::from_secs(20), || terms.load(Ordering::SeqCst)
            == 2)
        .await,
        "b never took over"
    );
    assert!(b.is_leader());
    assert!(!a.is_leader(), "a still believes it leads");
    assert_eq!(most.load(Ordering::SeqCst), 1, "two leaders worked at once");
    cancel_b.cancel();
    task_b.await.unwrap();
    // a's release hangs too: its end is bounded by the API call deadline.
    cancel_a.cancel();
    tokio::time::timeout(Duration::from_secs(30), task_a)
        .await
        .expect("a never finished")
        .unwrap();
}
