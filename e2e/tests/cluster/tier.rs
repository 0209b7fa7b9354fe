//! The cluster the scenarios share: the control plane, mock-rds as the RDS, the deploy
//! manifests applied by the real kubectl, and the controller pod's containers (rds-csi and the
//! stock sidecars) run from the rendered manifests with the manifests' own ServiceAccount.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use e2e::k8s::kubelet::{KubeletNode, KUBELET_LABEL};
use e2e::k8s::{Kubectl, Procs, STARTUP_TIMEOUT};
use e2e::{poll_until, Keys, Mock};
use serde::Deserialize;
use serde_json::Value;

use crate::control_plane::{heartbeat, ControlPlane};
use crate::pods::{Credentials, Pod, Runner};

pub const DRIVER: &str = "rds.csi.srvlab.io";
pub const NAMESPACE: &str = "rds-csi";
/// Where the scenarios make their PVCs and pods.
pub const APPS: &str = "e2e";
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// The nodes with a real kubelet and containerd, and the node plugin.
pub const KUBELET_NODES: [&str; 2] = ["node-k1", "node-k2"];
/// The node plugins' volume limit there (`--max-volumes-per-node`), which kubelet reports.
pub const KUBELET_NODE_MAX_VOLUMES: u32 = 3;
/// The controller pod's node, added before the others so the scheduler has no other choice; no
/// scenario deletes it. Deleting a node deletes its pods (the pod garbage collector), and the
/// containers run here keep their pod's name: the provisioner exits when its pod is gone.
const CONTROL_NODE: &str = "node-control";
/// The segment `rds-csi serve --node` reports in NodeGetInfo, which the kubelet would put on
/// the Node as a label and node-driver-registrar into CSINode.
const TOPOLOGY: (&str, &str) = ("topology.rds.csi.srvlab.io/zone", "default");
const CONTROLLER_SA: &str = "rds-csi-controller";

/// The sidecars of the manifests: container name, binary, and the module whose version the
/// manifest's image tag must be (the one built and tested here).
const SIDECARS: [(&str, &str, &str); 4] = [
    (
        "csi-provisioner",
        "csi-provisioner",
        "github.com/kubernetes-csi/external-provisioner/v6",
    ),
    (
        "csi-attacher",
        "csi-attacher",
        "github.com/kubernetes-csi/external-attacher/v4",
    ),
    (
        "csi-resizer",
        "csi-resizer",
        "github.com/kubernetes-csi/external-resizer/v2",
    ),
    (
        "csi-snapshotter",
        "csi-snapshotter",
        "github.com/kubernetes-csi/external-snapshotter/v8",
    ),
];

/// Which of the project's manifests the tier deploys.
#[derive(Clone, Copy, Debug)]
pub enum Manifests {
    /// `deploy/kubernetes`, rendered by `kubectl kustomize`.
    Kustomize,
    /// `deploy/helm/rds-csi`, rendered by the real helm with an operator's values.
    Helm,
}

impl Manifests {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kustomize => "kustomize",
            Self::Helm => "helm",
        }
    }
}

