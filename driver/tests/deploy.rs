//! Checks the deployment files against the binary and against each other: the kustomize
//! manifests (rendered by the real `kubectl kustomize`, parsed into typed Kubernetes objects)
//! and, more lightly, the Helm chart. A mismatch here is a driver that never registers, a
//! sidecar talking to no socket, a flag the binary rejects, or a 403 at run time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use rds_csi::rds::ssh::{HostKeyPolicy, HostKeySource};
use serde::Deserialize;
use serde_yaml::Value;

const NAMESPACE: &str = "rds-csi";
const CONTROLLER_SA: &str = "rds-csi-controller";
const NODE_SA: &str = "rds-csi-node";
const DRIVER_CONTAINER: &str = "rds-csi";

/// Which RBAC grant an API call needs: `Cluster` for cluster-scoped objects and for objects
/// in any namespace (events go to the namespace of the PVC they are about); `OwnNs` for
/// objects in the controller's own namespace, which a Role there may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Cluster,
    OwnNs,
}
use Scope::{Cluster, OwnNs};

const READ: &[&str] = &["get", "list", "watch"];
/// What client-go leader election does with its Lease.
const ELECT: &[&str] = &["get", "list", "watch", "create", "update", "delete"];
const EVENTS: &[&str] = &["list", "watch", "create", "update", "patch"];
const ALL: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// Every Kubernetes API call of the controller pod: (who, API group, resource, verbs, scope).
/// The sidecars' rows follow their upstream deploy/kubernetes/rbac.yaml for the flags used
/// here; the rds-csi rows are what the controller code calls. The test checks both ways:
/// each call is allowed, and nothing is granted that no row needs.
#[rustfmt::skip]
const CONTROLLER_API_CALLS: &[(&str, &str, &str, &[&str], Scope)] = &[
    // rds-csi --controller, as listed in driver/src/kube/mod.rs: attachments rebuilt from PVs and
    // VolumeAttachments, node get and watch, CSINode get (attach limits), an encrypted volume's
    // claim and class, snapshot references, core/v1 events, its Lease.
    ("rds-csi", "", "persistentvolumes", &["list"], Cluster),
    ("rds-csi", "storage.k8s.io", "volumeattachments", &["list"], Cluster),
    ("rds-csi", "", "nodes", READ, Cluster),
    ("rds-csi", "storage.k8s.io", "csinodes", &["get"], Cluster),
    ("rds-csi", "", "persistentvolumeclaims", &["get"], Cluster),
    ("rds-csi", "storage.k8s.io", "storageclasses", &["get"], Cluster),
    ("rds-csi", "snapshot.storage.k8s.io", "volumesnapshotcontents", &["list"], Cluster),
    ("rds-csi", "", "events", &["create"], Cluster),
    ("rds-csi", "coordination.k8s.io", "leases", &["get", "create", "update"], OwnNs),
    // external-provisioner with Topology, --enable-capacity and --leader-election.
    ("csi-provisioner", "", "persistentvolumes", &["get", "list", "watch", "create", "patch", "delete"], Cluster),
    ("csi-provisioner", "", "persistentvolumeclaims", &["get", "list", "watch", "update"], Cluster),
    ("csi-provisioner", "storage.k8s.io", "storageclasses", READ, Cluster),
    ("csi-provisioner", "", "events", EVENTS, Cluster),
    // Found by the cluster tier: the provisioner watches VolumeSnapshots (a restore).
    ("csi-provisioner", "snapshot.storage.k8s.io", "volumesnapshots", READ, Cluster),
    ("csi-provisioner", "snapshot.storage.k8s.io", "volumesnapshotcontents", &["get", "list"], Cluster),
    ("csi-provisioner", "storage.k8s.io", "csinodes", READ, Cluster),
    ("csi-provisioner", "", "nodes", READ, Cluster),
    ("csi-provisioner", "storage.k8s.io", "volumeattachments", READ, Cluster),
    ("csi-provisioner", "storage.k8s.io", "volumeattributesclasses", &["get"], Cluster),
    ("csi-provisioner", "coordination.k8s.io", "leases", ELECT, OwnNs),
    ("csi-provisioner", "storage.k8s.io", "csistoragecapacities", ALL, OwnNs),
    // --capacity-ownerref-level=2: pod -> ReplicaSet -> Deployment.
    ("csi-provisioner", "", "pods", &["get"], OwnNs),
    ("csi-provisioner", "apps", "replicasets", &["get"], OwnNs),
    // external-attacher.
    ("csi-attacher", "", "persistentvolumes", &["get", "list", "watch", "patch"], Cluster),
    ("csi-attacher", "storage.k8s.io", "csinodes", READ, Cluster),
    ("csi-attacher", "storage.k8s.io", "volumeattachments", &["get", "list", "watch", "patch"], Cluster),
    ("csi-attacher", "storage.k8s.io", "volumeattachments/status", &["patch"], Cluster),
    ("csi-attacher", "coordination.k8s.io", "leases", ELECT, OwnNs),
    // external-resizer with --handle-volume-inuse-error=false (no pod watch).
    ("csi-resizer", "", "persistentvolumes", &["get", "list", "watch", "patch"], Cluster),
    ("csi-resizer", "", "persistentvolumeclaims", READ, Cluster),
    ("csi-resizer", "", "persistentvolumeclaims/status", &["patch"], Cluster),
    ("csi-resizer", "", "events", EVENTS, Cluster),
    ("csi-resizer", "storage.k8s.io", "volumeattributesclasses", READ, Cluster),
    ("csi-resizer", "coordination.k8s.io", "leases", ELECT, OwnNs),
    // csi-snapshotter (group snapshots off).
    ("csi-snapshotter", "", "events", EVENTS, Cluster),
    ("csi-snapshotter", "snapshot.storage.k8s.io", "volumesnapshotclasses", READ, Cluster),
    ("csi-snapshotter", "snapshot.storage.k8s.io", "volumesnapshotcontents", &["create", "get", "list", "watch", "update", "patch"], Cluster),
    ("csi-snapshotter", "snapshot.storage.k8s.io", "volumesnapshotcontents/status", &["update", "patch"], Cluster),
    ("csi-snapshotter", "coordination.k8s.io", "leases", ELECT, OwnNs),
    // csi-external-health-monitor-controller, node watcher off (no pod or node watch): its
    // upstream rbac.yaml less the node watcher's rules.
    ("csi-external-health-monitor-controller", "", "persistentvolumes", READ, Cluster),
    ("csi-external-health-monitor-controller", "", "persistentvolumeclaims", READ, Cluster),
    ("csi-external-health-monitor-controller", "", "events", &["get", "list", "watch", "create", "patch"], Cluster),
    ("csi-external-health-monitor-controller", "coordination.k8s.io", "leases", ELECT, OwnNs),
];

