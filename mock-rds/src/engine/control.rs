//! The `/mock` menu: test control over SSH (orphans, faults, history, reset, profiles). These
//! commands are never faulted and never changed by a profile, so a person at a shell can always
//! undo what they set.

use std::time::{Duration, UNIX_EPOCH};

use super::{lock, no_args, no_named, no_positional, opt_bool, opt_size, Engine};
use crate::background::CopyShort;
use crate::command::{failure, CliError, Invocation, Value};
use crate::fault::{self, Fault};
use crate::format;
use crate::profile::Profile;

/// What `/mock` and `/mock help` print.
pub(super) const MOCK_HELP: &str = "\
/mock: test control (never faulted, never changed by a profile)
  orphan-file path=P [size=S]                 a file with no disk
  orphan-disk slot=X file-path=P [size=S]     an exported disk with no file
  fault fail|hang|drop [pattern=RE] [times=N] fail, never answer, or cut the connection
  fault latency [pattern=RE] min=DUR [max=DUR]
  fault refuse-connections [enabled=no] [for=DUR]
  fault stall-handshake [enabled=no] [for=DUR] (SIGHUP to mock-rds clears every fault)
  fault target-down [enabled=no] [for=DUR]    with --nvmet
  fault print | fault clear
  history [count=N]                           the last commands and how they ended
  profile [set=NAMES] | profile print         the RouterOS behaviour variants
  copy-short by=S [resume=DUR]                the next copy stops short
  target print                                with --nvmet: what the kernel target serves
  state                                       disks, files, faults, profile and history at a glance
  reset                                       forget disks, files, faults and history
  drop-connections                            cut every connection
  help                                        this list
";

impl Engine {
    pub(super) fn mock(&self, cmd: &str, inv: &Invocation) -> Result<String, CliError> {
        match cmd {
            "help" => {
                no_args(inv)?;
                Ok(self.mode().lines(MOCK_HELP))
            }
            "orphan-file" => {
                inv.only_args(&["path", "size"])?;
                no_positional(inv)?;
                let path = inv
                    .text("path")
                    .ok_or_else(|| failure("path not specified"))?;
                let size = opt_size(inv, "size")?.unwrap_or(0);
                self.add_orphan_file(path, size)?;
                Ok(String::new())
            }
            "orphan-disk" => {
                inv.only_args(&["slot", "file-path", "size"])?;
                no_positional(inv)?;
                let slot = inv
                    .text("slot")
                    .ok_or_else(|| failure("slot not specified"))?;
                let fp = inv
                    .text("file-path")
                    .ok_or_else(|| failure("file-path not specified"))?;
                let size = opt_size(inv, "size")?.unwrap_or(1 << 30);
                self.add_orphan_disk(slot, fp, size)?;
                Ok(String::new())
            }
            "reset" => {
                no_args(inv)?;
                self.reset();
                Ok(String::new())
            }
            "history" => {
                inv.only_args(&["count"])?;
                no_positional(inv)?;
                let count = match inv.text("count") {
                    None => usize::MAX,
                    Some(c) => c.parse().map_err(|_| CliError::InvalidValue {
                        arg: "count".into(),
                    })?,
                };
                let hist = self.history();
                let skip = hist.len().saturating_sub(count);
                let mut text = String::new();
                for h in &hist[skip..] {
                    let secs = h.time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    let exit = h.exit_status.map_or("-".to_string(), |e| e.to_string());
                    text.push_str(&format!(
                        "{} exit={exit} {:?} {}\n",
                        format::timestamp(secs),
                        h.disposition,
                        h.command
                    ));
                }
                Ok(self.mode().lines(&text))
            }
            "fault" => self.mock_fault(inv),
            "state" => {
                print_or_nothing(inv)?;
                Ok(self.mode().lines(&self.state_summary()))
            }
            "copy-short" => {
                // `/mock copy-short by=40M [resume=2s]`: the next copy stops short.
                inv.only_args(&["by", "resume"])?;
                no_positional(inv)?;
                let by = opt_size(inv, "by")?.ok_or_else(|| failure("by not specified"))?;
                let resume =
                    match inv.text("resume") {
                        None => None,
                        Some(v) => Some(fault::parse_duration(v).ok_or_else(|| {
                            CliError::InvalidValue {
                                arg: "resume".into(),
                            }
                        })?),
                    };
                self.arm_copy_short(CopyShort { by, resume });
                Ok(String::new())
            }
            "target" => {
                // `/mock target print`: what the kernel target serves.
                print_or_nothing(inv)?;
                let t = self.target().ok_or_else(no_target)?;
                let text: String = t.describe().iter().map(|l| format!("{l}\n")).collect();
                Ok(self.mode().lines(&text))
            }
            "profile" => {
                inv.only_args(&["set"])?;
                match (inv.text("set"), inv.positional.as_slice()) {
                    (Some(spec), []) => {
                        let profile = Profile::parse(spec).map_err(failure)?;
                        self.set_profile(profile);
                    }
                    (None, []) => {}
                    (None, [p]) if p.word && matches!(&p.value, Value::Text(w) if w == "print") => {
                    }
                    (_, [p, ..]) => return Err(CliError::ExpectedEnd { col: p.col }),
                }
                Ok(self.mode().lines(&format!("profile: {}", self.profile())))
            }
            _ => Err(CliError::BadCommand {
                name: cmd.to_string(),
                col: 7,
            }),
        }
    }

