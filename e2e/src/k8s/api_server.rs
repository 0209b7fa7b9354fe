//! etcd and kube-apiserver (TLS, `Node,RBAC` authorization, service-account tokens) as host
//! processes on 127.0.0.1, on OS-chosen ports: the API server of the cluster tier, and one of
//! its own for a driver test (`StandaloneApiServer`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};

use super::kubectl::Kubectl;
use super::procs::Procs;
use crate::poll_until;

pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ApiServer {
    pub dir: PathBuf,
    /// How kube-apiserver was started, to start it again.
    command: (PathBuf, Vec<String>),
    pub port: u16,
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
    signed_certificate(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )?;
    signed_certificate(
        dir,
        "admin",
        "/O=system:masters/CN=e2e-admin",
        "extendedKeyUsage=clientAuth\n",
    )?;
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// `<name>.crt` and `<name>.key` in `dir`, for `subject`, signed by the CA there.
fn signed_certificate(dir: &Path, name: &str, subject: &str, ext: &str) -> anyhow::Result<()> {
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
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
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
    )
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

impl ApiServer {
    /// Starts etcd and kube-apiserver under `procs`, their files and logs in `dir`; returns once
    /// the API server is ready.
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

        Ok(Self {
            command: (bin.join("kube-apiserver"), api_args),
            dir: dir.to_path_buf(),
            port: api_port,
            admin,
        })
    }

    /// A client certificate for `subject` (`/O=group/CN=user`) from the cluster's CA: its
    /// certificate and key files.
    pub fn client_certificate(
        &self,
        name: &str,
        subject: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        signed_certificate(&self.dir, name, subject, "extendedKeyUsage=clientAuth\n")?;
        Ok((
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        ))
    }

    /// Stops kube-apiserver and starts it again with the same flags, etcd keeping the state.
    pub async fn restart(&self, procs: &Mutex<Procs>) -> anyhow::Result<()> {
        {
            let mut procs = procs.lock().unwrap_or_else(|p| p.into_inner());
            procs.stop(&["kube-apiserver"], Duration::from_secs(15));
            let (bin, args) = &self.command;
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

    /// The VolumeSnapshot CRDs of the pinned external-snapshotter (built beside the binaries in
    /// `bin`), established.
    pub async fn install_snapshot_crds(&self, bin: &Path) -> anyhow::Result<()> {
        let crds = bin
            .parent()
            .context("the bin directory's parent")?
            .join("crd");
        self.admin
            .run(&["apply", "-f", &crds.display().to_string()])
            .await?;
        self.admin
            .run(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd",
                "--all",
            ])
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
        // The namespace in-cluster config gives a pod: its own.
        let config = kubeconfig(
            &self.dir,
            self.port,
            &format!("{{token: \"{}\"}}", token.trim()),
        )
        .replace(
            "context: {cluster: e2e, user: u}",
            &format!("context: {{cluster: e2e, user: u, namespace: {namespace}}}"),
        );
        std::fs::write(&file, config)?;
        Ok(file)
    }
}

/// An API server of a test's own, for driver code that must meet a real one: etcd and
/// kube-apiserver in a temporary directory, with the VolumeSnapshot CRDs. Dropped, it stops both
/// and removes the directory; the processes die with the thread that started them.
pub struct StandaloneApiServer {
    pub server: ApiServer,
    procs: Procs,
    // Last: removed once the processes using it are gone.
    _dir: tempfile::TempDir,
}

impl StandaloneApiServer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    /// With or without the VolumeSnapshot CRDs (a cluster without them is a cluster too).
    pub async fn start_with(snapshot_crds: bool) -> anyhow::Result<Self> {
        let bin = super::bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("rds-csi-api-server.")
            .tempdir()?;
        let mut procs = Procs::default();
        let server = ApiServer::start(&bin, dir.path(), &mut procs).await?;
        if snapshot_crds {
            server.install_snapshot_crds(&bin).await?;
        }
        Ok(Self {
            server,
            procs,
            _dir: dir,
        })
    }

    /// The admin's kubeconfig (system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.server.admin.kubeconfig
    }
}

impl Drop for StandaloneApiServer {
    fn drop(&mut self) {
        self.procs
            .stop(&["kube-apiserver", "etcd"], Duration::from_secs(5));
    }
}