/// Sidecar images: container name -> (image repository, major version it must stay on; the
/// cluster tier runs exactly the versions e2e/cluster/go pins).
const SIDECARS: &[(&str, &str, &str)] = &[
    (
        "csi-provisioner",
        "registry.k8s.io/sig-storage/csi-provisioner",
        "v6.",
    ),
    (
        "csi-attacher",
        "registry.k8s.io/sig-storage/csi-attacher",
        "v4.",
    ),
    (
        "csi-resizer",
        "registry.k8s.io/sig-storage/csi-resizer",
        "v2.",
    ),
    (
        "csi-snapshotter",
        "registry.k8s.io/sig-storage/csi-snapshotter",
        "v8.",
    ),
    (
        "csi-external-health-monitor-controller",
        "registry.k8s.io/sig-storage/csi-external-health-monitor-controller",
        "v0.",
    ),
    (
        "liveness-probe",
        "registry.k8s.io/sig-storage/livenessprobe",
        "v2.",
    ),
    (
        "node-driver-registrar",
        "registry.k8s.io/sig-storage/csi-node-driver-registrar",
        "v2.",
    ),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("driver/ has a parent")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// The binary's own view: `rds-csi serve --help`.

struct Help {
    flags: BTreeSet<String>,
    defaults: BTreeMap<String, String>,
}

fn serve_help() -> &'static Help {
    static HELP: OnceLock<Help> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_rds-csi"))
            .args(["serve", "--help"])
            .env_clear()
            .output()
            .expect("run rds-csi serve --help");
        assert!(out.status.success(), "rds-csi serve --help failed");
        let text = String::from_utf8(out.stdout).expect("help is UTF-8");
        let flag_line = regex::Regex::new(r"^\s+(?:-[A-Za-z], )?(--[a-z0-9][a-z0-9-]*)").unwrap();
        let default = regex::Regex::new(r"^\s+\[default: (.*)\]\s*$").unwrap();
        let mut flags = BTreeSet::new();
        let mut defaults = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(c) = flag_line.captures(line) {
                let f = c[1].to_string();
                flags.insert(f.clone());
                current = Some(f);
            } else if let (Some(c), Some(f)) = (default.captures(line), &current) {
                defaults.insert(f.clone(), c[1].to_string());
            }
        }
        assert!(
            flags.contains("--endpoint"),
            "help parsing found no flags:\n{text}"
        );
        Help { flags, defaults }
    })
}

fn help_default(flag: &str) -> String {
    serve_help()
        .defaults
        .get(flag)
        .unwrap_or_else(|| panic!("`rds-csi serve --help` shows no default for {flag}"))
        .clone()
}

// ---------------------------------------------------------------------------------------------
// The kustomize output, parsed.

#[derive(Default)]
struct Rendered {
    namespaces: Vec<Namespace>,
    csi_drivers: Vec<CSIDriver>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    storage_classes: Vec<StorageClass>,
    config_maps: Vec<ConfigMap>,
    disruption_budgets: Vec<PodDisruptionBudget>,
    /// A CRD (snapshot.storage.k8s.io) that k8s-openapi does not model.
    snapshot_classes: Vec<Value>,
    /// (kind, name, namespace) of every object, in order.
    objects: Vec<(String, String, Option<String>)>,
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// `kubectl kustomize deploy/kubernetes`, or None when kubectl is missing outside CI (CI
/// installs it, so there a missing kubectl fails the test rather than skipping it).
fn kustomize_output() -> Option<&'static str> {
    static OUT: OnceLock<Option<String>> = OnceLock::new();
    OUT.get_or_init(|| {
        let dir = repo_root().join("deploy/kubernetes");
        match Command::new(kubectl()).arg("kustomize").arg(&dir).output() {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "kubectl kustomize {} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                Some(String::from_utf8(out.stdout).expect("kustomize output is UTF-8"))
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() =>
            {
                eprintln!(
                    "SKIPPED: `{}` not found; install kubectl (Debian: kubernetes-client) to check \
                     deploy/kubernetes",
                    kubectl()
                );
                None
            }
            Err(e) => panic!("cannot run `{} kustomize`: {e}", kubectl()),
        }
    })
    .as_deref()
}

fn typed<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> T {
    serde_yaml::from_value(v).unwrap_or_else(|e| panic!("{what} does not parse as its type: {e}"))
}

