//! RouterOS scripts that do in one exec what a sequence of commands does: check, change and
//! read back. Whether real RouterOS runs them over SSH exec, and prints what they `:put` and
//! `print`, is not known; `RdsClient::scripting` probes it once per connection and the driver
//! falls back to the sequences when the answer is anything but the expected one.
//!
//! Each script announces every part of its output with a marker line (`rds-csi:<part>`), and
//! puts the mutation first, so its output (which must be nothing) is what precedes the first
//! marker. A part that should be empty and is not, a marker missing, added or out of order is
//! output the driver does not understand: after a mutation, a failure.

use tokio::time::Instant;

use super::client::{disk_in, files, Probe, RdsClient};
use super::command::{quote, DiskAdd, DiskFilter, FileFilter, RdsPath, Slot};
use super::error::{classify, ExecOutput, RdsError};
use super::parse::{parse_exact_count, parse_key_colon_value};
use super::{Command, Disk, FileInfo, RdsClock};

const MARK: &str = "rds-csi:";
/// The slot the probe counts: no driver makes it.
const PROBE_SLOT: &str = "rds-csi-probe-no-such-slot";

/// One script, ready to send: built only here, from validated values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    kind: &'static str,
    line: String,
    mutating: bool,
    /// It adds a disk with `copy-from`, which runs as long as the data takes.
    copy: bool,
}

impl Script {
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn line(&self) -> &str {
        &self.line
    }

    pub fn is_mutating(&self) -> bool {
        self.mutating
    }

    pub fn is_copy(&self) -> bool {
        self.copy
    }

    /// Read-only: a marker, an `:if` over a `find` count taking its `do` branch, and a `print`
    /// after them, each of which must show.
    pub fn probe() -> Script {
        Script {
            kind: "script-probe",
            line: format!(
                "{}; :if ([:len [/disk find slot={}]] = 0) do={{{}}} else={{{}}}; {}; \
                 /system identity print",
                put("probe"),
                quote(PROBE_SLOT),
                put("none"),
                put("some"),
                put("identity")
            ),
            mutating: false,
            copy: false,
        }
    }

