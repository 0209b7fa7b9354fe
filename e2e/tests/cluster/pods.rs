//! Runs a pod's containers as host processes, doing what a kubelet would for the parts the
//! driver's manifests use: env from values, field references, ConfigMaps and Secrets (read
//! from the API server); `emptyDir`, `secret` and `hostPath` volumes as host directories (a
//! host path moved where the tier keeps that part of the host), the paths in the args moved
//! into them; each declared container port on a free host port; and, in place
//! of the projected service-account token, a kubeconfig holding a token of the pod's own
//! ServiceAccount. Args are the manifest's, expanded as the kubelet expands `$(VAR)`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::Value;

use e2e::k8s::{free_port, Kubectl, Procs, Spec};

/// How a container is given its API credentials.
#[derive(Clone, Copy)]
pub enum Credentials {
    /// The kubernetes-csi sidecars: `--kubeconfig FILE`.
    KubeconfigFlag,
    /// rds-csi: `RDS_CSI_KUBECONFIG`, the environment form of its `--kubeconfig`.
    Env(&'static str),
    /// A pod without API credentials (`automountServiceAccountToken: false`).
    None,
}

/// What runs a container: a host binary and how it takes credentials. None: not run here.
pub type Runner = Option<(PathBuf, Credentials)>;

pub struct Pod<'a> {
    pub admin: &'a Kubectl,
    pub namespace: &'a str,
    pub name: &'a str,
    pub node: &'a str,
    /// The pod's own directory: volumes and logs.
    pub dir: PathBuf,
    /// A kubeconfig with a token of the pod's ServiceAccount.
    pub kubeconfig: PathBuf,
    /// Where host paths are on this host: (prefix, directory standing for it). Paths under
    /// none of them are the host's own.
    pub host_paths: Vec<(String, PathBuf)>,
    /// Flags set to these values in every container run (replacing the manifest's), for
    /// what the tier's host differs in: `(--flag, value)`.
    pub overrides: Vec<(String, String)>,
}

pub struct Started {
    /// Volume name to the host directory standing for it.
    pub volumes: HashMap<String, PathBuf>,
    /// Containers not run, with why.
    pub skipped: Vec<(String, String)>,
    /// Each container's args as run.
    pub args: BTreeMap<String, Vec<String>>,
}