fn rendered() -> Option<&'static Rendered> {
    static R: OnceLock<Option<Rendered>> = OnceLock::new();
    R.get_or_init(|| {
        let text = kustomize_output()?;
        let mut r = Rendered::default();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(doc).expect("kustomize output is YAML");
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().expect("object has a kind").to_string();
            let name = v["metadata"]["name"]
                .as_str()
                .expect("object has a name")
                .to_string();
            let ns = v["metadata"]["namespace"].as_str().map(str::to_string);
            let what = format!("{kind} {name}");
            r.objects.push((kind.clone(), name, ns));
            // An unknown kind fails: a new object must get its checks here too.
            match kind.as_str() {
                "Namespace" => r.namespaces.push(typed(v, &what)),
                "CSIDriver" => r.csi_drivers.push(typed(v, &what)),
                "Deployment" => r.deployments.push(typed(v, &what)),
                "DaemonSet" => r.daemon_sets.push(typed(v, &what)),
                "ServiceAccount" => r.service_accounts.push(typed(v, &what)),
                "ClusterRole" => r.cluster_roles.push(typed(v, &what)),
                "ClusterRoleBinding" => r.cluster_role_bindings.push(typed(v, &what)),
                "Role" => r.roles.push(typed(v, &what)),
                "RoleBinding" => r.role_bindings.push(typed(v, &what)),
                "StorageClass" => r.storage_classes.push(typed(v, &what)),
                "ConfigMap" => r.config_maps.push(typed(v, &what)),
                "PodDisruptionBudget" => r.disruption_budgets.push(typed(v, &what)),
                "VolumeSnapshotClass" => r.snapshot_classes.push(v),
                "Secret" => panic!(
                    "kustomize renders a Secret: an apply would replace the real SSH key with a \
                     placeholder (keep it in secret.example.yaml)"
                ),
                other => panic!("unexpected kind {other} in deploy/kubernetes"),
            }
        }
        Some(r)
    })
    .as_ref()
}

macro_rules! rendered_or_skip {
    () => {
        match rendered() {
            Some(r) => r,
            None => return,
        }
    };
}

fn pod_spec_of_controller(r: &Rendered) -> &PodSpec {
    assert_eq!(r.deployments.len(), 1, "one controller Deployment");
    let d = &r.deployments[0];
    let spec = d.spec.as_ref().expect("Deployment spec");
    spec.template.spec.as_ref().expect("controller pod spec")
}

fn pod_spec_of_node(r: &Rendered) -> &PodSpec {
    assert_eq!(r.daemon_sets.len(), 1, "one node DaemonSet");
    let spec = r.daemon_sets[0].spec.as_ref().expect("DaemonSet spec");
    spec.template.spec.as_ref().expect("node pod spec")
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn args(c: &Container) -> &[String] {
    c.args.as_deref().unwrap_or_default()
}

/// The value of `--flag=value` or `--flag value` in a container's arguments.
fn flag_value(c: &Container, flag: &str) -> Option<String> {
    let a = args(c);
    a.iter().enumerate().find_map(|(i, arg)| {
        if let Some(v) = arg
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
        {
            Some(v.to_string())
        } else if arg == flag {
            a.get(i + 1).filter(|v| !v.starts_with("--")).cloned()
        } else {
            None
        }
    })
}

fn socket_path(endpoint: &str) -> String {
    endpoint
        .strip_prefix("unix://")
        .unwrap_or(endpoint)
        .to_string()
}

/// The volume a container mounts at exactly `dir`.
fn volume_mounted_at(c: &Container, dir: &str) -> Option<String> {
    c.volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.mount_path.trim_end_matches('/') == dir.trim_end_matches('/'))
        .map(|m| m.name.clone())
}

fn host_path_of(pod: &PodSpec, volume: &str) -> Option<String> {
    pod.volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == volume)
        .and_then(|v| v.host_path.as_ref())
        .map(|h| h.path.trim_end_matches('/').to_string())
}