    /// Read-only: the disks in `slots`, each after a `disk` marker.
    pub fn read_disks(slots: &[&Slot]) -> Script {
        let line = slots
            .iter()
            .map(|slot| {
                format!(
                    "{}; {}",
                    put("disk"),
                    Command::DiskPrint(DiskFilter::Slot((*slot).clone())).render()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Script {
            kind: "script-read",
            line,
            mutating: false,
            copy: false,
        }
    }

    /// A new disk: added only if no file is at its path (a leftover is never reused), then
    /// read back. A copy (CreateSnapshot) is also read back with its file, the file's exact
    /// size and the RDS clock, all a snapshot needs to be answered.
    pub fn create(add: &DiskAdd) -> Script {
        let add_line = Command::DiskAdd(add.clone()).render();
        let mut line = format!(
            ":if ([:len [/file find name={}]] = 0) do={{{add_line}}} else={{{}}}; {}; {}",
            quote(add.file_path.file_name()),
            put("file-exists"),
            put("disk"),
            Command::DiskPrint(DiskFilter::Slot(add.slot.clone())).render()
        );
        if add.copy_from.is_some() {
            let path = add.file_path.clone();
            line.push_str(&format!(
                "; {}; {}; {}; {}; {}; {}",
                put("file"),
                Command::FilePrint(FileFilter::Name(path.clone())).render(),
                put("size"),
                Command::FileExactSize { path }.render(),
                put("clock"),
                Command::Clock.render()
            ));
        }
        Script {
            kind: "script-create",
            line,
            mutating: true,
            copy: add.copy_from.is_some(),
        }
    }

    /// DeleteVolume's disk and file (the caller has read the disk and found it its own): the
    /// disk removed and read back, its file removed only once no disk holds the slot, and read
    /// back.
    pub fn remove(slot: &Slot, file: &RdsPath) -> Script {
        Script {
            kind: "script-remove",
            line: format!(
                "{}; {}; {}; {}; :if ([:len [/disk find slot={}]] = 0) do={{{}}}; {}; {}",
                Command::DiskRemove { slot: slot.clone() }.render(),
                put("disk"),
                Command::DiskPrint(DiskFilter::Slot(slot.clone())).render(),
                put("file-removal"),
                quote(slot.as_str()),
                Command::FileRemove { path: file.clone() }.render(),
                put("file"),
                Command::FilePrint(FileFilter::Name(file.clone())).render()
            ),
            mutating: true,
            copy: false,
        }
    }
}

impl Script {
    /// A `/disk set` (expansion, export, fence) and the disk read back.
    pub fn set(set: &Command, slot: &Slot) -> Script {
        debug_assert!(set.render().starts_with("/disk set "), "{set:?}");
        Script {
            kind: "script-set",
            line: format!(
                "{}; {}; {}",
                set.render(),
                put("disk"),
                Command::DiskPrint(DiskFilter::Slot(slot.clone())).render()
            ),
            mutating: true,
            copy: false,
        }
    }
}

fn put(part: &str) -> String {
    format!(":put {}", quote(&format!("{MARK}{part}")))
}

/// A script's output split at its markers.
#[derive(Debug, PartialEq, Eq)]
pub struct Parts<'a> {
    /// What precedes the first marker: the output of the script's first command.
    pub lead: String,
    /// Each marker's name and the text after it, in order.
    pub parts: Vec<(&'a str, String)>,
}

impl<'a> Parts<'a> {
    pub fn split(out: &'a str) -> Parts<'a> {
        let mut lead = String::new();
        let mut parts: Vec<(&str, String)> = Vec::new();
        for line in out.lines() {
            match line.trim().strip_prefix(MARK) {
                Some(name) if !name.is_empty() => parts.push((name, String::new())),
                _ => {
                    let text = match parts.last_mut() {
                        Some((_, text)) => text,
                        None => &mut lead,
                    };
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        Parts { lead, parts }
    }

    /// The parts' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.parts.iter().map(|(n, _)| *n).collect()
    }

    /// The text of part `name`.
    pub fn text(&self, name: &str) -> &str {
        self.parts
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, t)| t.as_str())
    }

    /// Fails when the output of a mutation (`text`) is not empty: RouterOS prints nothing when
    /// a change succeeds, so anything is its failure, classified by its text.
    pub fn nothing_from(what: &str, text: &str) -> Result<(), RdsError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        match classify(
            ExecOutput {
                stdout: text.to_string(),
                stderr: String::new(),
                exit_status: Some(0),
            },
            true,
        ) {
            Err(e) => Err(e),
            Ok(_) => Err(RdsError::Parse(format!("{what} printed {text:?}"))),
        }
    }

    /// Fails unless the markers are exactly `expected` (one of them).
    pub fn expect(&self, script: &str, expected: &[&[&str]]) -> Result<(), RdsError> {
        let names = self.names();
        if expected.contains(&names.as_slice()) {
            return Ok(());
        }
        Err(RdsError::Parse(format!(
            "the {script} script printed the parts {names:?}, not one of {expected:?}"
        )))
    }
}

/// What the create script found and did.
#[derive(Debug)]
pub enum Created {
    /// The disk was added; as read back (None: not there).
    Made(Option<Disk>),
    /// A file was at the path, so nothing was added; the disk in the slot, if any.
    FileExists(Option<Disk>),
}

/// What the create script of a copy read after the add.
#[derive(Debug, Default)]
pub struct CopyTail {
    pub file: Option<FileInfo>,
    /// The file's exact size; None where the RDS shows only a rounded one.
    pub exact: Option<u64>,
    pub clock: Option<RdsClock>,
}

impl Created {
    /// Reads the create script's output for the disk in `slot`.
    pub fn read(out: &str, slot: &Slot) -> Result<Created, RdsError> {
        Self::read_parts(&Parts::split(out), slot, &[])
    }

    /// Reads the create script's output for a copy (`add.copy_from`): what it did, and the
    /// copy's file, exact size and the clock. A part that cannot be read is a failure, as
    /// after any mutation; a size that is not an exact count is only not exact.
    pub fn read_copy(out: &str, add: &DiskAdd) -> Result<(Created, CopyTail), RdsError> {
        let parts = Parts::split(out);
        let created = Self::read_parts(&parts, &add.slot, &["file", "size", "clock"])?;
        let file = files(parts.text("file"))?
            .into_iter()
            .find(|f| f.path == add.file_path.as_str());
        // Only the snapshot's creation time needs the clock: one that cannot be read leaves
        // it out, as `ControllerService::clock` does, and fails nothing.
        let clock = RdsClock::parse(parts.text("clock"))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot read the RDS clock"))
            .ok();
        Ok((
            created,
            CopyTail {
                file,
                exact: parse_exact_count(parts.text("size")),
                clock,
            },
        ))
    }

    fn read_parts(parts: &Parts, slot: &Slot, tail: &[&str]) -> Result<Created, RdsError> {
        Parts::nothing_from("`/disk add`", &parts.lead)?;
        let made: Vec<&str> = ["disk"].iter().chain(tail).copied().collect();
        let exists: Vec<&str> = ["file-exists", "disk"]
            .iter()
            .chain(tail)
            .copied()
            .collect();
        parts.expect("create", &[&made, &exists])?;
        Parts::nothing_from("the file check", parts.text("file-exists"))?;
        let disk = disk_in(parts.text("disk"), slot)?;
        Ok(if parts.names()[0] == "file-exists" {
            Created::FileExists(disk)
        } else {
            Created::Made(disk)
        })
    }
}

impl RdsClient {
    /// Whether this connection's RDS runs the driver's scripts and prints what they print,
    /// probed once per connection generation (a reconnect may reach another RDS). Only a
    /// transport failure is an error: any other answer means no.
    pub async fn scripting(&self, deadline: Instant) -> Result<bool, RdsError> {
        if !self.scripts_allowed {
            return Ok(false);
        }
        let generation = self.transport().generation();
        if let Some(known) = self.scripting.get(generation) {
            return Ok(known);
        }
        let command = Command::Script(Script::probe());
        let line = command.render();
        let reply = self
            .retrying(deadline, || {
                self.run_line_as(&command, &line, deadline, Probe::Yes)
            })
            .await;
        let supported = match reply {
            Err(e @ RdsError::Transport(_)) => return Err(e),
            Ok(out) => probe_answered(&out),
            Err(_) => false,
        };
        self.scripting.set(self.transport().generation(), supported);
        tracing::info!(supported, "RDS scripting (one exec per change) detected");
        Ok(supported)
    }

    /// Runs the create script (scripting known to work). Not retried: after a lost reply
    /// the caller reads what is there.
    pub async fn create_scripted(
        &self,
        add: &DiskAdd,
        deadline: Instant,
    ) -> Result<Created, RdsError> {
        let out = self
            .run(&Command::Script(Script::create(add)), deadline)
            .await
            .inspect_err(|e| self.refused_scripts(e))?;
        Created::read(&out, &add.slot)
    }

    /// Runs the create script of a copy (scripting known to work) and keeps the clock it
    /// read. Not retried, like [`Self::create_scripted`].
    pub async fn copy_scripted(
        &self,
        add: &DiskAdd,
        deadline: Instant,
    ) -> Result<(Created, CopyTail), RdsError> {
        debug_assert!(add.copy_from.is_some(), "{add:?}");
        let out = self
            .run(&Command::Script(Script::create(add)), deadline)
            .await
            .inspect_err(|e| self.refused_scripts(e))?;
        let (created, tail) = Created::read_copy(&out, add)?;
        if let Some(clock) = tail.clock {
            self.keep_clock(clock);
        }
        Ok((created, tail))
    }

    /// The disks in `slots`, in order: in one exec where the RDS runs scripts.
    pub async fn get_disks(
        &self,
        slots: &[&Slot],
        deadline: Instant,
    ) -> Result<Vec<Option<Disk>>, RdsError> {
        if self.scripting(deadline).await? {
            let script = Command::Script(Script::read_disks(slots));
            match self.run_idempotent(&script, deadline).await {
                Ok(out) => return read_disks(&out, slots),
                // Read one at a time below.
                Err(e @ RdsError::InvalidArgument(_)) => self.refused_scripts(&e),
                Err(e) => return Err(e),
            }
        }
        let mut disks = Vec::with_capacity(slots.len());
        for slot in slots {
            disks.push(self.get_disk(slot, deadline).await?);
        }
        Ok(disks)
    }

    /// Runs a `/disk set` and reads the disk in `slot` back: in one script where the RDS runs
    /// them, else as two commands. Setting the same values again converges, so a lost reply
    /// is retried.
    pub async fn set_then_read(
        &self,
        set: &Command,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Option<Disk>, RdsError> {
        if self.scripting(deadline).await? {
            let script = Command::Script(Script::set(set, slot));
            match self.run_idempotent(&script, deadline).await {
                Ok(out) => return read_set(&out, slot),
                // Asked again below, one command at a time: the answer stands either way.
                Err(e @ RdsError::InvalidArgument(_)) => self.refused_scripts(&e),
                Err(e) => return Err(e),
            }
        }
        self.run_idempotent(set, deadline).await?;
        self.get_disk(slot, deadline).await
    }

    /// After a script was refused as invalid: either a command in it was (a value RouterOS
    /// does not take), or the RDS no longer runs scripts (upgraded, replaced, its user's
    /// rights changed). The two read alike, so the next change asks again with the probe.
    fn refused_scripts(&self, e: &RdsError) {
        if matches!(e, RdsError::InvalidArgument(_)) {
            tracing::info!(error = %e, "the RDS refused a script; probing scripting again");
            self.scripting.forget();
        }
    }

    /// Runs the remove script (scripting known to work): done only when neither the disk nor
    /// the file shows any more. Repeating it is harmless, so a lost reply is retried.
    pub async fn remove_scripted(
        &self,
        slot: &Slot,
        file: &RdsPath,
        deadline: Instant,
    ) -> Result<(), RdsError> {
        let out = self
            .run_idempotent(&Command::Script(Script::remove(slot, file)), deadline)
            .await
            .inspect_err(|e| self.refused_scripts(e))?;
        read_removed(&out, slot, file)
    }
}

/// Reads the read script's output: the disk in each of `slots`, in order.
pub fn read_disks(out: &str, slots: &[&Slot]) -> Result<Vec<Option<Disk>>, RdsError> {
    let parts = Parts::split(out);
    let names = vec!["disk"; slots.len()];
    parts.expect("read", &[&names])?;
    if !parts.lead.trim().is_empty() {
        return Err(RdsError::Parse(format!(
            "the read script printed {:?} before its first part",
            parts.lead
        )));
    }
    parts
        .parts
        .iter()
        .zip(slots)
        .map(|((_, text), slot)| disk_in(text, slot))
        .collect()
}

/// Reads the set script's output: the disk in `slot` as read back, if it is there.
pub fn read_set(out: &str, slot: &Slot) -> Result<Option<Disk>, RdsError> {
    let parts = Parts::split(out);
    Parts::nothing_from("`/disk set`", &parts.lead)?;
    parts.expect("set", &[&["disk"]])?;
    disk_in(parts.text("disk"), slot)
}

/// Reads the remove script's output: success only when it shows neither the disk nor the file.
pub fn read_removed(out: &str, slot: &Slot, file: &RdsPath) -> Result<(), RdsError> {
    let parts = Parts::split(out);
    Parts::nothing_from("`/disk remove`", &parts.lead)?;
    parts.expect("remove", &[&["disk", "file-removal", "file"]])?;
    if disk_in(parts.text("disk"), slot)?.is_some() {
        return Err(RdsError::Failed {
            exit_status: Some(0),
            text: format!("disk {slot} is still there after `/disk remove` answered success"),
        });
    }
    Parts::nothing_from("`/file remove`", parts.text("file-removal"))?;
    if files(parts.text("file"))?
        .iter()
        .any(|f| f.path == file.as_str())
    {
        return Err(RdsError::Failed {
            exit_status: Some(0),
            text: format!("{file} is still there after `/file remove` answered success"),
        });
    }
    Ok(())
}

/// Whether the probe's output is exactly what a RouterOS running it as meant prints.
pub fn probe_answered(out: &str) -> bool {
    let parts = Parts::split(out);
    parts.lead.trim().is_empty()
        && parts.names() == ["probe", "none", "identity"]
        && parts.text("probe").trim().is_empty()
        && parts.text("none").trim().is_empty()
        && parse_key_colon_value(parts.text("identity"))
            .iter()
            .any(|(k, v)| k == "name" && !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rds::command::{AllocSize, NvmeExport, Port};

    fn add() -> DiskAdd {
        let slot = Slot::new("pvc-1").unwrap();
        DiskAdd {
            file_path: RdsPath::new("/storage-pool/csi/pvc-1.img").unwrap(),
            size: Some(AllocSize::round_up(1 << 30).unwrap()),
            copy_from: None,
            export: Some(NvmeExport {
                port: Port::new(4420).unwrap(),
                nqn: slot.nqn(),
            }),
            slot,
        }
    }

    #[test]
    fn create_adds_only_without_a_file_and_reads_back() {
        assert_eq!(
            Script::create(&add()).line(),
            ":if ([:len [/file find name=\"storage-pool/csi/pvc-1.img\"]] = 0) do={/disk add \
             type=file file-path=\"/storage-pool/csi/pvc-1.img\" file-size=\"1G\" slot=\"pvc-1\" \
             nvme-tcp-export=yes nvme-tcp-server-port=\"4420\" \
             nvme-tcp-server-nqn=\"nqn.2000-02.com.mikrotik:pvc-1\"} else={:put \
             \"rds-csi:file-exists\"}; :put \"rds-csi:disk\"; /disk print detail where \
             slot=\"pvc-1\""
        );
    }

    /// A copy's create script and what it prints, built from the captured outputs.
    #[test]
    fn a_copy_is_read_back_with_its_file_size_and_clock() {
        let fixture = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/../fixtures/routeros/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let slot = Slot::new("pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8").unwrap();
        let copy = DiskAdd {
            file_path: RdsPath::new(
                "/storage-pool/metal-csi/pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8.img",
            )
            .unwrap(),
            size: None,
            copy_from: Some(Slot::new("pvc-src").unwrap()),
            export: None,
            slot,
        };
        let line = Script::create(&copy).line().to_string();
        assert!(line.starts_with(":if ([:len [/file find name="), "{line}");
        assert!(
            line.ends_with(
                "; :put \"rds-csi:file\"; /file print detail where \
                 name=\"storage-pool/metal-csi/pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8.img\"; \
                 :put \"rds-csi:size\"; :put [/file get [find \
                 name=\"storage-pool/metal-csi/pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8.img\"] \
                 size]; :put \"rds-csi:clock\"; /system clock print"
            ),
            "{line}"
        );
        let clock = "time: 16:50:00\r\ndate: 2025-11-11\r\ntime-zone-autodetect: yes\r\n\
                     time-zone-name: UTC\r\ngmt-offset: +00:00\r\ndst-active: no\r\n";
        let out = format!(
            "rds-csi:disk\r\n{}rds-csi:file\r\n{}rds-csi:size\r\n10737418240\r\n\
             rds-csi:clock\r\n{clock}",
            fixture("disk-print-detail-single.txt"),
            fixture("file-print-detail.txt"),
        );
        let (created, tail) = Created::read_copy(&out, &copy).unwrap();
        assert!(matches!(created, Created::Made(Some(_))), "{created:?}");
        assert_eq!(tail.file.unwrap().path, copy.file_path.as_str());
        assert_eq!(tail.exact, Some(10_737_418_240));
        assert!(tail.clock.is_some());
        // A rounded size is only not exact; a clock that cannot be read is only left out.
        let rounded = out.replace("\r\n10737418240\r\n", "\r\n10.0GiB\r\n");
        assert_eq!(Created::read_copy(&rounded, &copy).unwrap().1.exact, None);
        let no_clock = out.replace("gmt-offset", "offset");
        let (created, tail) = Created::read_copy(&no_clock, &copy).unwrap();
        assert!(matches!(created, Created::Made(Some(_))), "{created:?}");
        assert!(tail.clock.is_none());
        assert!(Command::Script(Script::create(&copy)).is_copy());
        assert!(!Command::Script(Script::create(&add())).is_copy());
        // Without the tail it is not what a copy's script prints.
        let short = format!(
            "rds-csi:disk\r\n{}",
            fixture("disk-print-detail-single.txt")
        );
        assert!(matches!(
            Created::read_copy(&short, &copy),
            Err(RdsError::Parse(_))
        ));
    }

    #[test]
    fn disks_are_read_in_order_each_after_its_marker() {
        let (a, b) = (Slot::new("a").unwrap(), Slot::new("b").unwrap());
        assert_eq!(
            Script::read_disks(&[&a, &b]).line(),
            ":put \"rds-csi:disk\"; /disk print detail where slot=\"a\"; :put \
             \"rds-csi:disk\"; /disk print detail where slot=\"b\""
        );
        assert!(!Script::read_disks(&[&a]).is_mutating());
        let none = read_disks("rds-csi:disk\r\nrds-csi:disk\r\n", &[&a, &b]).unwrap();
        assert_eq!(none, vec![None, None]);
        for wrong in [
            "rds-csi:disk\r\n",
            "oops\r\nrds-csi:disk\r\nrds-csi:disk\r\n",
            "",
        ] {
            assert!(read_disks(wrong, &[&a, &b]).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn remove_removes_the_file_only_once_the_disk_is_gone() {
        let line = Script::remove(
            &Slot::new("pvc-1").unwrap(),
            &RdsPath::new("/storage-pool/csi/pvc-1.img").unwrap(),
        );
        assert_eq!(
            line.line(),
            "/disk remove [find slot=\"pvc-1\"]; :put \"rds-csi:disk\"; /disk print detail where \
             slot=\"pvc-1\"; :put \"rds-csi:file-removal\"; :if ([:len [/disk find \
             slot=\"pvc-1\"]] = 0) do={/file remove [find name=\"storage-pool/csi/pvc-1.img\"]}; \
             :put \"rds-csi:file\"; /file print detail where name=\"storage-pool/csi/pvc-1.img\""
        );
    }

    #[test]
    fn a_set_is_read_back_in_the_same_exec() {
        let slot = Slot::new("pvc-1").unwrap();
        let set = Command::DiskSetSize {
            slot: slot.clone(),
            size: AllocSize::round_up(2 << 30).unwrap(),
        };
        assert_eq!(
            Script::set(&set, &slot).line(),
            "/disk set [find slot=\"pvc-1\"] file-size=\"2G\"; :put \"rds-csi:disk\"; /disk \
             print detail where slot=\"pvc-1\""
        );
        assert!(read_set("rds-csi:disk\r\n", &slot).unwrap().is_none());
        assert!(matches!(
            read_set("failure: disk is busy\r\nrds-csi:disk\r\n", &slot),
            Err(RdsError::Busy(_))
        ));
        assert!(matches!(read_set("", &slot), Err(RdsError::Parse(_))));
    }

    #[test]
    fn output_splits_at_markers_and_keeps_the_lead() {
        let parts = Parts::split("oops\r\nrds-csi:disk\r\n 0 slot=\"a\"\r\n\r\nrds-csi:file\r\n");
        assert_eq!(parts.lead, "oops\n");
        assert_eq!(parts.names(), ["disk", "file"]);
        assert_eq!(parts.text("disk"), " 0 slot=\"a\"\n\n");
        assert_eq!(parts.text("file"), "");
        assert!(parts.expect("x", &[&["disk", "file"]]).is_ok());
        let wrong = parts.expect("x", &[&["disk"]]).unwrap_err().to_string();
        assert!(wrong.contains("[\"disk\", \"file\"]"), "{wrong}");
        // A bare `rds-csi:` is no marker.
        assert_eq!(Parts::split("rds-csi:\n").lead, "rds-csi:\n");
    }

    #[test]
    fn the_probe_counts_only_an_answer_in_full() {
        assert_eq!(
            Script::probe().line(),
            ":put \"rds-csi:probe\"; :if ([:len [/disk find slot=\"rds-csi-probe-no-such-slot\"]] \
             = 0) do={:put \"rds-csi:none\"} else={:put \"rds-csi:some\"}; :put \
             \"rds-csi:identity\"; /system identity print"
        );
        let full = "rds-csi:probe\r\nrds-csi:none\r\nrds-csi:identity\r\n  name: RDS\r\n";
        assert!(probe_answered(full));
        for partial in [
            // `print` inside a script shows nothing.
            "rds-csi:probe\r\nrds-csi:none\r\nrds-csi:identity\r\n",
            // The wrong branch, or both.
            "rds-csi:probe\r\nrds-csi:some\r\nrds-csi:identity\r\n  name: RDS\r\n",
            "rds-csi:probe\r\nrds-csi:none\r\nrds-csi:some\r\nrds-csi:identity\r\n  name: RDS\r\n",
            // `:put` echoed with its quotes, or an error first.
            "\"rds-csi:probe\"\r\n\"rds-csi:none\"\r\n\"rds-csi:identity\"\r\n  name: RDS\r\n",
            "bad command name put (line 1 column 2)\r\n",
            "",
        ] {
            assert!(!probe_answered(partial), "{partial:?}");
        }
    }

    #[test]
    fn anything_a_mutation_prints_is_its_failure() {
        assert!(Parts::nothing_from("x", " \r\n").is_ok());
        assert!(matches!(
            Parts::nothing_from("x", "failure: not enough space\n"),
            Err(RdsError::OutOfSpace(_))
        ));
        assert!(matches!(
            Parts::nothing_from("x", "command rejected: what\n"),
            Err(RdsError::Failed { .. })
        ));
    }
}
