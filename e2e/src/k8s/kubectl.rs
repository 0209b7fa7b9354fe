//! The real kubectl, as one user (a kubeconfig), every call bounded.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// Runs `kubectl ARGS`, feeding `stdin`; Err (with its stderr) when it fails.
    pub async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().context("kubectl stdin")?;
            pipe.write_all(input.as_bytes()).await?;
        }
        let out = tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {} took over {CALL_TIMEOUT:?}", args.join(" ")))??;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run_with(args, None).await
    }

    /// `kubectl apply -f -` of a manifest.
    pub async fn apply(&self, manifest: &str) -> anyhow::Result<String> {
        self.run_with(&["apply", "-f", "-"], Some(manifest)).await
    }

    /// `kubectl ARGS -o json`, parsed.
    pub async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.run(&all).await?)?)
    }

    /// The object, or None when the API server says it does not exist.
    pub async fn get(&self, args: &[&str]) -> anyhow::Result<Option<Value>> {
        let mut all = vec!["get"];
        all.extend(args);
        all.push("--ignore-not-found");
        let text = self
            .run(&[all.as_slice(), &["-o", "json"]].concat())
            .await?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&text)?))
    }

    /// The items of `kubectl get KIND [ARGS]`.
    pub async fn items(&self, args: &[&str]) -> anyhow::Result<Vec<Value>> {
        let mut all = vec!["get"];
        all.extend(args);
        let list = self.json(&all).await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Lifts the not-ready taint TaintNodesByCondition puts on a new Node: the tier runs no
    /// node lifecycle controller, which would lift it once the node is Ready. Best effort (the
    /// taint may be gone already).
    pub async fn lift_not_ready_taint(&self, node: &str) {
        let _ = self
            .run(&[
                "taint",
                "node",
                node,
                "node.kubernetes.io/not-ready:NoSchedule-",
            ])
            .await;
    }
}