    fn mock_fault(&self, inv: &Invocation) -> Result<String, CliError> {
        let kind = match inv.positional.as_slice() {
            [p] => match &p.value {
                Value::Text(k) => k.as_str(),
                Value::Find(_) => return Err(CliError::Syntax { col: p.col }),
            },
            [] => return Err(failure("fault kind not specified")),
            [_, extra, ..] => return Err(CliError::ExpectedEnd { col: extra.col }),
        };
        let pattern = inv.text("pattern").unwrap_or("").to_string();
        let times = match inv.text("times") {
            None => None,
            Some(t) => Some(t.parse::<u32>().map_err(|_| CliError::InvalidValue {
                arg: "times".into(),
            })?),
        };
        let enabled = opt_bool(inv, "enabled")?.unwrap_or(true);
        let fault = match kind {
            "fail" => {
                inv.only_args(&["pattern", "times", "message", "exit-status"])?;
                let exit_status = match inv.text("exit-status") {
                    None => self.cfg.error_exit_status,
                    Some(e) => e.parse().map_err(|_| CliError::InvalidValue {
                        arg: "exit-status".into(),
                    })?,
                };
                Fault::Fail {
                    pattern,
                    times,
                    message: inv
                        .text("message")
                        .unwrap_or("failure: execution error")
                        .to_string(),
                    exit_status,
                }
            }
            "hang" => {
                inv.only_args(&["pattern", "times"])?;
                Fault::Hang { pattern, times }
            }
            "drop" => {
                inv.only_args(&["pattern", "times"])?;
                Fault::DropAfterRun { pattern, times }
            }
            "latency" => {
                inv.only_args(&["pattern", "min", "max"])?;
                let dur = |name: &str| -> Result<Duration, CliError> {
                    inv.text(name)
                        .map(|v| {
                            fault::parse_duration(v)
                                .ok_or_else(|| CliError::InvalidValue { arg: name.into() })
                        })
                        .unwrap_or(Ok(Duration::ZERO))
                };
                let min = dur("min")?;
                let max = if inv.arg("max").is_some() {
                    dur("max")?
                } else {
                    min
                };
                Fault::Latency { pattern, min, max }
            }
            "refuse-connections" => {
                inv.only_args(&["enabled", "for"])?;
                match inv.text("for") {
                    Some(d) if enabled => Fault::RefuseConnectionsFor(
                        fault::parse_duration(d)
                            .ok_or_else(|| CliError::InvalidValue { arg: "for".into() })?,
                    ),
                    _ => Fault::RefuseConnections(enabled),
                }
            }
            "target-down" => {
                inv.only_args(&["enabled", "for"])?;
                let t = self.target().ok_or_else(no_target)?;
                let for_ = match inv.text("for") {
                    None => None,
                    Some(d) => Some(
                        fault::parse_duration(d)
                            .ok_or_else(|| CliError::InvalidValue { arg: "for".into() })?,
                    ),
                };
                // Under the state lock, so no disk change reconciles the target meanwhile.
                let _st = lock(&self.state);
                t.set_down(enabled, for_)
                    .map_err(|e| failure(format!("kernel target: {e}")))?;
                return Ok(String::new());
            }
            "stall-handshake" => {
                inv.only_args(&["enabled", "for"])?;
                match inv.text("for") {
                    Some(d) if enabled => Fault::StallHandshakeFor(
                        fault::parse_duration(d)
                            .ok_or_else(|| CliError::InvalidValue { arg: "for".into() })?,
                    ),
                    _ => Fault::StallHandshake(enabled),
                }
            }
            "clear" => {
                no_named(inv)?;
                self.clear_faults();
                return Ok(String::new());
            }
            "print" => {
                no_named(inv)?;
                let mut text: String = lock(&self.faults)
                    .describe()
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect();
                if text.is_empty() {
                    text = "no faults set\n".into();
                }
                return Ok(self.mode().lines(&text));
            }
            _ => {
                return Err(CliError::NoMatch {
                    arg: "fault".into(),
                })
            }
        };
        self.add_fault(fault)
            .map_err(|e| failure(format!("bad pattern: {e}")))?;
        Ok(String::new())
    }
}