fn parent_dir(path: &str) -> String {
    Path::new(path)
        .parent()
        .expect("socket path has a directory")
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// Objects and namespaces.

#[test]
fn kustomize_renders_every_object_in_its_namespace() {
    let r = rendered_or_skip!();
    let have: BTreeSet<(&str, &str)> = r
        .objects
        .iter()
        .map(|(k, n, _)| (k.as_str(), n.as_str()))
        .collect();
    for want in [
        ("Namespace", NAMESPACE),
        ("CSIDriver", "rds.csi.srvlab.io"),
        ("Deployment", "rds-csi-controller"),
        ("DaemonSet", "rds-csi-node"),
        ("ServiceAccount", CONTROLLER_SA),
        ("ServiceAccount", NODE_SA),
        ("ConfigMap", "rds-csi-config"),
        ("StorageClass", "rds-nvme"),
        ("StorageClass", "rds-nvme-block"),
        ("VolumeSnapshotClass", "rds-csi-snapclass"),
    ] {
        assert!(have.contains(&want), "kustomize output lacks {want:?}");
    }
    let cluster_scoped = [
        "Namespace",
        "CSIDriver",
        "ClusterRole",
        "ClusterRoleBinding",
        "StorageClass",
        "VolumeSnapshotClass",
    ];
    for (kind, name, ns) in &r.objects {
        if cluster_scoped.contains(&kind.as_str()) {
            assert_eq!(ns, &None, "{kind} {name} is cluster-scoped: no namespace");
        } else {
            assert_eq!(ns.as_deref(), Some(NAMESPACE), "{kind} {name} namespace");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The driver name.

#[test]
fn driver_name_agrees_everywhere_and_is_the_binary_default() {
    let default_name = help_default("--driver-name");
    assert_eq!(default_name, rds_csi::cli::DEFAULT_DRIVER_NAME);
    let r = rendered_or_skip!();

    assert_eq!(r.csi_drivers.len(), 1);
    let d = &r.csi_drivers[0];
    assert_eq!(
        d.metadata.name.as_deref(),
        Some(default_name.as_str()),
        "CSIDriver name"
    );
    let spec = &d.spec;
    assert_eq!(spec.attach_required, Some(true));
    assert_eq!(spec.pod_info_on_mount, Some(true));
    assert_eq!(spec.fs_group_policy.as_deref(), Some("File"));
    assert_eq!(
        spec.volume_lifecycle_modes.as_deref(),
        Some(&["Persistent".to_string()][..])
    );
    // --enable-capacity and storageCapacity go together (the Go driver had one without the
    // other, and WaitForFirstConsumer PVCs found no node with capacity).
    assert_eq!(spec.storage_capacity, Some(true));
    let provisioner = container(pod_spec_of_controller(r), "csi-provisioner");
    assert!(args(provisioner).iter().any(|a| a == "--enable-capacity"));

    assert_eq!(r.storage_classes.len(), 2);
    for sc in &r.storage_classes {
        let name = sc.metadata.name.as_deref().unwrap_or_default();
        assert_eq!(
            sc.provisioner, default_name,
            "StorageClass {name} provisioner"
        );
        assert_eq!(
            sc.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer"),
            "{name}"
        );
        assert_eq!(sc.allow_volume_expansion, Some(true), "{name}");
        let params = sc.parameters.clone().unwrap_or_default();
        for key in [
            "volumePath",
            "nvmeAddress",
            "nvmePort",
            "csi.storage.k8s.io/fstype",
        ] {
            assert!(
                params.contains_key(key),
                "StorageClass {name} lacks parameter {key}"
            );
        }
        assert!(params["volumePath"].starts_with('/'), "{name} volumePath");
        params["nvmePort"]
            .parse::<u16>()
            .expect("nvmePort is a port");
    }

    assert_eq!(r.snapshot_classes.len(), 1);
    assert_eq!(
        r.snapshot_classes[0]["driver"].as_str(),
        Some(default_name.as_str())
    );

    // Nobody overrides the name to something else.
    for pod in [pod_spec_of_controller(r), pod_spec_of_node(r)] {
        let c = container(pod, DRIVER_CONTAINER);
        if let Some(n) = flag_value(c, "--driver-name") {
            assert_eq!(n, default_name);
        }
    }

    // Kubelet finds the node plugin at <kubelet-dir>/plugins/<driver-name>/csi.sock, which is
    // also the binary's default endpoint: a driver started without --endpoint still matches.
    let kubelet_dir = help_default("--kubelet-dir");
    let expected = format!("{kubelet_dir}/plugins/{default_name}/csi.sock");
    let registrar = container(pod_spec_of_node(r), "node-driver-registrar");
    assert_eq!(
        flag_value(registrar, "--kubelet-registration-path").as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(socket_path(&help_default("--endpoint")), expected);
}

// ---------------------------------------------------------------------------------------------
// Sockets and host paths.

/// Every container with `--csi-address` talks to the driver's `--endpoint` through the same
/// volume mounted at the same directory. Returns (socket path, socket volume).
fn check_socket_wiring(pod: &PodSpec, pod_name: &str) -> (String, String) {
    let driver = container(pod, DRIVER_CONTAINER);
    let endpoint = flag_value(driver, "--endpoint")
        .unwrap_or_else(|| panic!("{pod_name}: rds-csi has no --endpoint"));
    assert!(
        endpoint.starts_with("unix://"),
        "{pod_name}: endpoint {endpoint}"
    );
    let sock = socket_path(&endpoint);
    let dir = parent_dir(&sock);
    let volume = volume_mounted_at(driver, &dir)
        .unwrap_or_else(|| panic!("{pod_name}: rds-csi does not mount the socket dir {dir}"));
    let mut sidecars = 0;
    for c in pod.containers.iter().filter(|c| c.name != DRIVER_CONTAINER) {
        let addr = flag_value(c, "--csi-address")
            .unwrap_or_else(|| panic!("{pod_name}: sidecar {} has no --csi-address", c.name));
        assert_eq!(
            socket_path(&addr),
            sock,
            "{pod_name}: {} --csi-address",
            c.name
        );
        assert_eq!(
            volume_mounted_at(c, &dir).as_deref(),
            Some(volume.as_str()),
            "{pod_name}: {} must mount volume {volume} at {dir}",
            c.name
        );
        sidecars += 1;
    }
    assert!(sidecars > 0, "{pod_name}: no sidecars");
    (sock, volume)
}

#[test]
fn controller_socket_is_shared_with_every_sidecar() {
    let r = rendered_or_skip!();
    let pod = pod_spec_of_controller(r);
    let (_, volume) = check_socket_wiring(pod, "controller");
    let v = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == volume);
    assert!(
        v.and_then(|v| v.empty_dir.as_ref()).is_some(),
        "controller socket dir is an emptyDir"
    );
    let names: BTreeSet<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "csi-provisioner",
        "csi-attacher",
        "csi-resizer",
        "csi-snapshotter",
        "liveness-probe",
    ] {
        assert!(names.contains(want), "controller lacks sidecar {want}");
    }
    assert_eq!(pod.service_account_name.as_deref(), Some(CONTROLLER_SA));
}

/// An RDS outage must not restart the controller: liveness is the process's own `/healthz` on
/// the metrics port, readiness is CSI Probe (through the livenessprobe sidecar).
/// Two replicas on different nodes where the cluster has two, replaced one at a time and never
/// more than two at once, kept at one by a PodDisruptionBudget through a drain; every
/// sidecar and the driver's own reconcilers run on their Lease holder only.
#[test]
fn the_controller_runs_two_replicas_with_leader_election() {
    let r = rendered_or_skip!();
    let d = &r.deployments[0];
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let strategy = spec.strategy.as_ref().expect("a strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        rolling.max_surge,
        Some(IntOrString::Int(0)),
        "never a third"
    );
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();

    let pod = pod_spec_of_controller(r);
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .expect("pod anti-affinity");
    let terms = anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .expect("preferred: one node still runs both");
    let term = &terms[0].pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    let selects = term
        .label_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("matchLabels");
    assert!(
        selects.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{selects:?}"
    );

    assert_eq!(r.disruption_budgets.len(), 1, "one PodDisruptionBudget");
    let pdb = r.disruption_budgets[0].spec.as_ref().unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    let selects = pdb
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .unwrap();
    assert!(
        selects.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{selects:?}"
    );

    // Every Lease in the pod's own namespace, which the Role grants (the driver's default, the
    // kubeconfig's namespace, would be "default" outside a pod).
    for c in pod.containers.iter().filter(|c| c.name != "liveness-probe") {
        assert_eq!(
            flag_value(c, "--leader-election-namespace").as_deref(),
            Some("$(NAMESPACE)"),
            "{}",
            c.name
        );
        let namespace = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NAMESPACE")
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(namespace, Some("metadata.namespace"), "{}", c.name);
    }
    // The probe answers for its own pod: nothing to elect.
    for c in pod.containers.iter().filter(|c| c.name != "liveness-probe") {
        assert!(
            args(c).iter().any(|a| a == "--leader-election"),
            "{} runs without --leader-election",
            c.name
        );
    }
}

#[test]
fn controller_liveness_does_not_depend_on_the_rds() {
    let r = rendered_or_skip!();
    let pod = pod_spec_of_controller(r);
    let driver = container(pod, "rds-csi");
    let port_of = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let port = &probe
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe")
            .port;
        match port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => name.clone(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
        }
    };
    assert_eq!(port_of(driver.liveness_probe.as_ref()), "metrics");
    assert_eq!(port_of(driver.readiness_probe.as_ref()), "healthz");
    let metrics = driver
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(
        flag_value(driver, "--metrics-address").as_deref(),
        Some(format!(":{}", metrics.container_port).as_str())
    );
}

/// The metrics endpoint listens on the pod's IP (`:PORT` with `--pod-ip` from the downward
/// API), never on every interface: the node plugin shares the host's network. Without
/// `--pod-ip` it would bind loopback, and the controller's liveness probe would fail.
#[test]
fn metrics_listen_on_the_pod_ip() {
    let r = rendered_or_skip!();
    for (pod_name, pod) in [
        ("controller", pod_spec_of_controller(r)),
        ("node", pod_spec_of_node(r)),
    ] {
        let driver = container(pod, DRIVER_CONTAINER);
        let address = flag_value(driver, "--metrics-address").expect("--metrics-address");
        assert!(address.starts_with(':'), "{pod_name}: {address}");
        let pod_ip =
            flag_value(driver, "--pod-ip").unwrap_or_else(|| panic!("{pod_name}: no --pod-ip"));
        let var = pod_ip
            .strip_prefix("$(")
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{pod_name}: --pod-ip={pod_ip} is not an env reference"));
        let source = driver
            .env
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.name == var)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        assert_eq!(source.as_deref(), Some("status.podIP"), "{pod_name}: {var}");
    }
    for t in ["controller.yaml", "node.yaml"] {
        let text = read(&chart_dir().join("templates").join(t));
        assert!(
            text.contains("- --pod-ip=$(POD_IP)") && text.contains("fieldPath: status.podIP"),
            "chart {t}: the metrics endpoint must get the pod IP"
        );
    }
}

#[test]
fn node_socket_registration_and_host_mounts_agree() {
    let r = rendered_or_skip!();
    let pod = pod_spec_of_node(r);
    let (sock, volume) = check_socket_wiring(pod, "node");
    let host_dir = host_path_of(pod, &volume).expect("node socket dir is a hostPath");
    let registrar = container(pod, "node-driver-registrar");
    let reg_path = flag_value(registrar, "--kubelet-registration-path").expect("registration path");
    assert_eq!(
        reg_path,
        format!(
            "{host_dir}/{}",
            Path::new(&sock).file_name().unwrap().to_string_lossy()
        ),
        "the registration path is the driver's socket as seen from the host"
    );
    let kubelet_dir = help_default("--kubelet-dir");
    let reg_vol =
        volume_mounted_at(registrar, "/registration").expect("registrar mounts /registration");
    assert_eq!(
        host_path_of(pod, &reg_vol),
        Some(format!("{kubelet_dir}/plugins_registry"))
    );

    assert_eq!(
        pod.host_network,
        Some(true),
        "NVMe/TCP from the host network"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some(NODE_SA));
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "the node calls no API"
    );
    let driver = container(pod, DRIVER_CONTAINER);
    let sc = driver
        .security_context
        .as_ref()
        .expect("node securityContext");
    assert_eq!(sc.privileged, Some(true));

    let mounts = driver.volume_mounts.as_deref().unwrap_or_default();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("node rds-csi does not mount {path}"))
    };
    // Stage and publish mounts reach kubelet only with Bidirectional propagation; the
    // flag's default kubelet dir must be where the host's is mounted.
    let kubelet = mount(&flag_value(driver, "--kubelet-dir").unwrap_or(kubelet_dir.clone()));
    assert_eq!(kubelet.mount_propagation.as_deref(), Some("Bidirectional"));
    assert_eq!(host_path_of(pod, &kubelet.name), Some(kubelet_dir.clone()));
    for (path, read_only) in [
        ("/dev", false),
        ("/sys", false),
        ("/etc/nvme", true),
        ("/lib/modules", true),
    ] {
        let m = mount(path);
        assert_eq!(
            host_path_of(pod, &m.name).as_deref(),
            Some(path),
            "{path} is the host's"
        );
        assert_eq!(m.read_only.unwrap_or(false), read_only, "{path} read-only");
    }
    // The host NQN file the binary reads lies in the mounted host /etc/nvme.
    let hostnqn = flag_value(driver, "--nvme-hostnqn-file")
        .unwrap_or_else(|| help_default("--nvme-hostnqn-file"));
    assert_eq!(parent_dir(&hostnqn), "/etc/nvme");
    assert_eq!(
        flag_value(driver, "--connector").as_deref(),
        Some("nvme-tcp")
    );
    assert_eq!(
        flag_value(driver, "--node-id").as_deref(),
        Some("$(NODE_NAME)")
    );
}