impl Pod<'_> {
    /// A path of the host, where the tier keeps it.
    pub fn host_path(&self, path: &str) -> PathBuf {
        for (prefix, dir) in &self.host_paths {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return dir.join(rest.trim_start_matches('/'));
                }
            }
        }
        PathBuf::from(path)
    }

    async fn config_value(&self, kind: &str, name: &str, key: &str) -> anyhow::Result<String> {
        let object = self
            .admin
            .get(&[kind, name, "-n", self.namespace])
            .await?
            .with_context(|| format!("{kind} {}/{name} does not exist", self.namespace))?;
        match kind {
            "secret" => {
                let b64 = object["data"][key]
                    .as_str()
                    .with_context(|| format!("secret {name} has no key {key}"))?;
                Ok(String::from_utf8(
                    base64::engine::general_purpose::STANDARD.decode(b64)?,
                )?)
            }
            _ => Ok(object["data"][key]
                .as_str()
                .with_context(|| format!("configmap {name} has no key {key}"))?
                .to_string()),
        }
    }

    async fn volume(&self, volume: &Value) -> anyhow::Result<(String, PathBuf)> {
        let name = volume["name"].as_str().context("volume without name")?;
        let dir = self.dir.join("volumes").join(name);
        std::fs::create_dir_all(&dir)?;
        if volume.get("emptyDir").is_some() {
            return Ok((name.into(), dir));
        }
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            let host = self.host_path(path);
            if volume["hostPath"]["type"] == "DirectoryOrCreate" {
                std::fs::create_dir_all(&host)?;
            }
            if !host.exists() {
                bail!(
                    "volume {name}: host path {path} ({}) does not exist",
                    host.display()
                );
            }
            return Ok((name.into(), host));
        }
        let Some(secret) = volume.get("secret") else {
            bail!(
                "volume {name}: only emptyDir, hostPath and secret volumes are run here: {volume}"
            );
        };
        let secret_name = secret["secretName"].as_str().context("secretName")?;
        let Some(object) = self
            .admin
            .get(&["secret", secret_name, "-n", self.namespace])
            .await?
        else {
            if secret["optional"].as_bool() == Some(true) {
                return Ok((name.into(), dir));
            }
            bail!("volume {name}: secret {secret_name} does not exist");
        };
        let mode = secret["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        let data = object["data"].as_object().cloned().unwrap_or_default();
        let items: Vec<(String, String)> = match secret["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap_or_default().to_string(),
                        i["path"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in items {
            let b64 = data
                .get(&key)
                .and_then(Value::as_str)
                .with_context(|| format!("secret {secret_name} has no key {key}"))?;
            let file = dir.join(&path);
            std::fs::write(
                &file,
                base64::engine::general_purpose::STANDARD.decode(b64)?,
            )?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
        }
        Ok((name.into(), dir))
    }

    /// The container's environment, as the kubelet resolves it.
    async fn env(&self, container: &Value) -> anyhow::Result<Vec<(String, String)>> {
        let mut env: Vec<(String, String)> = vec![("HOSTNAME".into(), self.name.into())];
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"]
                .as_str()
                .context("env without name")?
                .to_string();
            let value = if let Some(v) = var["value"].as_str() {
                expand(v, &env)
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "metadata.namespace" => self.namespace.into(),
                    "metadata.name" => self.name.into(),
                    "spec.nodeName" => self.node.into(),
                    // The pod network here is the host's loopback.
                    "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                    other => bail!("env {name}: field {other} is not run here"),
                }
            } else if let Some(r) = var["valueFrom"].get("configMapKeyRef") {
                self.config_value(
                    "configmap",
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                )
                .await?
            } else if let Some(r) = var["valueFrom"].get("secretKeyRef") {
                self.config_value(
                    "secret",
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                )
                .await?
            } else {
                bail!("env {name}: {var} is not run here");
            };
            env.push((name, value));
        }
        Ok(env)
    }

    /// Starts every container of `spec` (a pod spec) that `runner` gives a binary for.
    pub async fn start(
        &self,
        spec: &Value,
        runner: impl Fn(&str) -> Runner,
        procs: &mut Procs,
    ) -> anyhow::Result<Started> {
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut volumes = HashMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let (name, dir) = self.volume(v).await?;
            volumes.insert(name, dir);
        }
        let containers = spec["containers"].as_array().context("no containers")?;
        // One network namespace per pod: each declared port gets a free host port.
        let mut ports = HashMap::new();
        for c in containers {
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(port) = p["containerPort"].as_u64() {
                    ports.insert(port, free_port()?);
                }
            }
        }
        let mut started = Started {
            volumes: volumes.clone(),
            skipped: Vec::new(),
            args: BTreeMap::new(),
        };
        for c in containers {
            let name = c["name"].as_str().context("container without name")?;
            let Some((binary, credentials)) = runner(name) else {
                started.skipped.push((
                    name.to_string(),
                    c["image"].as_str().unwrap_or_default().to_string(),
                ));
                continue;
            };
            let mut env = self.env(c).await?;
            let mut mounts: Vec<(String, PathBuf)> = Vec::new();
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let volume = m["name"].as_str().unwrap_or_default();
                let host = volumes
                    .get(volume)
                    .with_context(|| format!("{name} mounts unknown volume {volume}"))?;
                mounts.push((
                    m["mountPath"].as_str().unwrap_or_default().to_string(),
                    host.clone(),
                ));
            }
            // The longest mount path first, so /a/b is not taken for /a.
            mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
            let mut args: Vec<String> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let arg = expand(a.as_str().unwrap_or_default(), &env);
                    let arg = into_mounts(&arg, &mounts);
                    onto_ports(&arg, &ports)
                })
                .collect();
            for (flag, value) in &self.overrides {
                args.retain(|a| a != flag && !a.starts_with(&format!("{flag}=")));
                args.push(format!("{flag}={value}"));
            }
            let kubeconfig = self.kubeconfig.display().to_string();
            match credentials {
                Credentials::KubeconfigFlag => args.push(format!("--kubeconfig={kubeconfig}")),
                Credentials::Env(var) => env.push((var.into(), kubeconfig)),
                Credentials::None => {}
            }
            env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
            let spec = Spec {
                program: binary,
                args: args.clone(),
                env,
                hostname: Some(self.name.to_string()),
            };
            procs.spawn_restartable(&format!("{}-{name}", self.name), spec, &logs)?;
            started.args.insert(name.to_string(), args);
        }
        Ok(started)
    }
}

/// `$(VAR)` replaced by VAR's value from earlier in `env`; unknown references stay, as the
/// kubelet leaves them.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (k, v) in env.iter().rev() {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// A path inside a mount moved to the host directory standing for it.
fn into_mounts(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, host) in mounts {
        if let Some(at) = arg.find(&format!("{path}/")) {
            let rest = &arg[at + path.len()..];
            return format!("{}{}{rest}", &arg[..at], host.display());
        }
        if arg.ends_with(path.as_str()) && arg.len() > path.len() {
            let at = arg.len() - path.len();
            if matches!(arg.as_bytes()[at - 1], b'=' | b'/') {
                return format!("{}{}", &arg[..at], host.display());
            }
        }
    }
    arg.to_string()
}

/// `...:PORT` of a declared container port moved to its host port.
fn onto_ports(arg: &str, ports: &HashMap<u64, u16>) -> String {
    for (port, host) in ports {
        if let Some(head) = arg.strip_suffix(&format!(":{port}")) {
            return format!("{head}:{host}");
        }
    }
    arg.to_string()
}