/// `helm template` of the chart with the values an operator sets for this RDS.
async fn helm_template(
    bin: &Path,
    admin: &Kubectl,
    mock: &Mock,
    keys: &Keys,
) -> anyhow::Result<String> {
    let chart = repo().join("deploy/helm/rds-csi");
    // Rendered for the API server it goes to (the chart states the versions it supports).
    let version = admin.json(&["version"]).await?["serverVersion"]["gitVersion"]
        .as_str()
        .context("the API server's version")?
        .to_string();
    let mut cmd = tokio::process::Command::new(bin.join("helm"));
    cmd.args(["template", "rds-csi"])
        .arg(&chart)
        .args(["--kube-version", &version])
        .args(["--namespace", NAMESPACE])
        .args(["--set", &format!("rds.address={}", mock.addr.ip())])
        .args(["--set", &format!("rds.port={}", mock.addr.port())])
        .args(["--set", "rds.user=admin", "--set", "nvme.address=127.0.0.1"])
        .args(["--set", "rds.createSecret=true"])
        .args([
            "--set-file",
            &format!("rds.privateKey={}", keys.client_key.display()),
        ])
        .args([
            "--set-file",
            &format!("rds.hostKey={}", keys.host_key_pub.display()),
        ])
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("helm template took over a minute")??;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub struct Tier {
    pub cp: ControlPlane,
    /// Every process of the tier; the kubelet's part (restarting exited containers) is a task.
    pub procs: Arc<Mutex<Procs>>,
    supervisor: tokio::task::JoinHandle<()>,
    pub keys: Keys,
    pub mock: Mock,
    /// A kubeconfig with a token of the controller's ServiceAccount.
    pub controller_kubeconfig: PathBuf,
    /// The controller pod standing in for the Deployment's replica.
    pub controller_pod: String,
    /// Containers of the manifests not run here, with their images.
    pub skipped: Vec<(String, String)>,
    bin: PathBuf,
    dir: PathBuf,
    /// The Deployment's pod template, to run another replica from.
    controller_pod_spec: Value,
    /// The DaemonSet's pod template, run on the kubelet nodes.
    node_pod_spec: Value,
    /// The nodes with a real kubelet, started by the first scenario that needs them.
    kubelets: Vec<KubeletNode>,
    /// mock-rds's disks when they started.
    pub disks_before_kubelets: std::collections::BTreeSet<String>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Every document of a multi-document YAML stream, as JSON values.
pub fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("the rendered manifests have no {kind} {name}"))
}