// ---------------------------------------------------------------------------------------------
// The rds-csi command lines.

/// Expands `$(VAR)` the way kubelet does, from the container's env: ConfigMap keys and a
/// stand-in for field references. An unresolvable reference fails: kubelet would pass it on
/// literally.
fn expand_env(r: &Rendered, c: &Container, arg: &str) -> String {
    let mut vars = BTreeMap::new();
    for e in c.env.as_deref().unwrap_or_default() {
        let value = if let Some(v) = &e.value {
            v.clone()
        } else if let Some(src) = &e.value_from {
            if let Some(cm) = &src.config_map_key_ref {
                let map = r
                    .config_maps
                    .iter()
                    .find(|m| m.metadata.name.as_deref() == Some(cm.name.as_str()))
                    .unwrap_or_else(|| panic!("env {} uses missing ConfigMap {}", e.name, cm.name));
                map.data
                    .as_ref()
                    .and_then(|d| d.get(&cm.key))
                    .unwrap_or_else(|| panic!("ConfigMap {} lacks key {}", cm.name, cm.key))
                    .clone()
            } else if let Some(field) = &src.field_ref {
                // Stand-ins of the right shape: an IP where the binary parses one.
                match field.field_path.as_str() {
                    "status.podIP" => "10.0.0.7".into(),
                    _ => "node-1".into(),
                }
            } else {
                panic!("env {}: unsupported source", e.name)
            }
        } else {
            String::new()
        };
        vars.insert(e.name.clone(), value);
    }
    let re = regex::Regex::new(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)").unwrap();
    re.replace_all(arg, |c: &regex::Captures| {
        vars.get(&c[1])
            .unwrap_or_else(|| {
                panic!(
                    "`{arg}` references $({}) which the container does not define",
                    &c[1]
                )
            })
            .clone()
    })
    .into_owned()
}