impl Engine {
    /// `/mock state`: everything a developer asks the mock about, in one read, with the
    /// fields RouterOS would not print (sizes in bytes, copy sources).
    fn state_summary(&self) -> String {
        let mut text = format!("profile: {}\n", self.profile());
        {
            let st = lock(&self.state);
            text.push_str(&format!("disks: {}\n", st.disks.len()));
            for d in &st.disks {
                text.push_str(&format!(
                    "  slot={} file-path={} size={}{}{}{}\n",
                    d.slot,
                    d.file_path,
                    d.file_size,
                    if d.nvme_tcp_export {
                        format!(
                            " export=yes nqn={}",
                            d.nvme_tcp_server_nqn.as_deref().unwrap_or("-")
                        )
                    } else {
                        String::new()
                    },
                    if d.nvme_tcp_server_allow_host_name.is_empty() {
                        String::new()
                    } else {
                        format!(" allow-host={}", d.nvme_tcp_server_allow_host_name)
                    },
                    d.copied_from
                        .as_deref()
                        .map_or(String::new(), |s| format!(" copied-from={s}")),
                ));
            }
            text.push_str(&format!("files: {}\n", st.files.len()));
            for f in &st.files {
                text.push_str(&format!("  {} {:?} size={}\n", f.path, f.kind, f.size));
            }
        }
        let faults = lock(&self.faults).describe();
        if faults.is_empty() {
            text.push_str("faults: none\n");
        } else {
            text.push_str(&format!("faults: {}\n", faults.len()));
            for f in faults {
                text.push_str(&format!("  {f}\n"));
            }
        }
        text.push_str(&format!("history: {} commands\n", self.history().len()));
        text
    }
}

/// `/mock X` or `/mock X print`, and nothing else.
fn print_or_nothing(inv: &Invocation) -> Result<(), CliError> {
    match inv.positional.as_slice() {
        [p] if p.word && matches!(&p.value, Value::Text(w) if w == "print") => {}
        [] => {}
        [p, ..] => return Err(CliError::ExpectedEnd { col: p.col }),
    }
    no_named(inv)
}

fn no_target() -> CliError {
    failure("no kernel target: mock-rds was started without --nvmet")
}
