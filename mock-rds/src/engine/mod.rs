//! Runs one parsed command against the state and produces the text and exit status RouterOS
//! would. Transport-agnostic: the SSH server, the Rust handle and unit tests all call
//! [`Engine::execute`].

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;

use crate::background::{Background, CopyShort};
use crate::command::{self, failure, parse_size, CliError, Cond, Invocation, Op, Value};
use crate::fault::{Action, Disposition, Fault, Faults, History, HistoryEntry};
use crate::format::{self, Entry, Layout, OutputMode, PVal, Prop, DISK_FLAG_SLOTS};
use crate::nvmet::{Export, Target};
use crate::profile::{Profile, Variant};
use crate::state::{self, DataDir, Disk, FileEntry, FileKind, State};

mod control;
mod disks;
mod files;
mod print;
mod script;
mod system;

use print::{file_entry, FILE_KEYS};

/// Settings the engine needs; built from [`crate::Config`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub output: OutputMode,
    pub mount_point: String,
    pub pool_size: u64,
    pub state_file: Option<PathBuf>,
    pub data_dir: Option<DataDir>,
    pub identity: String,
    pub error_exit_status: u32,
    pub fixed_time: Option<u64>,
    pub latency_seed: u64,
    pub history_depth: usize,
    /// The behaviour variants in force at start; `/mock profile` changes them at run time.
    pub profile: Profile,
}

/// Side effects the transport must carry out after replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    DropConnections,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub output: String,
    pub exit_status: u32,
    /// Close the channel without sending the exit status (the `exit-none` variant).
    pub omit_exit_status: bool,
    /// RouterOS refused the command: nothing changed.
    pub refused: bool,
    pub effect: Effect,
    /// How the exec ends: a fault on a command inside a script may hang it or drop the
    /// connection.
    pub ending: Ending,
}

/// How an exec ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Answer,
    /// Never answered ([`Fault::Hang`] on a command in a script).
    Hang,
    /// The connection dropped instead of answering ([`Fault::DropAfterRun`] on a command in
    /// a script, which then ran to its end).
    Drop,
}

pub struct Engine {
    pub cfg: EngineConfig,
    state: Mutex<State>,
    faults: Mutex<Faults>,
    history: Mutex<History>,
    started: Instant,
    profile: Mutex<Profile>,
    /// Copies and resizes still finishing; lock after `state`, never before.
    background: Mutex<Background>,
    /// The kernel NVMe/TCP target serving the exported disks (`--nvmet`); locked after `state`.
    target: Option<Target>,
}

/// Locks a mutex, recovering from poisoning: a panic elsewhere must not wedge the mock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The NQN RouterOS-side tooling uses by default for a slot.
pub fn default_nqn(slot: &str) -> String {
    format!("nqn.2000-02.com.mikrotik:{}", slot.to_lowercase())
}

impl Engine {
    pub fn new(cfg: EngineConfig, state: State) -> Engine {
        Engine {
            faults: Mutex::new(Faults::new(cfg.latency_seed)),
            history: Mutex::new(History {
                entries: Default::default(),
                depth: cfg.history_depth.max(1),
            }),
            profile: Mutex::new(cfg.profile.clone()),
            background: Mutex::new(Background::default()),
            cfg,
            state: Mutex::new(state),
            started: Instant::now(),
            target: None,
        }
    }

    /// Serves the exported disks through `target` from now on, starting with the state as it is.
    pub fn with_target(mut self, target: Target) -> Engine {
        self.target = Some(target);
        let st = lock(&self.state).clone();
        self.sync_target(&st);
        self
    }

    pub fn target(&self) -> Option<&Target> {
        self.target.as_ref()
    }