#[test]
fn rds_csi_flags_exist_and_the_command_lines_validate() {
    let help = serve_help();
    let r = rendered_or_skip!();
    for (pod_name, pod) in [
        ("controller", pod_spec_of_controller(r)),
        ("node", pod_spec_of_node(r)),
    ] {
        let c = container(pod, DRIVER_CONTAINER);
        assert!(
            c.command.is_none(),
            "{pod_name}: use the image's ENTRYPOINT"
        );
        let a = args(c);
        assert_eq!(
            a.first().map(String::as_str),
            Some("serve"),
            "{pod_name}: subcommand"
        );
        for arg in &a[1..] {
            let name = arg.split('=').next().unwrap();
            assert!(
                help.flags.contains(name),
                "{pod_name}: `{arg}` is not a flag of `rds-csi serve --help`"
            );
        }
        // Parse the expanded command line with the binary's own definition and run the same
        // validation `rds-csi serve` does before it starts.
        let argv: Vec<String> = std::iter::once("rds-csi".to_string())
            .chain(a.iter().map(|x| expand_env(r, c, x)))
            .collect();
        let cli = <rds_csi::cli::Cli as clap::Parser>::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{pod_name}: {argv:?} does not parse: {e}"));
        #[allow(irrefutable_let_patterns)]
        let rds_csi::cli::Command::Serve(serve) = cli.command
        else {
            panic!("{pod_name}: not `serve`")
        };
        serve
            .validate()
            .unwrap_or_else(|e| panic!("{pod_name}: {argv:?} is rejected: {e}"));
        match pod_name {
            "controller" => {
                assert!(serve.controller && !serve.node);
                // A file, so the Secret may hold a key line or a fingerprint.
                assert!(
                    matches!(serve.rds.rds_host_key, Some(HostKeySource::File(_))),
                    "controller: --rds-host-key must name the Secret's file"
                );
            }
            _ => assert!(serve.node && !serve.controller),
        }
    }

    // The key files the controller is pointed at are where the Secret's items are mounted.
    let pod = pod_spec_of_controller(r);
    let c = container(pod, DRIVER_CONTAINER);
    let example: Secret = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/kubernetes/secret.example.yaml"))
            .expect("read secret.example.yaml"),
    )
    .expect("secret.example.yaml is a Secret");
    let example_keys: BTreeSet<String> = example
        .string_data
        .unwrap_or_default()
        .into_keys()
        .collect();
    for flag in ["--rds-key-file", "--rds-host-key"] {
        let file = flag_value(c, flag).unwrap_or_else(|| panic!("controller has no {flag}"));
        let dir = parent_dir(&file);
        let base = Path::new(&file)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let vol_name =
            volume_mounted_at(c, &dir).unwrap_or_else(|| panic!("{flag}: {dir} not mounted"));
        let vol = pod
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == vol_name)
            .unwrap();
        let secret = vol
            .secret
            .as_ref()
            .unwrap_or_else(|| panic!("{flag}: {vol_name} is not a Secret"));
        assert_eq!(
            secret.secret_name.as_deref(),
            example.metadata.name.as_deref()
        );
        let item = secret
            .items
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|i| i.path == base)
            .unwrap_or_else(|| panic!("{flag}: no Secret item at {base}"));
        if flag == "--rds-key-file" {
            // The private key readable by its owner only.
            assert_eq!(
                item.mode.or(secret.default_mode),
                Some(0o400),
                "{flag} file mode"
            );
        }
        assert!(
            example_keys.contains(&item.key),
            "secret.example.yaml lacks key {}",
            item.key
        );
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC.

/// (API group, resource, verb) triples.
type Grants = BTreeSet<(String, String, String)>;

/// (API group, resource, verb) triples granted to a ServiceAccount, split into cluster-wide
/// grants and grants valid only in the SA's own namespace.
fn grants(r: &Rendered, ns: &str, sa: &str) -> (Grants, Grants) {
    let is_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.as_deref().unwrap_or_default().iter().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(ns)
        })
    };
    let cluster_role = |name: &str| -> &Vec<PolicyRule> {
        let cr = r
            .cluster_roles
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("binding refers to missing ClusterRole {name}"));
        assert!(
            cr.aggregation_rule.is_none(),
            "ClusterRole {name}: no aggregation"
        );
        cr.rules.as_ref().expect("ClusterRole rules")
    };
    let expand = |rules: &[PolicyRule], into: &mut Grants| {
        for rule in rules {
            assert!(
                rule.resource_names
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty(),
                "resourceNames are not modelled here"
            );
            for list in [&rule.api_groups, &rule.resources] {
                assert!(
                    !list.as_deref().unwrap_or_default().iter().any(|x| x == "*"),
                    "no wildcards: {rule:?}"
                );
            }
            assert!(
                !rule.verbs.iter().any(|v| v == "*"),
                "no wildcard verbs: {rule:?}"
            );
            for g in rule.api_groups.as_deref().unwrap_or_default() {
                for res in rule.resources.as_deref().unwrap_or_default() {
                    for v in &rule.verbs {
                        into.insert((g.clone(), res.clone(), v.clone()));
                    }
                }
            }
        }
    };
    let mut cluster = BTreeSet::new();
    let mut own_ns = BTreeSet::new();
    for b in r
        .cluster_role_bindings
        .iter()
        .filter(|b| is_subject(&b.subjects))
    {
        assert_eq!(b.role_ref.kind, "ClusterRole");
        expand(cluster_role(&b.role_ref.name), &mut cluster);
    }
    for b in r.role_bindings.iter().filter(|b| is_subject(&b.subjects)) {
        assert_eq!(
            b.metadata.namespace.as_deref(),
            Some(ns),
            "RoleBinding in the SA's namespace"
        );
        let rules = match b.role_ref.kind.as_str() {
            "ClusterRole" => cluster_role(&b.role_ref.name),
            "Role" => r
                .roles
                .iter()
                .find(|x| {
                    x.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                        && x.metadata.namespace.as_deref() == Some(ns)
                })
                .unwrap_or_else(|| panic!("RoleBinding refers to missing Role {}", b.role_ref.name))
                .rules
                .as_ref()
                .expect("Role rules"),
            k => panic!("roleRef kind {k}"),
        };
        expand(rules, &mut own_ns);
    }
    (cluster, own_ns)
}

