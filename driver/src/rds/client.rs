//! Typed RDS operations over the SSH transport: each sends the commands of `command`, checks
//! the reply with `error::classify`, parses it with `parse`, retries transport failures only, and
//! reconciles a mutating command whose reply was lost by reading the state back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::command::{
    AllocSize, Command, DiskAdd, DiskFilter, FileFilter, MountPoint, RdsPath, Slot,
};
use super::error::{classify, RdsError, TransportError};
use super::model::{Capacity, Disk, FileInfo, Traffic};
use super::parse::{parse_detail, parse_key_colon_value};
use super::ssh::{backoff, Transport};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// Longest wait for one attempt, so a hung command leaves time to try again.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

pub struct RdsClient {
    transport: Arc<Transport>,
    retry: RetryPolicy,
}

impl RdsClient {
    pub fn new(transport: Arc<Transport>, retry: RetryPolicy) -> Self {
        Self { transport, retry }
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Sends one command once and classifies the reply.
    pub async fn run(&self, command: &Command, deadline: Instant) -> Result<String, RdsError> {
        let line = command.render();
        let started = Instant::now();
        // A copy runs as long as the data takes: it gets the whole deadline, never a capped
        // attempt that would end while RouterOS is still copying.
        let attempt_deadline = if command.is_copy() {
            deadline
        } else {
            deadline.min(started + self.retry.attempt_timeout)
        };
        let result = match self.transport.exec(&line, attempt_deadline).await {
            Ok(output) => classify(output),
            Err(e) => Err(RdsError::Transport(e)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(RdsError::NotFound(_)) => "not-found",
            Err(RdsError::AlreadyExists(_)) => "already-exists",
            Err(RdsError::OutOfSpace(_)) => "out-of-space",
            Err(RdsError::Transport(_)) => "transport",
            Err(_) => "failed",
        };
        let metrics = crate::metrics::global();
        metrics
            .rds_commands
            .with_label_values(&[command.kind(), outcome])
            .inc();
        metrics
            .rds_latency
            .with_label_values(&[command.kind()])
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            command = command.kind(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "RDS command"
        );
        if let Err(e) = &result {
            tracing::info!(command = %line, error = %e, "RDS command failed");
        }
        result
    }

    /// Repeats `op` while it fails with a transport error, with backoff, until the attempts or
    /// the deadline run out.
    async fn retrying<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T, RdsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RdsError>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && failures + 1 < self.retry.attempts => {
                    failures += 1;
                    let delay = backoff(self.retry.initial, self.retry.max, failures);
                    if Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    tracing::info!(error = %e, retry_in = ?delay, "retrying after a transport failure");
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    /// Runs a command whose repetition is harmless (reads, and writes that converge).
    async fn run_idempotent(
        &self,
        command: &Command,
        deadline: Instant,
    ) -> Result<String, RdsError> {
        self.retrying(deadline, || self.run(command, deadline))
            .await
    }

    /// The disk in `slot`, if there is one.
    pub async fn get_disk(&self, slot: &Slot, deadline: Instant) -> Result<Option<Disk>, RdsError> {
        let out = self
            .run_idempotent(
                &Command::DiskPrint(DiskFilter::Slot(slot.clone())),
                deadline,
            )
            .await?;
        let mut matching: Vec<Disk> = parse_detail(&out)
            .iter()
            .filter_map(Disk::from_entry)
            .filter(|d| d.slot == slot.as_str())
            .collect();
        if matching.len() > 1 {
            return Err(RdsError::Parse(format!(
                "more than one disk has slot {slot}"
            )));
        }
        Ok(matching.pop())
    }

    /// Every disk on the RDS, the driver's and others, in one command.
    pub async fn list_disks(&self, deadline: Instant) -> Result<Vec<Disk>, RdsError> {
        let out = self
            .run_idempotent(&Command::DiskPrint(DiskFilter::All), deadline)
            .await?;
        Ok(parse_detail(&out)
            .iter()
            .filter_map(Disk::from_entry)
            .collect())
    }

    /// Creates a disk. If the reply is lost and the retry finds the disk already made exactly as
    /// asked, that is success, not a duplicate; a disk in the slot that differs is AlreadyExists.
    pub async fn create_disk(&self, add: &DiskAdd, deadline: Instant) -> Result<Disk, RdsError> {
        let command = Command::DiskAdd(add.clone());
        let mut failures = 0;
        loop {
            match self.run(&command, deadline).await {
                Ok(_) => break,
                Err(e @ RdsError::AlreadyExists(_)) => {
                    return match self.get_disk(&add.slot, deadline).await? {
                        Some(disk) if disk_matches(add, &disk) => Ok(disk),
                        _ => Err(e),
                    };
                }
                // A copy that timed out may still be running on the RDS: sending it again could
                // only collide with it. The CO retries the whole call later.
                Err(e @ RdsError::Transport(TransportError::Timeout { .. }))
                    if add.copy_from.is_some() =>
                {
                    return Err(e);
                }
                Err(e) if e.is_retryable() => {
                    // The add may have run: look before sending it again.
                    if let Some(disk) = self.get_disk(&add.slot, deadline).await? {
                        return if disk_matches(add, &disk) {
                            Ok(disk)
                        } else {
                            Err(RdsError::AlreadyExists(format!(
                                "slot {} holds a different disk ({})",
                                add.slot,
                                describe(&disk)
                            )))
                        };
                    }
                    failures += 1;
                    if failures >= self.retry.attempts {
                        return Err(e);
                    }
                    let delay = backoff(self.retry.initial, self.retry.max, failures);
                    if Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        // RouterOS allocates exactly the whole MiB asked for, so the reply is enough: reading the
        // disk back would cost a second round trip on every create.
        Ok(expected_disk(add))
    }

    /// Grows a disk's file to `size`; RouterOS cannot shrink. Reads the disk back and returns it.
    pub async fn resize_disk(
        &self,
        slot: &Slot,
        size: AllocSize,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let command = Command::DiskSetSize {
            slot: slot.clone(),
            size,
        };
        // Setting the same size twice converges, so a lost reply is simply retried.
        self.run_idempotent(&command, deadline).await?;
        let disk = self
            .get_disk(slot, deadline)
            .await?
            .ok_or_else(|| RdsError::NotFound(format!("disk {slot} disappeared during resize")))?;
        match disk.size_bytes {
            Some(actual) if actual >= size.bytes() => Ok(disk),
            other => Err(RdsError::Failed {
                exit_status: Some(0),
                text: format!(
                    "disk {slot} is {other:?} bytes after resizing to {}",
                    size.bytes()
                ),
            }),
        }
    }

    /// Removes the disk entry (not its file). A missing disk is not an error.
    pub async fn remove_disk(&self, slot: &Slot, deadline: Instant) -> Result<(), RdsError> {
        self.run_idempotent(&Command::DiskRemove { slot: slot.clone() }, deadline)
            .await
            .map(drop)
    }

    /// Files below `dir` (exactly below it: siblings such as `dir-old/` are filtered out).
    pub async fn list_files(
        &self,
        dir: &RdsPath,
        deadline: Instant,
    ) -> Result<Vec<FileInfo>, RdsError> {
        let out = self
            .run_idempotent(
                &Command::FilePrint(FileFilter::Under(dir.clone())),
                deadline,
            )
            .await?;
        let prefix = format!("{}/", dir.as_str());
        Ok(parse_detail(&out)
            .iter()
            .filter_map(FileInfo::from_entry)
            .filter(|f| f.path.starts_with(&prefix))
            .collect())
    }

    pub async fn get_file(
        &self,
        path: &RdsPath,
        deadline: Instant,
    ) -> Result<Option<FileInfo>, RdsError> {
        let out = self
            .run_idempotent(
                &Command::FilePrint(FileFilter::Name(path.clone())),
                deadline,
            )
            .await?;
        Ok(parse_detail(&out)
            .iter()
            .filter_map(FileInfo::from_entry)
            .find(|f| f.path == path.as_str()))
    }

    /// Deletes a file. A missing file is not an error.
    pub async fn remove_file(&self, path: &RdsPath, deadline: Instant) -> Result<(), RdsError> {
        self.run_idempotent(&Command::FileRemove { path: path.clone() }, deadline)
            .await
            .map(drop)
    }

    /// Size and free space of the pool disk mounted at the first component of `base`.
    pub async fn capacity(&self, base: &RdsPath, deadline: Instant) -> Result<Capacity, RdsError> {
        let mount_point = MountPoint::new(base.mount_point())?;
        let out = self
            .run_idempotent(
                &Command::DiskPrint(DiskFilter::MountPoint(mount_point)),
                deadline,
            )
            .await?;
        let disk = parse_detail(&out)
            .iter()
            .filter_map(Disk::from_entry)
            .find(|d| d.mount_point.as_deref() == Some(base.mount_point()))
            .ok_or_else(|| {
                RdsError::NotFound(format!("no disk is mounted at {}", base.mount_point()))
            })?;
        match (disk.size_bytes, disk.free_bytes) {
            (Some(total_bytes), Some(free_bytes)) if total_bytes > 0 => Ok(Capacity {
                total_bytes,
                free_bytes,
            }),
            _ => Err(RdsError::Parse(format!(
                "pool disk {} has no readable size and free space",
                disk.slot
            ))),
        }
    }

    pub async fn traffic(&self, slot: &Slot, deadline: Instant) -> Result<Traffic, RdsError> {
        let out = self
            .run_idempotent(&Command::MonitorTraffic { slot: slot.clone() }, deadline)
            .await?;
        Traffic::parse(&out).map_err(RdsError::Parse)
    }

    /// The RDS's system identity; also the liveness probe.
    pub async fn identity(&self, deadline: Instant) -> Result<String, RdsError> {
        let out = self.run_idempotent(&Command::Identity, deadline).await?;
        parse_key_colon_value(&out)
            .into_iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v)
            .ok_or_else(|| RdsError::Parse(format!("no name in identity output {out:?}")))
    }
}

/// The disk `add` makes, as a print would show it.
fn expected_disk(add: &DiskAdd) -> Disk {
    Disk {
        slot: add.slot.to_string(),
        disk_type: "file".into(),
        flags: if add.export.is_some() {
            "t".into()
        } else {
            String::new()
        },
        file_path: Some(add.file_path.to_string()),
        size_bytes: add.size.map(AllocSize::bytes),
        nvme_export: add.export.is_some(),
        nvme_port: add.export.as_ref().map(|e| e.port.get()),
        nqn: add.export.as_ref().map(|e| e.nqn.to_string()),
        mount_point: None,
        free_bytes: None,
    }
}

/// Whether an existing disk is exactly what `add` would have made.
pub fn disk_matches(add: &DiskAdd, disk: &Disk) -> bool {
    let path_ok = disk.file_path.as_deref() == Some(add.file_path.as_str());
    let size_ok = add.size.is_none_or(|s| disk.size_bytes == Some(s.bytes()));
    let export_ok = match &add.export {
        Some(e) => {
            disk.nvme_export
                && disk.nvme_port == Some(e.port.get())
                && disk.nqn.as_deref() == Some(e.nqn.as_str())
        }
        None => !disk.nvme_export,
    };
    path_ok && size_ok && export_ok
}

fn describe(disk: &Disk) -> String {
    format!(
        "file-path={} size={} export={}",
        disk.file_path.as_deref().unwrap_or("-"),
        disk.size_bytes.map_or("?".into(), |s| s.to_string()),
        disk.nvme_export
    )
}
