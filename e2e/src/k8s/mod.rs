//! The real Kubernetes components (etcd, kube-apiserver, the CSI sidecars, csi-sanity, ...),
//! built from the Go module in `e2e/cluster/go` by `e2e/cluster/build.sh` into a cache outside
//! the repository, keyed by the hash of its `go.sum`; and what runs them: host processes that
//! never outlive the test, the API server, kubectl.

mod api_server;
mod kubectl;
pub mod kubelet;
mod procs;

pub use api_server::{free_port, kubeconfig, ApiServer, StandaloneApiServer, STARTUP_TIMEOUT};
pub use kubectl::Kubectl;
pub use procs::{Proc, Procs, Spec};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// The directory holding the built components; builds what is missing on first use (a cold
/// build takes minutes, a warm one nothing). Err names what is missing (Go, most often).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> anyhow::Result<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster/build.sh");
    // Progress goes to our stderr; the last line on stdout is the bin directory.
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); its error is printed above",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !dir.is_dir() {
        bail!("{} printed no bin directory", script.display());
    }
    Ok(dir)
}

/// The version `e2e/cluster/go/go.mod` pins for `module`, e.g. `v6.3.0`.
pub fn pinned_version(module: &str) -> anyhow::Result<String> {
    let go_mod = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster/go/go.mod");
    let text = std::fs::read_to_string(&go_mod)?;
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(module)).then(|| words.next().map(str::to_string))?
        })
        .with_context(|| format!("{} does not require {module}", go_mod.display()))
}