#[test]
fn rbac_allows_every_api_call_and_nothing_more() {
    let r = rendered_or_skip!();
    let (cluster, own_ns) = grants(r, NAMESPACE, CONTROLLER_SA);

    let mut needed = BTreeSet::new();
    for (who, group, resource, verbs, scope) in CONTROLLER_API_CALLS {
        for verb in *verbs {
            let t = (group.to_string(), resource.to_string(), verb.to_string());
            let ok = cluster.contains(&t) || (*scope == OwnNs && own_ns.contains(&t));
            assert!(
                ok,
                "{who} calls {verb} {resource} ({group:?}, {scope:?}) but RBAC does not allow it"
            );
            needed.insert(t);
        }
    }
    // Least privilege: every grant serves some call in the table.
    let extra: Vec<_> = cluster
        .union(&own_ns)
        .filter(|t| !needed.contains(*t))
        .collect();
    assert!(
        extra.is_empty(),
        "granted but needed by no API call in the table: {extra:?}"
    );

    // The node plugin calls no API: its ServiceAccount is bound to nothing.
    let (node_cluster, node_ns) = grants(r, NAMESPACE, NODE_SA);
    assert!(
        node_cluster.is_empty() && node_ns.is_empty(),
        "the node SA has grants"
    );

    // Every subject and every pod's ServiceAccount exists.
    let sas: BTreeSet<(Option<&str>, Option<&str>)> = r
        .service_accounts
        .iter()
        .map(|s| (s.metadata.namespace.as_deref(), s.metadata.name.as_deref()))
        .collect();
    let subjects = r
        .cluster_role_bindings
        .iter()
        .flat_map(|b| b.subjects.iter().flatten())
        .chain(
            r.role_bindings
                .iter()
                .flat_map(|b| b.subjects.iter().flatten()),
        );
    for s in subjects {
        assert!(
            sas.contains(&(s.namespace.as_deref(), Some(s.name.as_str()))),
            "subject {s:?} does not exist"
        );
    }
    for pod in [pod_spec_of_controller(r), pod_spec_of_node(r)] {
        let sa = pod.service_account_name.as_deref();
        assert!(
            sas.contains(&(Some(NAMESPACE), sa)),
            "pod ServiceAccount {sa:?} does not exist"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Images.

fn split_image(image: &str) -> (&str, &str) {
    // The tag follows the last ':' after the last '/' (a registry may carry a port).
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, ""),
    }
}

fn is_pinned_version(tag: &str) -> bool {
    regex::Regex::new(r"^v?\d+\.\d+\.\d+$")
        .unwrap()
        .is_match(tag)
}

fn kustomize_images(r: &Rendered) -> BTreeMap<String, String> {
    let mut images = BTreeMap::new();
    for pod in [pod_spec_of_controller(r), pod_spec_of_node(r)] {
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let image = c
                .image
                .clone()
                .unwrap_or_else(|| panic!("{} has no image", c.name));
            images.insert(c.name.clone(), image);
        }
    }
    images
}

#[test]
fn images_are_pinned_versions() {
    let r = rendered_or_skip!();
    for (name, image) in kustomize_images(r) {
        let (repo, tag) = split_image(&image);
        assert!(!tag.is_empty(), "{name}: image {image} has no tag");
        assert_ne!(tag, "latest", "{name}: image {image}");
        assert!(
            is_pinned_version(tag),
            "{name}: tag {tag} is not a pinned version"
        );
        if name == DRIVER_CONTAINER {
            assert_eq!(repo, "ghcr.io/srvlab/rds-csi");
            assert_eq!(
                tag,
                env!("CARGO_PKG_VERSION"),
                "the image tag follows the crate version"
            );
            continue;
        }
        let (_, want_repo, major) = SIDECARS
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("unknown sidecar container {name}"));
        assert_eq!(repo, *want_repo, "{name} image repository");
        assert!(tag.starts_with(major), "{name}: {tag} is not on {major}x");
    }
}

// ---------------------------------------------------------------------------------------------
// Helm chart (no helm binary here: files, values and cheap template checks).

fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/rds-csi")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn chart_values() -> Value {
    serde_yaml::from_str(&read(&chart_dir().join("values.yaml"))).expect("values.yaml parses")
}

const CHART_TEMPLATES: &[&str] = &[
    "_helpers.tpl",
    "NOTES.txt",
    "csidriver.yaml",
    "rbac.yaml",
    "secret.yaml",
    "controller.yaml",
    "node.yaml",
    "storageclass.yaml",
    "snapshotclass.yaml",
    "service.yaml",
    "servicemonitor.yaml",
];

