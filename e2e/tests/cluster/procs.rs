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
    pub fn spawn(&mut self, name: &str, mut cmd: Command, logs: &Path) -> anyhow::Result<()> {
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        self.running.push(Proc {
            name: name.to_string(),
            log,
            child,
        });
        Ok(())
    }

    /// Names of processes that exited on their own, with their status.
    pub fn dead(&mut self) -> Vec<String> {
        self.running
            .iter_mut()
            .filter_map(|p| p.exited().map(|s| format!("{} ({s})", p.name)))
            .collect()
    }
}

fn stop_all(mut procs: Vec<Proc>, grace: Duration) {
    for p in &procs {
        if let Ok(pid) = i32::try_from(p.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
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