impl Tier {
    pub async fn start(bin: &Path, dir: &Path, manifests: Manifests) -> anyhow::Result<Self> {
        let mut procs = Procs::default();
        eprintln!("cluster: control plane");
        let cp = ControlPlane::start(bin, dir, &mut procs).await?;
        let keys = Keys::generate()?;
        let mock = Mock::start(&keys).await?;
        let admin = cp.admin.clone();

        eprintln!("cluster: the snapshot CRDs and snapshot-controller (cluster add-ons)");
        cp.api.install_snapshot_crds(bin).await?;
        let mut snapshot_controller = Command::new(bin.join("snapshot-controller"));
        snapshot_controller.args([
            &format!("--kubeconfig={}", cp.admin.kubeconfig.display()),
            "--leader-election=false",
            "--v=2",
        ]);
        procs.spawn(
            "snapshot-controller",
            snapshot_controller,
            &dir.join("logs"),
        )?;

        let rendered_text = match manifests {
            Manifests::Kustomize => {
                eprintln!("cluster: kubectl apply -k deploy/kubernetes");
                admin
                    .run(&[
                        "kustomize",
                        &repo().join("deploy/kubernetes").display().to_string(),
                    ])
                    .await?
            }
            Manifests::Helm => {
                eprintln!("cluster: helm template deploy/helm/rds-csi | kubectl apply");
                admin.run(&["create", "namespace", NAMESPACE]).await?;
                helm_template(bin, &admin, &mock, &keys).await?
            }
        };
        let rendered = documents(&rendered_text)?;
        admin.apply(&rendered_text).await?;
        // The node plugin runs on the kubelet nodes as host processes (below), not through
        // their kubelet: it would pull the image and make the DaemonSet's host paths on this
        // host. The other nodes keep the DaemonSet's pods, never run.
        let keep_off_kubelet_nodes = serde_json::json!({"spec": {"template": {"spec": {"affinity":
            {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms":
                [{"matchExpressions": [{"key": KUBELET_LABEL, "operator": "DoesNotExist"}]}]}}}}}}});
        admin
            .run(&[
                "patch",
                "daemonset",
                "rds-csi-node",
                "-n",
                NAMESPACE,
                "--type=merge",
                "-p",
                &keep_off_kubelet_nodes.to_string(),
            ])
            .await?;
        check_sidecar_versions(&rendered)?;
        check_two_replicas(&rendered)?;
        if let Manifests::Kustomize = manifests {
            // The site's own settings, as an operator makes them: the RDS (mock-rds), its key.
            let patch = serde_json::json!({"data": {
                "rds-address": mock.addr.ip().to_string(),
                "rds-port": mock.addr.port().to_string(),
                "rds-user": "admin",
                "nvme-address": "127.0.0.1",
            }});
            admin
                .run(&[
                    "patch",
                    "configmap",
                    "rds-csi-config",
                    "-n",
                    NAMESPACE,
                    "--type=merge",
                    "-p",
                    &patch.to_string(),
                ])
                .await?;
            admin
                .run(&[
                    "create",
                    "secret",
                    "generic",
                    "rds-csi-ssh",
                    "-n",
                    NAMESPACE,
                    &format!("--from-file=id_rsa={}", keys.client_key.display()),
                    &format!("--from-file=host_key.pub={}", keys.host_key_pub.display()),
                ])
                .await?;
        }
        admin.run(&["create", "namespace", APPS]).await?;
        cp.add_node(CONTROL_NODE, DRIVER, TOPOLOGY, 16).await?;

        // The Deployment's replica (scheduled, never run: there is no kubelet) names the pod the
        // provisioner's capacity objects are owned through.
        let controller_pod = poll_until(
            "the controller Deployment's pod, scheduled",
            STARTUP_TIMEOUT,
            || async {
                scheduled_controller_pods(&admin)
                    .await
                    .ok()?
                    .into_iter()
                    .next()
            },
        )
        .await?;
        for node in NODES {
            cp.add_node(node, DRIVER, TOPOLOGY, 16).await?;
        }
        let deployment = find(&rendered, "Deployment", "rds-csi-controller")?;
        let service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or_default();
        if service_account != CONTROLLER_SA {
            bail!("the controller runs as {service_account:?}, expected {CONTROLLER_SA}");
        }
        let kubeconfig = cp
            .api
            .service_account_kubeconfig(NAMESPACE, service_account)
            .await?;
        let controller_pod_spec = deployment["spec"]["template"]["spec"].clone();
        let node_pod_spec =
            find(&rendered, "DaemonSet", "rds-csi-node")?["spec"]["template"]["spec"].clone();
        let skipped = run_controller_pod(
            &admin,
            bin,
            dir,
            &controller_pod,
            &kubeconfig,
            &controller_pod_spec,
            &mut procs,
        )
        .await?;
        // The kubelets' part: restart exited containers, post the nodes' status.
        let procs = Arc::new(Mutex::new(procs));
        let watched = Arc::clone(&procs);
        let kubelets = cp.admin.clone();
        let supervisor = tokio::spawn(async move {
            for tick in 1u64.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Never waits: the scenarios hold the lock only briefly, and never across an await.
                if let Ok(mut procs) = watched.try_lock() {
                    for restarted in procs.restart_exited() {
                        eprintln!("cluster: restarted {restarted}");
                    }
                }
                if tick % 5 == 0 {
                    for node in std::iter::once(CONTROL_NODE).chain(NODES) {
                        // A deleted node (or an API server restarting) has no status to post.
                        let _ = heartbeat(&kubelets, node).await;
                    }
                }
            }
        });
        Ok(Self {
            cp,
            procs,
            supervisor,
            keys,
            mock,
            controller_kubeconfig: kubeconfig,
            controller_pod,
            skipped,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            controller_pod_spec,
            node_pod_spec,
            kubelets: Vec::new(),
            disks_before_kubelets: Default::default(),
        })
    }

    /// The nodes with a real kubelet (on containerd) and the DaemonSet's node plugin, started
    /// on first use; the node plugin registered (its CSINode entry made by kubelet).
    pub async fn kubelet_nodes(&mut self) -> anyhow::Result<&[KubeletNode]> {
        if self.kubelets.is_empty() {
            self.disks_before_kubelets = self.mock.disks()?.into_iter().map(|d| d.slot).collect();
            for (index, name) in KUBELET_NODES.iter().enumerate() {
                eprintln!("cluster: kubelet node {name}");
                let mut procs = Procs::default();
                let node = KubeletNode::start(
                    &self.bin,
                    &self.cp.api,
                    &self.dir.join("kubelets"),
                    &self.mock.data_dir,
                    name,
                    u8::try_from(index + 1)?,
                    &mut procs,
                )
                .await;
                self.procs().running.append(&mut procs.running);
                self.kubelets.push(node?);
                self.run_node_plugin(name).await?;
            }
        }
        Ok(&self.kubelets)
    }

    pub fn kubelet_node(&self, name: &str) -> anyhow::Result<&KubeletNode> {
        self.kubelets
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no kubelet node {name}"))
    }

    /// The node plugin's process on a kubelet node.
    pub fn node_plugin_proc(node: &str) -> String {
        format!("rds-csi-node-{node}-rds-csi")
    }

    /// Runs the DaemonSet's pod on kubelet node `name` as its kubelet would: rds-csi from the
    /// manifest, with the loop connector over mock-rds's files (this host has no NVMe/TCP; the
    /// VM tier proves that path), kubelet's root directory where this node's kubelet has it,
    /// and, as node-driver-registrar is not served by the Go module proxy, the driver's own
    /// registration with kubelet at the path the manifest gives the registrar.
    async fn run_node_plugin(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self.kubelet_node(name)?;
        let pod_name = format!("rds-csi-node-{name}");
        let dir = self.dir.join("kubelets").join(name).join("pod");
        let mut pod = Pod {
            admin: &self.cp.admin,
            namespace: NAMESPACE,
            name: &pod_name,
            node: name,
            dir: dir.clone(),
            kubeconfig: PathBuf::new(),
            host_paths: vec![
                ("/var/lib/kubelet".into(), node.root_dir.clone()),
                ("/etc/nvme".into(), dir.join("host/etc/nvme")),
            ],
            overrides: Vec::new(),
        };
        let registrar = self.node_pod_spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "node-driver-registrar")
            .context("the DaemonSet has no node-driver-registrar")?;
        let registration_path = registrar["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--kubelet-registration-path="))
            .context("node-driver-registrar without --kubelet-registration-path")?;
        pod.overrides = [
            ("--connector", "loop".to_string()),
            ("--loop-root", self.mock.data_dir.display().to_string()),
            ("--kubelet-dir", node.root_dir.display().to_string()),
            (
                "--kubelet-registration-path",
                pod.host_path(registration_path).display().to_string(),
            ),
            (
                "--max-volumes-per-node",
                KUBELET_NODE_MAX_VOLUMES.to_string(),
            ),
        ]
        .into_iter()
        .map(|(f, v)| (f.to_string(), v))
        .collect();
        let rds_csi = e2e::binary("rds-csi");
        let runner = |container: &str| -> Runner {
            (container == "rds-csi").then(|| (rds_csi.clone(), Credentials::None))
        };
        let mut procs = Procs::default();
        let started = pod.start(&self.node_pod_spec, runner, &mut procs).await;
        self.procs().running.append(&mut procs.running);
        let started = started?;
        for (container, args) in &started.args {
            eprintln!("cluster:   {pod_name}: {container} {}", args.join(" "));
        }
        let admin = self.admin().clone();
        poll_until(
            &format!("kubelet registering the driver on {name} (CSINode)"),
            STARTUP_TIMEOUT,
            || async {
                let csinode = admin.get(&["csinode", name]).await.ok()??;
                csinode["spec"]["drivers"]
                    .as_array()?
                    .iter()
                    .any(|d| d["name"] == DRIVER)
                    .then_some(())
            },
        )
        .await
    }

    /// Adds a node as the tier's others are (the driver registered in its CSINode).
    pub async fn add_node(&self, name: &str) -> anyhow::Result<()> {
        self.cp.add_node(name, DRIVER, TOPOLOGY, 16).await
    }

    /// Runs the Deployment's other replica as well (scheduled all along, not run until now);
    /// returns its name once its driver serves.
    pub async fn run_second_replica(&mut self) -> anyhow::Result<String> {
        let admin = self.admin().clone();
        let second = scheduled_controller_pods(&admin)
            .await?
            .into_iter()
            .find(|name| *name != self.controller_pod)
            .context("the Deployment has no second scheduled replica")?;
        let mut procs = Procs::default();
        run_controller_pod(
            &admin,
            &self.bin,
            &self.dir,
            &second,
            &self.controller_kubeconfig,
            &self.controller_pod_spec,
            &mut procs,
        )
        .await?;
        self.procs().running.append(&mut procs.running);
        Ok(second)
    }

    /// The processes, for a moment (never held across an await).
    pub fn procs(&self) -> MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admin(&self) -> &Kubectl {
        &self.cp.admin
    }

    /// Fails naming any process of the tier that exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let dead = self.procs().dead();
        if !dead.is_empty() {
            bail!("exited: {}", dead.join(", "));
        }
        Ok(())
    }

    /// What the API server holds, for a failure: objects and recent events.
    pub async fn diagnostics(&self) -> String {
        let mut out = String::new();
        for args in [
            &["get", "nodes,csinodes,pods,pvc,pv,volumeattachments,volumesnapshots,volumesnapshotcontents,csistoragecapacities", "-A", "-o", "wide"][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        ] {
            match self.admin().run(args).await {
                Ok(text) => out.push_str(&text),
                Err(e) => out.push_str(&format!("{e:#}\n")),
            }
        }
        out
    }

    /// The last lines of every log, for a failure.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs().running {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("---- {} ({})\n", p.name, p.log.display()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.supervisor.abort();
        let procs = Arc::clone(&self.procs);
        let mut procs = procs.lock().unwrap_or_else(|p| p.into_inner());
        for node in self.kubelets.drain(..) {
            node.teardown(&mut procs);
        }
    }
}