#[test]
fn helm_chart_files_exist_and_parse() {
    let dir = chart_dir();
    let chart: Value =
        serde_yaml::from_str(&read(&dir.join("Chart.yaml"))).expect("Chart.yaml parses");
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("rds-csi"));
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "appVersion"
    );
    for t in CHART_TEMPLATES {
        assert!(
            dir.join("templates").join(t).is_file(),
            "templates/{t} is missing"
        );
    }
    let values = chart_values();
    let schema: serde_json::Value = serde_json::from_str(&read(&dir.join("values.schema.json")))
        .expect("values.schema.json parses");
    // Where the schema forbids unknown keys (helm then refuses the chart's own defaults), it
    // must know every default key, at every depth.
    let values_json = serde_json::to_value(&values).expect("values as JSON");
    let mut unknown = Vec::new();
    undescribed_keys(&schema, &schema, &values_json, "", &mut unknown);
    assert!(
        unknown.is_empty(),
        "values.schema.json does not allow these default values: {unknown:?}"
    );
    assert_eq!(
        values["driverName"].as_str(),
        Some(rds_csi::cli::DEFAULT_DRIVER_NAME),
        "chart driverName"
    );
}

/// The keys of `values` (at `path`) that `schema` does not allow: under a schema with
/// `additionalProperties: false`, those missing from its `properties`, recursively (`$ref`s to
/// `#/definitions/...` followed in `root`).
fn undescribed_keys(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    values: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let schema = match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/definitions/");
            &root["definitions"][name]
        }
        None => schema,
    };
    let Some(map) = values.as_object() else {
        return;
    };
    let closed = schema["additionalProperties"] == serde_json::Value::Bool(false);
    for (key, value) in map {
        let here = format!("{path}.{key}");
        match schema["properties"].get(key) {
            Some(sub) => undescribed_keys(root, sub, value, &here, out),
            None if closed => out.push(here),
            None => {}
        }
    }
}

/// The `--rds-host-key` file of the chart's controller holds the Secret item that `rds.hostKey`
/// fills, and the binary reads a fingerprint or a key line from it.
#[test]
fn helm_host_key_value_reaches_the_file_the_flag_reads_in_every_form() {
    let templates = chart_dir().join("templates");
    let secret = read(&templates.join("secret.yaml"));
    let secret_key = secret
        .lines()
        .find(|l| l.contains(".Values.rds.hostKey"))
        .and_then(|l| l.trim().split(':').next())
        .expect("secret.yaml stores rds.hostKey")
        .to_string();
    let controller = read(&templates.join("controller.yaml"));
    let flag_file = controller
        .lines()
        .find_map(|l| l.trim().strip_prefix("- --rds-host-key="))
        .expect("the controller passes --rds-host-key");
    let source = HostKeySource::parse(flag_file).unwrap();
    assert_eq!(source, HostKeySource::File(PathBuf::from(flag_file)));
    let item = regex::Regex::new(r"- key: (\S+)\s*\n\s*path: (\S+)").unwrap();
    let mounted: BTreeMap<String, String> = item
        .captures_iter(&controller)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    assert_eq!(
        mounted.get(&secret_key).map(String::as_str),
        Path::new(flag_file).file_name().and_then(|f| f.to_str()),
        "Secret item {secret_key} is not mounted as the --rds-host-key file"
    );
    assert!(
        chart_values()["rds"]["hostKey"].is_string(),
        "rds.hostKey has a default"
    );

    let host =
        russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap();
    let fingerprint = host
        .public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(&secret_key);
    let pinned_by = |value: &str| {
        std::fs::write(&file, format!("{value}\n")).unwrap();
        HostKeySource::File(file.clone()).policy().unwrap()
    };
    let HostKeyPolicy::PinnedFingerprint(f) = pinned_by(&fingerprint) else {
        panic!("hostKey {fingerprint} does not pin the fingerprint")
    };
    assert_eq!(f.to_string(), fingerprint);
    let HostKeyPolicy::Pinned(keys) = pinned_by(&host.public_key().to_openssh().unwrap()) else {
        panic!("a key line in hostKey does not pin the key")
    };
    assert_eq!(keys, [host.public_key().clone()]);
}

/// Every `{repository, tag}` pair in the values, as `repository:tag`.
fn images_in_values(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Mapping(m) => {
            if let (Some(repo), Some(tag)) = (m.get("repository"), m.get("tag")) {
                out.insert(format!(
                    "{}:{}",
                    repo.as_str().unwrap(),
                    tag.as_str().unwrap()
                ));
            }
            m.values().for_each(|x| images_in_values(x, out));
        }
        Value::Sequence(s) => s.iter().for_each(|x| images_in_values(x, out)),
        _ => {}
    }
}

#[test]
fn helm_default_images_match_kustomize() {
    let mut chart = BTreeSet::new();
    images_in_values(&chart_values(), &mut chart);
    for image in &chart {
        let (_, tag) = split_image(image);
        assert!(is_pinned_version(tag), "chart image {image} is not pinned");
    }
    let r = rendered_or_skip!();
    let kustomize: BTreeSet<String> = kustomize_images(r).into_values().collect();
    assert_eq!(
        chart, kustomize,
        "chart defaults and deploy/kubernetes use different images"
    );
}

#[test]
fn helm_templates_are_balanced_and_use_defined_values() {
    let values = chart_values();
    let value_ref = regex::Regex::new(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)").unwrap();
    let action = regex::Regex::new(r"\{\{-?\s*(if|range|with|define|block|end)\b").unwrap();
    for t in CHART_TEMPLATES {
        let text = read(&chart_dir().join("templates").join(t));
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{t}: unbalanced braces"
        );
        // Every block opened by if/range/with/define/block is closed by one `end`.
        let mut depth = 0i32;
        for c in action.captures_iter(&text) {
            depth += if &c[1] == "end" { -1 } else { 1 };
            assert!(depth >= 0, "{t}: `end` without a block");
        }
        assert_eq!(depth, 0, "{t}: unclosed block");
        // A typo in a value path renders as empty, silently: each path must exist.
        for c in value_ref.captures_iter(&text) {
            let mut v = &values;
            for key in c[1].trim_start_matches('.').split('.') {
                v = v
                    .get(key)
                    .unwrap_or_else(|| panic!("{t}: .Values{} is not in values.yaml", &c[1]));
            }
        }
    }
}
