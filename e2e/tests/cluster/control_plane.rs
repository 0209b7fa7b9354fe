//! The cluster tier's control plane: the API server (`e2e::k8s::ApiServer`), then
//! kube-controller-manager and kube-scheduler as host processes on 127.0.0.1; and the Node
//! objects (with their CSINode) that stand for the cluster's nodes without a kubelet.

use std::path::Path;
use std::process::Command;

use e2e::k8s::{free_port, ApiServer, Kubectl, Procs, STARTUP_TIMEOUT};
use e2e::poll_until;

pub struct ControlPlane {
    pub api: ApiServer,
    pub admin: Kubectl,
}

impl ControlPlane {
    pub async fn start(bin: &Path, dir: &Path, procs: &mut Procs) -> anyhow::Result<Self> {
        let api = ApiServer::start(bin, dir, procs).await?;
        let admin = api.admin.clone();
        let admin_kubeconfig = admin.kubeconfig.clone();
        let path = |f: &str| dir.join(f).display().to_string();
        let logs = dir.join("logs");
        let kc = admin_kubeconfig.display().to_string();
        // What the controller-manager and the scheduler share: admin credentials, loopback, one
        // instance each.
        let component = |name: &str| -> anyhow::Result<Command> {
            let mut cmd = Command::new(bin.join(name));
            cmd.args([
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                "--leader-elect=false".into(),
            ]);
            Ok(cmd)
        };
        let mut kcm = component("kube-controller-manager")?;
        kcm.args([
            &format!("--root-ca-file={}", path("ca.crt")),
            &format!("--service-account-private-key-file={}", path("sa.key")),
            "--use-service-account-credentials",
            &format!("--cluster-signing-cert-file={}", path("ca.crt")),
            &format!("--cluster-signing-key-file={}", path("ca.key")),
            // No kubelet posts node status here: the node lifecycle controller would evict all.
            "--controllers=*,-node-lifecycle-controller",
        ]);
        procs.spawn("kube-controller-manager", kcm, &logs)?;
        procs.spawn("kube-scheduler", component("kube-scheduler")?, &logs)?;
        // The controllers are up once a namespace gets its ServiceAccount.
        poll_until(
            "the default ServiceAccount (kube-controller-manager running)",
            STARTUP_TIMEOUT,
            || async {
                admin
                    .get(&["serviceaccount", "default", "-n", "default"])
                    .await
                    .ok()
                    .flatten()
            },
        )
        .await?;
        Ok(Self { api, admin })
    }

    /// A Node object standing for a node (no kubelet): Ready, schedulable, attach and detach
    /// managed by the controller, and the CSINode entry node-driver-registrar would make for
    /// the driver.
    pub async fn add_node(
        &self,
        name: &str,
        driver: &str,
        topology: (&str, &str),
        max_volumes: u32,
    ) -> anyhow::Result<()> {
        let (key, value) = topology;
        self.admin
            .apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
                 kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n    {key}: {value}\n  \
                 annotations:\n    volumes.kubernetes.io/controller-managed-attach-detach: \"true\"\n"
            ))
            .await?;
        // A Node's status is not taken on create.
        heartbeat(&self.admin, name).await?;
        self.admin.lift_not_ready_taint(name).await;
        self.admin
            .apply(&format!(
                "apiVersion: storage.k8s.io/v1\nkind: CSINode\nmetadata:\n  name: {name}\nspec:\n  \
                 drivers:\n  - name: {driver}\n    nodeID: {name}\n    topologyKeys: [\"{key}\"]\n    \
                 allocatable: {{count: {max_volumes}}}\n"
            ))
            .await?;
        Ok(())
    }
}

/// Posts the node's status as its kubelet does every few seconds: Ready, with a fresh
/// heartbeat. The attach-detach controller relies on these updates: on each it learns that
/// no volume is in use on the node (`volumesInUse` is empty), and only then detaches at once.
pub async fn heartbeat(admin: &Kubectl, name: &str) -> anyhow::Result<()> {
    let now = rfc3339(std::time::SystemTime::now());
    let status = serde_json::json!({"status": {
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "E2E",
            "message": "stands for a node", "lastHeartbeatTime": now,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    admin
        .run(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .await?;
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a time (UTC), as the API's timestamps are written.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}
