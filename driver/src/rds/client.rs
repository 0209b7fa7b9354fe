//! Typed RDS operations over the SSH transport: each sends the commands of `command`, checks
//! the reply with `error::classify`, parses it with `parse`, retries transport failures only, and
//! reconciles a mutating command whose reply was lost by reading the state back. Where real
//! RouterOS may behave in more than one way (print terse, time zones, asynchronous copies,
//! delayed resizes, directories it will not create), it finds out rather than assumes.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::command::{
    AllocSize, Command, DiskAdd, DiskFilter, FileFilter, MountPoint, Nqn, NvmeExport, RdsPath, Slot,
};
use super::error::{classify, RdsError, TransportError};
use super::model::{Capacity, Disk, FileInfo, RdsClock, Traffic};
use super::parse::{parse_detail, parse_exact_count, parse_key_colon_value, Entry};
use super::ssh::{backoff, Transport};
use super::unchanged::Unchanged;

/// How long the RDS's clock reading (its offset from UTC) is trusted before it is read again.
const CLOCK_TTL: Duration = Duration::from_secs(600);
/// Longest wait for a resize to show in the disk's size.
const RESIZE_SETTLE: Duration = Duration::from_secs(10);
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_millis(500);

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

/// Whether a command asks what the RDS supports, so that a refusal is an answer, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    Yes,
    No,
}

/// A copy not asked about for this long is forgotten (its caller gave up).
const COPY_FORGET: Duration = Duration::from_secs(3600);

pub struct RdsClient {
    transport: Arc<Transport>,
    retry: RetryPolicy,
    /// Whether listings can use `print terse`.
    terse: Learnt,
    /// Whether `:put [/file get ... size]` gives exact file sizes.
    exact_sizes: Learnt,
    /// Whether the driver's scripts run and print as expected (`script`).
    pub(super) scripting: Learnt,
    /// Whether scripts may be sent at all (`--rds-scripting`).
    pub(super) scripts_allowed: bool,
    clock: Mutex<Option<(Instant, RdsClock)>>,
    /// What each copy's file showed last, and since when: kept across calls, so a CO retry
    /// goes on counting how long a copy has stood still rather than starting again.
    pub(super) copies: Unchanged<(u64, u64, u64)>,
}

/// Whether the RDS supports something, learnt once per connection generation: a reconnect may
/// reach a different (upgraded, replaced) RDS, which is asked again.
#[derive(Default)]
pub(super) struct Learnt(Mutex<Option<(u64, bool)>>);

