//! Host processes of the tier, with their logs: stopped together (TERM, then KILL), and killed by
//! the kernel if the test process dies first (a parent-death signal), so nothing outlives the tier.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    /// How to start it again when it exits (a container under `restartPolicy: Always`).
    restart: Option<Spec>,
    pub restarts: u32,
}

/// A program, its args and its whole environment.
#[derive(Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The host name it sees (a UTS namespace of its own), as a pod's containers see the pod's
    /// name: the sidecars take it as their leader-election identity.
    pub hostname: Option<String>,
}

impl Spec {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().cloned());
        if let Some(name) = self.hostname.clone() {
            // SAFETY: unshare and sethostname are plain system calls; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
                    nix::unistd::sethostname(&name)?;
                    Ok(())
                });
            }
        }
        cmd
    }
}

impl Proc {
    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

#[derive(Default)]
pub struct Procs {
    pub running: Vec<Proc>,
}

impl Procs {
    /// Starts `cmd` as `name`, its stdout and stderr into `<logs>/<name>.log`.
    pub fn spawn(&mut self, name: &str, cmd: Command, logs: &Path) -> anyhow::Result<()> {
        let log = logs.join(format!("{name}.log"));
        let child = start(name, cmd, &log)?;
        self.running.push(Proc {
            name: name.to_string(),
            log,
            child,
            restart: None,
            restarts: 0,
        });
        Ok(())
    }

    /// Like `spawn`, and started again whenever it exits, as the kubelet restarts a container.
    pub fn spawn_restartable(&mut self, name: &str, spec: Spec, logs: &Path) -> anyhow::Result<()> {
        let log = logs.join(format!("{name}.log"));
        let child = start(name, spec.command(), &log)?;
        self.running.push(Proc {
            name: name.to_string(),
            log,
            child,
            restart: Some(spec),
            restarts: 0,
        });
        Ok(())
    }

    /// Starts again every restartable process that exited; returns what it restarted.
    pub fn restart_exited(&mut self) -> Vec<String> {
        let mut restarted = Vec::new();
        for p in &mut self.running {
            let Some(spec) = p.restart.clone() else {
                continue;
            };
            let Some(status) = p.exited() else { continue };
            match start(&p.name, spec.command(), &p.log) {
                Ok(child) => {
                    p.child = child;
                    p.restarts += 1;
                    restarted.push(format!("{} ({status})", p.name));
                }
                Err(e) => restarted.push(format!("{} (not restarted: {e:#})", p.name)),
            }
        }
        restarted
    }

    /// Stops the named processes: TERM, and KILL those still there after `grace`.
    pub fn stop(&mut self, names: &[&str], grace: Duration) {
        let (stopping, kept): (Vec<Proc>, Vec<Proc>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|p| names.contains(&p.name.as_str()));
        self.running = kept;
        stop_all(stopping, grace);
    }

    /// Kills the named process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self
            .running
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))?;
        p.child.kill()?;
        Ok(())
    }

    /// Kills the named processes at once (SIGKILL) and never restarts them: a node that died
    /// with its pods, leases and work left where they were.
    pub fn kill_for_good(&mut self, names: &[&str]) {
        let (killed, kept): (Vec<Proc>, Vec<Proc>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|p| names.contains(&p.name.as_str()));
        self.running = kept;
        for mut p in killed {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the named process: a container that hangs, its
    /// leases and its work left where they were.
    pub fn freeze(&mut self, name: &str, frozen: bool) -> anyhow::Result<()> {
        let p = self
            .running
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))?;
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(pid_of(&p.child)?, signal).with_context(|| format!("{signal} to {name}"))?;
        Ok(())
    }

    /// Names of processes that exited on their own and are not restarted, with their status.
    pub fn dead(&mut self) -> Vec<String> {
        self.running
            .iter_mut()
            .filter(|p| p.restart.is_none())
            .filter_map(|p| p.exited().map(|s| format!("{} ({s})", p.name)))
            .collect()
    }
}

/// Spawns `cmd`, its output appended to `log`, killed if this thread dies.
fn start(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let out = File::options().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {name}: {cmd:?}"))
}

fn pid_of(child: &Child) -> anyhow::Result<Pid> {
    Ok(Pid::from_raw(i32::try_from(child.id())?))
}

fn stop_all(mut procs: Vec<Proc>, grace: Duration) {
    for p in &procs {
        if let Ok(pid) = pid_of(&p.child) {
            let _ = kill(pid, Signal::SIGTERM);
            // A frozen process acts on the TERM only once thawed.
            let _ = kill(pid, Signal::SIGCONT);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && procs.iter_mut().any(|p| p.exited().is_none()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // The newest first: the driver and sidecars before the API server they talk to.
        let mut all = std::mem::take(&mut self.running);
        all.reverse();
        stop_all(all, Duration::from_secs(5));
    }
}
