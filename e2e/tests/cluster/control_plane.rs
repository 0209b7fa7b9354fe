//! etcd, kube-apiserver (TLS, `Node,RBAC`, service-account tokens), kube-controller-manager and
//! kube-scheduler as host processes on 127.0.0.1, on OS-chosen ports; and the Node objects
//! (with their CSINode) that stand for the cluster's nodes, as no kubelet runs here.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use e2e::poll_until;

use crate::kubectl::Kubectl;
use crate::procs::Procs;

pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ControlPlane {
    pub dir: PathBuf,
    /// How kube-apiserver was started, to start it again.
    api_server: (PathBuf, Vec<String>),
    pub api_port: u16,
    pub admin: Kubectl,
}

/// A port the OS chose, released for the component to bind (a short race, acceptable here).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (Debian package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A CA, the API server's serving certificate, an admin client certificate and the
/// service-account signing key pair.
fn certificates(dir: &Path) -> anyhow::Result<()> {
    let subj_ca = "/CN=rds-csi-e2e-ca";
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", subj_ca,
        ],
    )?;
    for (name, subject, ext) in [
        (
            "apiserver",
            "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "admin",
            "/O=system:masters/CN=e2e-admin",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        let (key, csr, crt, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&extfile), ext)?;
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        )?;
    }
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// A kubeconfig for the API server with `user` (a YAML mapping body).
pub fn kubeconfig(dir: &Path, api_port: u16, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: e2e, cluster: {{server: \"https://127.0.0.1:{api_port}\", certificate-authority: {ca}}}}}]\n\
         users: [{{name: u, user: {user}}}]\n\
         contexts: [{{name: e2e, context: {{cluster: e2e, user: u}}}}]\n\
         current-context: e2e\n",
        ca = dir.join("ca.crt").display()
    )
}

impl ControlPlane {
    pub async fn start(bin: &Path, dir: &Path, procs: &mut Procs) -> anyhow::Result<Self> {
        certificates(dir)?;
        let (etcd_client, etcd_peer, api_port) = (free_port()?, free_port()?, free_port()?);
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(
                dir,
                api_port,
                &format!(
                    "{{client-certificate: {}, client-key: {}}}",
                    dir.join("admin.crt").display(),
                    dir.join("admin.key").display()
                ),
            ),
        )?;
        let path = |f: &str| dir.join(f).display().to_string();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;

        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args([
            "--name=e2e",
            &format!("--data-dir={}", path("etcd")),
            "--unsafe-no-fsync",
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}"),
            "--listen-metrics-urls=",
        ]);
        procs.spawn("etcd", etcd, &logs)?;

        let api_args: Vec<String> = [
            &format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={api_port}"),
            &format!("--tls-cert-file={}", path("apiserver.crt")),
            &format!("--tls-private-key-file={}", path("apiserver.key")),
            &format!("--client-ca-file={}", path("ca.crt")),
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            &format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
            &format!("--service-account-key-file={}", path("sa.pub")),
            &format!("--service-account-signing-key-file={}", path("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--profiling=false",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args(&api_args);
        procs.spawn("kube-apiserver", api, &logs)?;
        let admin = Kubectl {
            bin: bin.join("kubectl"),
            kubeconfig: admin_kubeconfig.clone(),
        };
        poll_until("kube-apiserver /readyz", STARTUP_TIMEOUT, || async {
            admin.run(&["get", "--raw", "/readyz"]).await.ok()
        })
        .await?;

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
        Ok(Self {
            api_server: (bin.join("kube-apiserver"), api_args),
            dir: dir.to_path_buf(),
            api_port,
            admin,
        })
    }

    /// Stops kube-apiserver and starts it again with the same flags, etcd keeping the state.
    pub async fn restart_api_server(&self, procs: &Mutex<Procs>) -> anyhow::Result<()> {
        {
            let mut procs = procs.lock().unwrap_or_else(|p| p.into_inner());
            procs.stop(&["kube-apiserver"], Duration::from_secs(15));
            let (bin, args) = &self.api_server;
            let mut api = Command::new(bin);
            api.args(args);
            procs.spawn("kube-apiserver", api, &self.dir.join("logs"))?;
        }
        poll_until(
            "kube-apiserver /readyz after its restart",
            STARTUP_TIMEOUT,
            || async { self.admin.run(&["get", "--raw", "/readyz"]).await.ok() },
        )
        .await?;
        Ok(())
    }

    /// A kubeconfig file holding a token of `namespace/service_account`.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self
            .admin
            .run(&[
                "create",
                "token",
                service_account,
                "-n",
                namespace,
                "--duration=4h",
            ])
            .await?;
        let file = self
            .dir
            .join(format!("{namespace}-{service_account}.kubeconfig"));
        std::fs::write(
            &file,
            kubeconfig(
                &self.dir,
                self.api_port,
                &format!("{{token: \"{}\"}}", token.trim()),
            ),
        )?;
        Ok(file)
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
        // TaintNodesByCondition taints a new Node not-ready, and with the node lifecycle
        // controller off nothing lifts it.
        let _ = self
            .admin
            .run(&[
                "taint",
                "node",
                name,
                "node.kubernetes.io/not-ready:NoSchedule-",
            ])
            .await;
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