/// The names of the controller Deployment's pods that the scheduler has placed.
async fn scheduled_controller_pods(admin: &Kubectl) -> anyhow::Result<Vec<String>> {
    let pods = admin
        .items(&[
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=controller",
        ])
        .await?;
    Ok(pods
        .iter()
        .filter(|p| p["spec"]["nodeName"].is_string())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

/// Runs the controller pod `name`'s containers on the host as its kubelet would (rds-csi and
/// the four sidecars; the others are returned with their images), and waits for the driver's
/// socket.
async fn run_controller_pod(
    admin: &Kubectl,
    bin: &Path,
    dir: &Path,
    name: &str,
    kubeconfig: &Path,
    spec: &Value,
    procs: &mut Procs,
) -> anyhow::Result<Vec<(String, String)>> {
    let node = admin.json(&["get", "pod", name, "-n", NAMESPACE]).await?["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pod = Pod {
        admin,
        namespace: NAMESPACE,
        name,
        node: &node,
        dir: dir.join(format!("pod-{name}")),
        kubeconfig: kubeconfig.to_path_buf(),
        host_paths: Vec::new(),
        overrides: Vec::new(),
    };
    let rds_csi = e2e::binary("rds-csi");
    let runner = |container: &str| -> Runner {
        if container == "rds-csi" {
            return Some((rds_csi.clone(), Credentials::Env("RDS_CSI_KUBECONFIG")));
        }
        SIDECARS
            .iter()
            .find(|(name, ..)| *name == container)
            .map(|(_, binary, _)| (bin.join(binary), Credentials::KubeconfigFlag))
    };
    eprintln!("cluster: the controller pod {name}'s containers on the host");
    let started = pod.start(spec, runner, procs).await?;
    for (container, args) in &started.args {
        eprintln!("cluster:   {container} {}", args.join(" "));
    }
    let socket = started
        .volumes
        .get("socket-dir")
        .context("no socket-dir volume")?
        .join("csi.sock");
    poll_until("the driver's CSI socket", STARTUP_TIMEOUT, || async {
        socket.exists().then_some(())
    })
    .await?;
    Ok(started.skipped)
}

/// Both manifest sets run two controller replicas, kept at one through a drain.
fn check_two_replicas(rendered: &[Value]) -> anyhow::Result<()> {
    let deployment = find(rendered, "Deployment", "rds-csi-controller")?;
    let replicas = &deployment["spec"]["replicas"];
    if replicas != 2 {
        bail!("the controller Deployment runs {replicas} replicas, not 2");
    }
    let budget = find(rendered, "PodDisruptionBudget", "rds-csi-controller")?;
    if budget["spec"]["minAvailable"] != 1 {
        bail!("the controller's PodDisruptionBudget: {}", budget["spec"]);
    }
    Ok(())
}

/// The manifests name the sidecar versions built and tested here.
fn check_sidecar_versions(rendered: &[Value]) -> anyhow::Result<()> {
    let deployment = find(rendered, "Deployment", "rds-csi-controller")?;
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("containers")?;
    for (name, _, module) in SIDECARS {
        let image = containers
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["image"].as_str())
            .with_context(|| format!("the controller has no {name} container"))?;
        let pinned = e2e::k8s::pinned_version(module)?;
        let tag = image.rsplit(':').next().unwrap_or_default();
        if tag != pinned {
            bail!("deploy/kubernetes runs {image}, but the version built and tested is {pinned} ({module})");
        }
    }
    Ok(())
}

/// Long enough for a provision, attach or copy through the sidecars' resync and backoff.
pub const STEP: Duration = Duration::from_secs(120);
