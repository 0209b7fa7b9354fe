//! Running host tools (`nvme`, `losetup`, `mount`, `mkfs.*`, ...) with a deadline.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;

use tokio::time::Instant;

use super::error::{NodeError, Result};

#[derive(Debug)]
pub struct Output {
    /// `None` when the process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

fn describe<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs `program args...` and returns its output whatever the exit status. Fails only when the
/// program cannot be started or the deadline passes (the process is then killed).
pub async fn run<S: AsRef<OsStr>>(program: &Path, args: &[S], deadline: Instant) -> Result<Output> {
    run_with_input(program, args, None, &[], deadline).await
}

/// [`run`] with `input` written to the program's standard input (then closed), and `env` added
/// to its environment. Input is how a secret reaches a program: never argv, a file or a log.
pub async fn run_with_input<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    input: Option<&[u8]>,
    env: &[(&str, &str)],
    deadline: Instant,
) -> Result<Output> {
    use tokio::io::AsyncWriteExt;
    let cmdline = describe(program, args);
    tracing::debug!(command = %cmdline, "running");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timed-out command must not linger holding a device.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NodeError::Internal(format!("cannot run `{cmdline}`: {e}")))?;
    let finished = async {
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // A program that exits without reading all of it is judged by its exit status.
            let _ = stdin.write_all(input).await;
        }
        child.wait_with_output().await
    };
    let out = tokio::time::timeout_at(deadline, finished)
        .await
        .map_err(|_| NodeError::DeadlineExceeded(format!("`{cmdline}` did not finish in time")))?
        .map_err(|e| NodeError::Internal(format!("`{cmdline}`: {e}")))?;
    let out = Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    tracing::debug!(command = %cmdline, code = ?out.code, stderr = %out.stderr.trim(), "finished");
    Ok(out)
}

/// Like [`run`], but a non-zero exit status is an error that quotes stderr.
pub async fn run_ok<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    deadline: Instant,
) -> Result<Output> {
    let out = run(program, args, deadline).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(NodeError::Internal(format!(
            "`{}` failed (exit {}): {}",
            describe(program, args),
            out.code.map_or("signal".to_string(), |c| c.to_string()),
            out.stderr.trim()
        )))
    }
}

/// Polls `probe` until it yields a value or the deadline passes. Polling with a deadline (not a
/// fixed sleep) is how we wait for the kernel to publish devices in sysfs.
pub async fn poll_until<T, F>(
    deadline: Instant,
    interval: std::time::Duration,
    mut probe: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Result<Option<T>>,
{
    loop {
        if let Some(v) = probe()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
    }
}