    /// The disks the kernel target must serve: exported, with an NQN, a port and a file.
    fn exports(&self, st: &State) -> Vec<Export> {
        let Some(dd) = &self.cfg.data_dir else {
            return Vec::new();
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for d in st.disks.iter().filter(|d| d.nvme_tcp_export) {
            let (Some(nqn), Some(port)) = (&d.nvme_tcp_server_nqn, d.nvme_tcp_server_port) else {
                continue;
            };
            if !seen.insert(nqn.clone()) {
                tracing::warn!(%nqn, slot = %d.slot, "two disks export one NQN; serving the first");
                continue;
            }
            out.push(Export {
                nqn: nqn.clone(),
                port,
                device: dd.host_path(&d.file_path),
                hosts: d
                    .nvme_tcp_server_allow_host_name
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect(),
            });
        }
        out
    }

    fn sync_target(&self, st: &State) {
        if let Some(t) = &self.target {
            // Errors are logged by the target; the command that changed the disk has succeeded.
            let _ = t.reconcile(&self.exports(st));
        }
    }

    /// Removes whatever the kernel target serves for the mock (at shutdown).
    pub fn teardown_target(&self) {
        if let Some(t) = &self.target {
            let _st = lock(&self.state);
            t.teardown();
        }
    }

    pub fn now(&self) -> u64 {
        self.cfg.fixed_time.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }

    fn mode(&self) -> OutputMode {
        self.cfg.output
    }

    pub fn profile(&self) -> Profile {
        lock(&self.profile).clone()
    }

    pub fn set_profile(&self, profile: Profile) {
        tracing::info!(%profile, "profile changed");
        *lock(&self.profile) = profile;
    }

    fn has(&self, v: Variant) -> bool {
        lock(&self.profile).has(v)
    }

    /// A failure as the profile prints it: its text, exit status or none.
    fn error(&self, e: CliError) -> Reply {
        let p = self.profile();
        Reply {
            output: self.mode().lines(&error_text(&e, &p)),
            exit_status: if p.has(Variant::ExitZero) {
                0
            } else {
                self.cfg.error_exit_status
            },
            omit_exit_status: p.has(Variant::ExitNone),
            refused: true,
            effect: Effect::None,
            ending: Ending::Answer,
        }
    }

    /// A `/mock` failure: always the plain text and status, whatever the profile.
    fn control_error(&self, e: CliError) -> Reply {
        Reply {
            output: self.mode().lines(&e.to_string()),
            exit_status: self.cfg.error_exit_status,
            omit_exit_status: false,
            refused: true,
            effect: Effect::None,
            ending: Ending::Answer,
        }
    }

    fn ok(output: String) -> Reply {
        Reply {
            output,
            exit_status: 0,
            omit_exit_status: false,
            refused: false,
            effect: Effect::None,
            ending: Ending::Answer,
        }
    }

    fn layout(&self, terse: bool) -> Layout {
        let p = self.profile();
        Layout {
            mode: self.mode(),
            cut_at_hyphen: p.has(Variant::WrapHyphen),
            trailing_space: p.has(Variant::WrapTrailingSpace),
            flow: p.has(Variant::WrapDigitGroups),
            terse,
        }
    }

    /// The RDS's local time for a Unix time, as the profile's clock shows it.
    fn local(&self, unix: u64) -> u64 {
        let (offset, _) = self.profile().clock();
        unix.saturating_add_signed(offset)
    }

    /// Lets time finish what asynchronous copies and delayed resizes were doing.
    fn settle(&self, st: &mut State) {
        if lock(&self.background).settle(st, self.now()) {
            self.persist(st);
        }
    }

    /// The connection `conn` closed: copies it started stop where they are.
    pub fn connection_closed(&self, conn: u64) {
        let mut st = lock(&self.state);
        self.settle(&mut st);
        if lock(&self.background).connection_closed(conn, &mut st, self.cfg.data_dir.as_ref()) {
            self.persist(&st);
        }
    }

    // ---- control API ----

    pub fn state(&self) -> State {
        let mut st = lock(&self.state);
        self.settle(&mut st);
        st.clone()
    }

    pub fn add_fault(&self, f: Fault) -> Result<(), regex::Error> {
        lock(&self.faults).add(f)
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn refuse_connections(&self) -> bool {
        lock(&self.faults).refusing()
    }

    pub fn stall_handshake(&self) -> bool {
        lock(&self.faults).stalling()
    }

    /// Decides how to treat `line`. `/mock` commands are never faulted, so a person at a shell
    /// can always undo a fault.
    pub fn decide(&self, line: &str) -> (Action, Duration) {
        if is_mock_command(line) {
            return (Action::Run, Duration::ZERO);
        }
        let mut faults = lock(&self.faults);
        if !command::is_sequence(line) {
            return faults.decide(line);
        }
        // A script takes as long as the commands in it; faults hit each command as it runs.
        let delay = command::script_leaves(line)
            .iter()
            .map(|leaf| faults.latency_of(leaf))
            .sum();
        (Action::Run, delay)
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        lock(&self.history).entries.iter().cloned().collect()
    }

    pub fn clear_history(&self) {
        lock(&self.history).entries.clear();
    }

    pub fn record(
        &self,
        command: &str,
        exit_status: Option<u32>,
        output: &str,
        disposition: Disposition,
    ) {
        let first_line = output.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        tracing::info!(
            command,
            exit_status = exit_status.map_or("none".to_string(), |s| s.to_string()),
            ?disposition,
            reply_lines = output.lines().count(),
            reply = first_line.trim(),
            "command"
        );
        lock(&self.history).push(HistoryEntry {
            time: SystemTime::now(),
            command: command.to_string(),
            exit_status,
            output: output.to_string(),
            disposition,
        });
    }

    /// Empties the state (and removes the backing files the mock made) and clears faults and
    /// history.
    pub fn reset(&self) {
        let mut st = lock(&self.state);
        if let Some(dd) = &self.cfg.data_dir {
            for f in st.files.iter().filter(|f| f.kind == FileKind::File) {
                if let Err(e) = dd.remove(&f.path) {
                    tracing::warn!(path = %f.path, error = %e, "could not remove backing file");
                }
            }
        }
        *st = State::default();
        lock(&self.background).clear();
        self.persist(&st);
        drop(st);
        self.clear_faults();
        self.clear_history();
    }

    /// Makes the next `copy-from` stop short (see [`CopyShort`]).
    pub fn arm_copy_short(&self, short: CopyShort) {
        lock(&self.background).arm_short(short);
    }

    pub fn add_orphan_file(&self, path: &str, size: u64) -> Result<(), CliError> {
        let path = absolute(path);
        if !state::valid_path(&path) {
            return Err(failure("invalid file-path"));
        }
        let mut st = lock(&self.state);
        if let Some(dd) = &self.cfg.data_dir {
            dd.create(&path, size)
                .map_err(|e| failure(format!("could not create file: {e}")))?;
        }
        let now = self.now();
        st.put_file(&path, size, now);
        self.persist(&st);
        Ok(())
    }

    pub fn add_orphan_disk(&self, slot: &str, file_path: &str, size: u64) -> Result<(), CliError> {
        let file_path = absolute(file_path);
        if !state::valid_path(&file_path) {
            return Err(failure("invalid file-path"));
        }
        let mut st = lock(&self.state);
        if st.disk(slot).is_some() || slot == self.cfg.mount_point {
            return Err(failure("disk with such slot already exists"));
        }
        let id = st.take_id();
        st.disks.push(Disk {
            slot: slot.to_string(),
            file_path,
            file_size: size,
            nvme_tcp_export: true,
            nvme_tcp_server_port: Some(4420),
            nvme_tcp_server_nqn: Some(default_nqn(slot)),
            nvme_tcp_server_allow_host_name: String::new(),
            copied_from: None,
            id,
        });
        self.persist(&st);
        Ok(())
    }

    /// Removes a `/file` entry (and its backing file) without touching disks.
    pub fn remove_file(&self, path: &str) {
        let path = absolute(path);
        let mut st = lock(&self.state);
        for f in st.remove_file(&path) {
            if let Some(dd) = &self.cfg.data_dir {
                if let Err(e) = dd.remove(&f.path) {
                    tracing::warn!(path = %f.path, error = %e, "could not remove backing file");
                }
            }
        }
        self.persist(&st);
    }

    fn persist(&self, st: &State) {
        if let Some(p) = &self.cfg.state_file {
            if let Err(e) = state::save(p, st) {
                tracing::error!(path = %p.display(), error = %e, "could not save state");
            }
        }
        self.sync_target(st);
    }

    // ---- commands ----

    /// Runs one command line. Never panics on client input.
    pub fn execute(&self, line: &str) -> Reply {
        self.execute_on(line, None)
    }

    /// Runs one command line that arrived on connection `conn` (an asynchronous copy stops when
    /// its connection closes).
    pub fn execute_on(&self, line: &str, conn: Option<u64>) -> Reply {
        let line = line.trim();
        if command::is_sequence(line) && !is_mock_command(line) {
            let mut st = lock(&self.state);
            self.settle(&mut st);
            drop(st);
            return self.script(line, conn);
        }
        match self.dispatch(line, conn) {
            Ok((output, effect)) => Reply {
                effect,
                ..Self::ok(output)
            },
            Err(e) if is_mock_command(line) => self.control_error(e),
            Err(e) => self.error(e),
        }
    }

    fn dispatch(&self, line: &str, conn: Option<u64>) -> Result<(String, Effect), CliError> {
        let inv = command::parse(line)?;
        if inv.path == ["mock", "drop-connections"] {
            no_args(&inv)?;
            return Ok((String::new(), Effect::DropConnections));
        }
        if !is_mock_command(line) {
            let mut st = lock(&self.state);
            self.settle(&mut st);
        }
        let path: Vec<&str> = inv.path.iter().map(String::as_str).collect();
        let res = match path.as_slice() {
            // Not RouterOS's: a person exploring the mock sees what it offers.
            ["mock"] if inv.positional.is_empty() && inv.args.is_empty() => {
                Ok(self.mode().lines(control::MOCK_HELP))
            }
            [] | ["disk"] | ["file"] | ["system"] | ["system", _] | ["mock"] => {
                // A bare menu only changes the CLI context in RouterOS: no output.
                if let Some(p) = inv.positional.first() {
                    Err(CliError::ExpectedEnd { col: p.col })
                } else if let Some(a) = inv.args.first() {
                    Err(CliError::ExpectedEnd { col: a.col })
                } else {
                    Ok(String::new())
                }
            }
            ["disk", "print"] => self.disk_print(&inv),
            ["disk", "add"] => self.disk_add(&inv, conn),
            ["disk", "set"] => self.disk_set(&inv),
            ["disk", "remove"] => self.disk_remove(&inv),
            ["disk", "monitor-traffic"] => self.monitor_traffic(&inv),
            ["file", "print"] => self.file_print(&inv),
            ["file", "remove"] => self.file_remove(&inv),
            ["file", "add"] => self.file_add(&inv),
            ["system", "identity", "print"] => self.identity(&inv),
            ["system", "resource", "print"] => self.resource(&inv),
            ["system", "clock", "print"] => self.clock(&inv),
            ["mock", cmd] => self.mock(cmd, &inv),
            _ => Err(CliError::BadCommand {
                name: inv.path.last().cloned().unwrap_or_default(),
                col: 1,
            }),
        };
        res.map(|out| (out, Effect::None))
    }
}

/// The text of a failure as the profile words it.
fn error_text(e: &CliError, p: &Profile) -> String {
    let plain = e.to_string();
    let bare = plain.strip_prefix("failure: ").unwrap_or(&plain);
    if p.has(Variant::ErrorsUnknown) {
        return format!("command rejected: {bare}");
    }
    if p.has(Variant::ErrorsBare) {
        return match e {
            CliError::InvalidValue { .. } | CliError::NoMatch { .. } => "invalid parameter".into(),
            CliError::Failure(t) if t == "file is already used by another disk" => {
                "file already exists".into()
            }
            _ => bare.to_string(),
        };
    }
    plain
}

/// Whether a line is a `/mock` command (these bypass faults).
pub fn is_mock_command(line: &str) -> bool {
    let l = line.trim_start().trim_start_matches('/');
    l == "mock" || l.starts_with("mock ") || l.starts_with("mock/")
}

fn absolute(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

fn no_named(inv: &Invocation) -> Result<(), CliError> {
    match inv.args.first() {
        Some(a) => Err(CliError::ExpectedEnd { col: a.col }),
        None => Ok(()),
    }
}

fn no_positional(inv: &Invocation) -> Result<(), CliError> {
    match inv.positional.first() {
        Some(p) => Err(CliError::ExpectedEnd { col: p.col }),
        None => Ok(()),
    }
}

fn no_args(inv: &Invocation) -> Result<(), CliError> {
    no_named(inv)?;
    no_positional(inv)
}

fn opt_size(inv: &Invocation, name: &str) -> Result<Option<u64>, CliError> {
    match inv.arg(name).map(|a| &a.value) {
        None => Ok(None),
        Some(Value::Text(t)) => match parse_size(t) {
            Some(n) if n > 0 || name == "size" => Ok(Some(n)),
            _ => Err(CliError::InvalidValue { arg: name.into() }),
        },
        Some(Value::Find(_)) => Err(CliError::InvalidValue { arg: name.into() }),
    }
}

fn opt_bool(inv: &Invocation, name: &str) -> Result<Option<bool>, CliError> {
    match inv.arg(name).map(|a| &a.value) {
        None => Ok(None),
        Some(Value::Text(t)) if t == "yes" || t == "true" => Ok(Some(true)),
        Some(Value::Text(t)) if t == "no" || t == "false" => Ok(Some(false)),
        Some(_) => Err(CliError::NoMatch { arg: name.into() }),
    }
}

#[cfg(test)]
mod tests;