impl Learnt {
    /// What was learnt on `generation`, if anything.
    pub(super) fn get(&self, generation: u64) -> Option<bool> {
        match *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((g, supported)) if g == generation => Some(supported),
            _ => None,
        }
    }

    pub(super) fn set(&self, generation: u64, supported: bool) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, supported));
    }

    /// Forgets what was learnt: the next use asks again.
    pub(super) fn forget(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl RdsClient {
    pub fn new(transport: Arc<Transport>, retry: RetryPolicy) -> Self {
        Self {
            transport,
            retry,
            terse: Learnt::default(),
            exact_sizes: Learnt::default(),
            scripting: Learnt::default(),
            scripts_allowed: true,
            clock: Mutex::new(None),
            copies: Unchanged::new(COPY_FORGET),
        }
    }

    /// A client that never sends scripts: every change goes command by command.
    pub fn without_scripts(mut self) -> Self {
        self.scripts_allowed = false;
        self
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Sends one command once and classifies the reply. A listing uses `print terse` when this
    /// connection's RDS answers it readably (tried once per connection), else `print detail`.
    pub async fn run(&self, command: &Command, deadline: Instant) -> Result<String, RdsError> {
        if !command.is_listing() {
            return self.run_line(command, &command.render(), deadline).await;
        }
        let generation = self.transport.generation();
        match self.terse.get(generation) {
            Some(true) => {
                match self
                    .run_line(command, &command.render_terse(), deadline)
                    .await
                {
                    // What worked no longer does (a changed RDS): learn again, from detail.
                    Err(RdsError::InvalidArgument(_) | RdsError::Parse(_)) => {
                        self.terse.set(generation, false);
                    }
                    reply => return reply,
                }
            }
            Some(false) => {}
            None => {
                let reply = self
                    .run_line_as(command, &command.render_terse(), deadline, Probe::Yes)
                    .await;
                let supported = match &reply {
                    Err(RdsError::Transport(_)) => return reply,
                    Ok(out) => parse_detail(out).is_ok(),
                    Err(_) => false,
                };
                self.terse.set(self.transport.generation(), supported);
                tracing::info!(supported, "RDS `print terse` support detected");
                if supported {
                    return reply;
                }
            }
        }
        self.run_line(command, &command.render(), deadline).await
    }

    /// The exact size in bytes of the file at `path`, read with RouterOS scripting
    /// (`:put [/file get [find name=...] size]`), or None when this RDS gives no exact count.
    ///
    /// Whether real RouterOS answers that with a plain integer is not verified, so the answer
    /// is trusted only when it is exactly a decimal integer (space thousands separators
    /// allowed, see `parse_exact_count`). An error or any other output is None, and is learnt
    /// like `print terse` support: once per connection generation, so an RDS that refuses
    /// scripting is asked once per connection, not once per poll. An RDS that answered before
    /// and now does not is asked again on the next call (it may be the file, not the RDS).
    /// Only a transport failure is an error.
    pub async fn exact_file_size(
        &self,
        path: &RdsPath,
        deadline: Instant,
    ) -> Result<Option<u64>, RdsError> {
        let generation = self.transport.generation();
        let known = self.exact_sizes.get(generation);
        if known == Some(false) {
            return Ok(None);
        }
        let command = Command::FileExactSize { path: path.clone() };
        let exact = match self.run_idempotent(&command, deadline).await {
            Ok(out) => parse_exact_count(&out),
            Err(e @ RdsError::Transport(_)) => return Err(e),
            Err(_) => None,
        };
        if known.is_none() {
            let supported = exact.is_some();
            self.exact_sizes.set(generation, supported);
            tracing::info!(
                supported,
                "RDS exact file sizes (`:put [/file get ... size]`) detected"
            );
        }
        Ok(exact)
    }

    async fn run_line(
        &self,
        command: &Command,
        line: &str,
        deadline: Instant,
    ) -> Result<String, RdsError> {
        self.run_line_as(command, line, deadline, Probe::No).await
    }

    pub(super) async fn run_line_as(
        &self,
        command: &Command,
        line: &str,
        deadline: Instant,
        probe: Probe,
    ) -> Result<String, RdsError> {
        let started = Instant::now();
        // A copy runs as long as the data takes: it gets the whole deadline, never a capped
        // attempt that would end while RouterOS is still copying.
        let attempt_deadline = if command.is_copy() {
            deadline
        } else {
            deadline.min(started + self.retry.attempt_timeout)
        };
        let result = match self.transport.exec(line, attempt_deadline).await {
            // A script prints its markers and read-backs: its parser checks what it printed.
            Ok(output) => classify(
                output,
                command.is_mutating() && !matches!(command, Command::Script(_)),
            ),
            Err(e) => Err(RdsError::Transport(e)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(RdsError::NotFound(_)) => "not-found",
            Err(RdsError::AlreadyExists(_)) => "already-exists",
            Err(RdsError::OutOfSpace(_)) => "out-of-space",
            Err(RdsError::Busy(_)) => "busy",
            Err(RdsError::Transport(_)) => "transport",
            Err(_) => "failed",
        };
        self.transport
            .observer()
            .command_done(command.kind(), outcome, started.elapsed());
        tracing::debug!(
            command = command.kind(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "RDS command"
        );
        match (&result, probe) {
            (Err(e), Probe::No) => {
                tracing::info!(command = %line, error = %e, "RDS command failed")
            }
            // A refusal is one of the answers a probe expects.
            (Err(e), Probe::Yes) => {
                tracing::debug!(command = %line, error = %e, "RDS probe refused")
            }
            (Ok(_), _) => {}
        }
        result
    }

    /// Repeats `op` while it fails with a transport error, with backoff, until the attempts or
    /// the deadline run out.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        deadline: Instant,
        mut op: F,
    ) -> Result<T, RdsError>
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
                    // One line per retry, readable as it stands: an operator command's only
                    // sign of life while the RDS does not answer.
                    tracing::warn!(
                        "{e}; trying again in {} (attempt {} of {})",
                        crate::duration::display(delay),
                        failures + 1,
                        self.retry.attempts
                    );
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    /// Runs a command whose repetition is harmless (reads, and writes that converge).
    pub(super) async fn run_idempotent(
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
        disk_in(&out, slot)
    }

    /// Every disk on the RDS, the driver's and others, in one command.
    pub async fn list_disks(&self, deadline: Instant) -> Result<Vec<Disk>, RdsError> {
        let out = self
            .run_idempotent(&Command::DiskPrint(DiskFilter::All), deadline)
            .await?;
        disks(&out)
    }

    /// Creates a disk and returns it as RouterOS reads it back. If the reply is lost and the
    /// retry finds the disk already made exactly as asked, that is success, not a duplicate; a
    /// disk in the slot that differs is AlreadyExists. A directory RouterOS will not create is
    /// created, once. The caller checks the disk read back (`disk_mismatch`).
    pub async fn create_disk(&self, add: &DiskAdd, deadline: Instant) -> Result<Disk, RdsError> {
        let command = Command::DiskAdd(add.clone());
        let mut failures = 0;
        let mut made_directory = false;
        loop {
            match self.run(&command, deadline).await {
                Ok(_) => break,
                Err(e @ RdsError::AlreadyExists(_)) => {
                    return match self.get_disk(&add.slot, deadline).await? {
                        Some(disk) if disk_matches(add, &disk) => Ok(disk),
                        _ => Err(e),
                    };
                }
                // A copy that timed out, or whose connection was lost, may still be running on
                // the RDS: sending it again could only collide with it, and its slot existing
                // says nothing about its file being whole. The CO retries the whole call later,
                // which waits for the copy or removes an interrupted one.
                Err(
                    e @ RdsError::Transport(
                        TransportError::Timeout { .. } | TransportError::ConnectionLost(_),
                    ),
                ) if add.copy_from.is_some() => {
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
                Err(e @ (RdsError::Failed { .. } | RdsError::InvalidArgument(_)))
                    if !made_directory =>
                {
                    // Some RouterOS builds may not create a file's directory: make it and retry
                    // once; if the directory was there, the failure stands.
                    if !self.ensure_directory(&add.file_path, deadline).await? {
                        return Err(e);
                    }
                    made_directory = true;
                }
                Err(e) => return Err(e),
            }
        }
        self.get_disk(&add.slot, deadline)
            .await?
            .ok_or_else(|| RdsError::missing_after_add(&add.slot))
    }

    /// Creates the directories holding `file` that do not exist (below its mount point).
    /// Returns whether it created any.
    async fn ensure_directory(&self, file: &RdsPath, deadline: Instant) -> Result<bool, RdsError> {
        let components: Vec<&str> = file.as_str().split('/').skip(1).collect();
        let mut created = false;
        // Skip the mount point (the first component) and the file itself.
        for depth in 2..components.len() {
            let dir = RdsPath::new(format!("/{}", components[..depth].join("/")))?;
            let exists = self
                .get_file(&dir, deadline)
                .await?
                .is_some_and(|f| f.is_directory());
            if !exists {
                tracing::info!(directory = %dir, "creating a directory on the RDS");
                let made = self
                    .run(&Command::FileAddDirectory { path: dir.clone() }, deadline)
                    .await;
                if let Err(e) = made {
                    // Another create may have made it at the same moment.
                    let now_there = self
                        .get_file(&dir, deadline)
                        .await?
                        .is_some_and(|f| f.is_directory());
                    if !now_there {
                        return Err(e);
                    }
                }
                created = true;
            }
        }
        Ok(created)
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
        let gone = || RdsError::NotFound(format!("disk {slot} disappeared during resize"));
        let mut read_back = self.set_then_read(&command, slot, deadline).await?;
        // RouterOS may show the new size only a little later.
        let settle = deadline.min(Instant::now() + RESIZE_SETTLE);
        let mut pause = POLL_MIN;
        loop {
            let disk = match read_back.take() {
                Some(disk) => disk,
                None => self.get_disk(slot, deadline).await?.ok_or_else(gone)?,
            };
            match disk.size_bytes {
                Some(actual) if actual >= size.bytes() => return Ok(disk),
                other if Instant::now() + pause >= settle => {
                    return Err(RdsError::Busy(format!(
                        "disk {slot} still shows {other:?} bytes after resizing to {}",
                        size.bytes()
                    )))
                }
                _ => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// Exports a disk with these settings, or stops exporting it (`None`), and reads it back.
    pub async fn set_export(
        &self,
        slot: &Slot,
        export: Option<NvmeExport>,
        deadline: Instant,
    ) -> Result<Option<Disk>, RdsError> {
        let command = Command::DiskSetExport {
            slot: slot.clone(),
            export,
        };
        self.set_then_read(&command, slot, deadline).await
    }

    /// Exports a disk that only `host` may connect to (`None`: any host), in one command, and
    /// reads it back: exported as asked, with that fence.
    pub async fn export_fenced(
        &self,
        slot: &Slot,
        export: &NvmeExport,
        host: Option<&Nqn>,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let command = Command::DiskSetExportFenced {
            slot: slot.clone(),
            export: export.clone(),
            host: host.cloned(),
        };
        let disk = self
            .set_and_read_back(&command, slot, host, deadline)
            .await?;
        let exported = disk.nvme_export
            && disk.nvme_port == Some(export.port.get())
            && disk.nqn.as_deref() == Some(export.nqn.as_str());
        if !exported {
            return Err(RdsError::Parse(format!(
                "disk {slot} shows export {} on port {:?} as {:?} after exporting it on port {} \
                 as {}",
                disk.nvme_export,
                disk.nvme_port,
                disk.nqn,
                export.port.get(),
                export.nqn
            )));
        }
        Ok(disk)
    }

    /// Lets only `host` connect to the disk (`None`: any host), and reads it back: a property
    /// the RDS accepted but does not show is not a fence.
    pub async fn set_allowed_host(
        &self,
        slot: &Slot,
        host: Option<&Nqn>,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let command = Command::DiskSetAllowedHost {
            slot: slot.clone(),
            host: host.cloned(),
        };
        self.set_and_read_back(&command, slot, host, deadline).await
    }

    /// Runs a `/disk set` that leaves `host` allowed, and reads the disk back: it must show it.
    async fn set_and_read_back(
        &self,
        command: &Command,
        slot: &Slot,
        host: Option<&Nqn>,
        deadline: Instant,
    ) -> Result<Disk, RdsError> {
        let disk = self
            .set_then_read(command, slot, deadline)
            .await?
            .ok_or_else(|| RdsError::NotFound(format!("disk {slot}")))?;
        let want = host.map(Nqn::as_str);
        if disk.allowed_host.as_deref() != want {
            return Err(RdsError::Parse(format!(
                "disk {slot} shows nvme-tcp-server-allow-host-name {:?} after setting it to {:?}",
                disk.allowed_host.as_deref().unwrap_or(""),
                want.unwrap_or("")
            )));
        }
        Ok(disk)
    }

    /// Removes the disk entry (not its file), and reads it back: a remove of an empty `find`
    /// answers like success and does nothing, so only the disk's absence is success. A missing
    /// disk is not an error.
    pub async fn remove_disk(&self, slot: &Slot, deadline: Instant) -> Result<(), RdsError> {
        self.run_idempotent(&Command::DiskRemove { slot: slot.clone() }, deadline)
            .await?;
        match self.get_disk(slot, deadline).await? {
            None => Ok(()),
            Some(_) => Err(RdsError::Failed {
                exit_status: Some(0),
                text: format!("disk {slot} is still there after `/disk remove` answered success"),
            }),
        }
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
        Ok(files(&out)?
            .into_iter()
            .filter(|f| f.path.starts_with(&prefix))
            .collect())
    }

    /// The files under each of `dirs`, each listed once (one directory may lie in another).
    pub async fn list_files_in(
        &self,
        dirs: &[RdsPath],
        deadline: Instant,
    ) -> Result<Vec<FileInfo>, RdsError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for dir in dirs {
            for file in self.list_files(dir, deadline).await? {
                if seen.insert(file.path.clone()) {
                    out.push(file);
                }
            }
        }
        Ok(out)
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
        Ok(files(&out)?.into_iter().find(|f| f.path == path.as_str()))
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
        let disk = disks(&out)?
            .into_iter()
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

    /// Learns, read-only and cheaply, what this RDS does where RouterOS builds may differ: its
    /// clock's offset from UTC, whether it answers `print terse` (a listing of a slot that
    /// cannot exist), and whether it runs the driver's scripts. Run at start so the first real call does not pay for it; a failure is
    /// only logged, and the next call learns it instead.
    pub async fn learn(&self, deadline: Instant) {
        if let Err(e) = self.clock(deadline).await {
            tracing::warn!(error = %e, "could not read the RDS clock at start");
        }
        let probe = Slot::new("rds-csi-probe-no-such-slot").expect("a valid slot");
        if let Err(e) = self.get_disk(&probe, deadline).await {
            tracing::warn!(error = %e, "could not list a disk at start");
        }
        if let Err(e) = self.scripting(deadline).await {
            tracing::warn!(error = %e, "could not probe RDS scripting at start");
        }
    }

    /// The RDS's clock: its offset from UTC and its own time, read at most every few minutes.
    pub async fn clock(&self, deadline: Instant) -> Result<RdsClock, RdsError> {
        if let Some((read_at, clock)) = *self.clock.lock().unwrap_or_else(|p| p.into_inner()) {
            if read_at.elapsed() < CLOCK_TTL {
                return Ok(clock.advanced(read_at.elapsed()));
            }
        }
        let out = self.run_idempotent(&Command::Clock, deadline).await?;
        let clock = RdsClock::parse(&out).map_err(RdsError::Parse)?;
        self.keep_clock(clock);
        Ok(clock)
    }

    /// Keeps the clock as just read, for [`Self::clock`].
    pub(super) fn keep_clock(&self, clock: RdsClock) {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), clock));
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

/// The entries of a listing; an answer the driver cannot read is an error, never an empty list.
fn entries(out: &str) -> Result<Vec<Entry>, RdsError> {
    parse_detail(out).map_err(RdsError::Parse)
}

/// The disks of a `/disk print`, each checked for a misread path.
fn disks(out: &str) -> Result<Vec<Disk>, RdsError> {
    let disks: Vec<Disk> = entries(out)?.iter().filter_map(Disk::from_entry).collect();
    match disks.iter().find_map(Disk::inconsistency) {
        Some(problem) => Err(RdsError::Parse(problem)),
        None => Ok(disks),
    }
}

pub(super) fn files(out: &str) -> Result<Vec<FileInfo>, RdsError> {
    Ok(entries(out)?
        .iter()
        .filter_map(FileInfo::from_entry)
        .collect())
}

/// The disk in `slot` in a listing of it, if there is one.
pub(super) fn disk_in(out: &str, slot: &Slot) -> Result<Option<Disk>, RdsError> {
    let mut matching: Vec<Disk> = disks(out)?
        .into_iter()
        .filter(|d| d.slot == slot.as_str())
        .collect();
    if matching.len() > 1 {
        return Err(RdsError::Parse(format!(
            "more than one disk has slot {slot}"
        )));
    }
    Ok(matching.pop())
}

/// How a disk read back after `/disk add` differs from what was asked, if it does. A copy's size
/// is the caller's to check (it may take the source's); any other disk must have at least the
/// size asked.
pub fn disk_mismatch(add: &DiskAdd, disk: &Disk) -> Option<String> {
    if disk.slot != add.slot.as_str() {
        return Some(format!("slot {} instead of {}", disk.slot, add.slot));
    }
    if disk.file_path.as_deref() != Some(add.file_path.as_str()) {
        return Some(format!(
            "file-path {} instead of {}",
            disk.file_path.as_deref().unwrap_or("-"),
            add.file_path
        ));
    }
    match (&add.export, disk.nvme_export) {
        (None, true) => return Some("exported, though asked not to be".into()),
        (Some(_), false) => return Some("not exported".into()),
        (Some(e), true)
            if disk.nvme_port != Some(e.port.get())
                || disk.nqn.as_deref() != Some(e.nqn.as_str()) =>
        {
            return Some(format!(
                "exported on port {:?} as {:?} instead of {} as {}",
                disk.nvme_port,
                disk.nqn,
                e.port.get(),
                e.nqn
            ))
        }
        _ => {}
    }
    match (add.size, disk.size_bytes) {
        (Some(want), Some(have)) if add.copy_from.is_none() && have < want.bytes() => {
            Some(format!("{have} bytes instead of {}", want.bytes()))
        }
        (Some(_), None) => Some("no readable size".into()),
        _ => None,
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
