//! The controller's side of a volume's condition (ControllerGetVolume, ListVolumes): what the
//! RDS shows of its disk and backing file that keeps nodes from using it, read from the
//! listings the call makes, and the attachment table. A missing disk is NotFound, not a
//! condition. The last condition seen of each volume feeds the `abnormal_volumes` gauge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use csi_proto::v1::VolumeCondition;

use super::fence::allowed_for;
use super::ControllerService;
use crate::rds::command::{RdsPath, Slot};
use crate::rds::{Disk, FileInfo};

/// Why a volume is abnormal: the `reason` label of the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    NotExported,
    OtherNqn,
    OtherPort,
    FileMissing,
    FileSize,
    FencedOut,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::NotExported,
        Reason::OtherNqn,
        Reason::OtherPort,
        Reason::FileMissing,
        Reason::FileSize,
        Reason::FencedOut,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::NotExported => "not_exported",
            Reason::OtherNqn => "other_nqn",
            Reason::OtherPort => "other_port",
            Reason::FileMissing => "file_missing",
            Reason::FileSize => "file_size",
            Reason::FencedOut => "fenced_out",
        }
    }
}

/// One thing wrong with a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    fn new(reason: Reason, message: String) -> Self {
        Self { reason, message }
    }
}

/// The condition that `problems` make: abnormal with every message, or healthy.
pub fn condition_of(problems: &[Problem]) -> VolumeCondition {
    VolumeCondition {
        abnormal: !problems.is_empty(),
        message: if problems.is_empty() {
            "healthy".into()
        } else {
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        },
    }
}

/// What the RDS's `/file` listing showed of a disk's backing file.
#[derive(Debug, Clone, Copy)]
pub enum Backing<'a> {
    /// The listing could not be read: the file is not judged.
    Unread,
    Missing,
    Found(&'a FileInfo),
}

impl<'a> Backing<'a> {
    /// The backing file of `disk` in a listing keyed by path.
    pub fn of(disk: &Disk, files: &'a HashMap<String, FileInfo>) -> Self {
        match disk.file_path.as_deref() {
            None => Backing::Unread,
            Some(path) => files.get(path).map_or(Backing::Missing, Backing::Found),
        }
    }
}

impl ControllerService {
    /// The files under the base paths, keyed by path; None (logged) when they cannot be read,
    /// so a listing that fails leaves the files unjudged rather than failing the call.
    pub(super) async fn backing_files(
        &self,
        deadline: tokio::time::Instant,
    ) -> Option<HashMap<String, FileInfo>> {
        match self.rds.list_files_in(self.bases(), deadline).await {
            Ok(files) => Some(files.into_iter().map(|f| (f.path.clone(), f)).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "backing files not listed; their sizes not judged");
                None
            }
        }
    }

    /// Drops a deleted volume from the gauge.
    pub(super) fn forget_condition(&self, id: &Slot) {
        self.health.forget(id.as_str());
    }

    /// The backing file of one disk, as its own `/file print` shows it; None (logged) when it
    /// cannot be read, so the file is left unjudged rather than failing the call.
    pub(super) async fn backing_file(
        &self,
        id: &Slot,
        disk: &Disk,
        deadline: tokio::time::Instant,
    ) -> Option<Option<FileInfo>> {
        let path = RdsPath::new(disk.file_path.clone()?).ok()?;
        match self.rds.get_file(&path, deadline).await {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(volume = %id, error = %e, "backing file not read; not judged");
                None
            }
        }
    }

    /// The condition of one volume (ControllerGetVolume), recorded for the gauge.
    pub(super) fn condition(&self, id: &Slot, disk: &Disk, backing: Backing) -> VolumeCondition {
        let problems = self.problems(id, disk, backing);
        self.health.record(id.as_str(), &problems);
        condition_of(&problems)
    }

    /// What keeps nodes from the volume in `id` whose disk is `disk` and backing file
    /// `backing`; none when it is healthy.
    pub(super) fn problems(&self, id: &Slot, disk: &Disk, backing: Backing) -> Vec<Problem> {
        let mut problems = disk_problems(id, disk);
        // A volume being made or resized has a file catching up with its disk.
        if !self.locks.is_held(id.as_str()) {
            problems.extend(file_problem(id, disk, backing));
        }
        if problems.is_empty() {
            problems.extend(self.stranded_by_port(id, disk));
            problems.extend(self.fenced_out(id, disk));
        }
        problems
    }

    /// The disk exported on a port other than the one its nodes connect to.
    fn stranded_by_port(&self, id: &Slot, disk: &Disk) -> Option<Problem> {
        let held = self.attachments.get(id.as_str())?;
        let wanted = held.nvme_port?;
        let port = disk.nvme_port.filter(|p| *p != wanted)?;
        Some(Problem::new(
            Reason::OtherPort,
            format!(
                "disk {id} is exported on port {port}, but the nodes holding the volume ({}) \
                 connect to port {wanted}: set nvme-tcp-server-port={wanted} again, or \
                 unpublish and publish the volume",
                held.node_ids().join(", ")
            ),
        ))
    }

    /// Nodes the volume is published to that its fence keeps out.
    fn fenced_out(&self, id: &Slot, disk: &Disk) -> Option<Problem> {
        let fence = self.fence.as_ref()?;
        let allowed = disk.allowed_host.as_deref()?;
        let nodes = self.attachments.nodes(id.as_str());
        let key = fence.key();
        // Two holders (a migration) need the disk open to any host.
        let open_wanted = allowed_for(key, &nodes).is_none();
        let kept_out: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                open_wanted
                    || !allowed
                        .split(',')
                        .any(|h| h.trim() == key.host_identity(n).nqn)
            })
            .map(String::as_str)
            .collect();
        (!kept_out.is_empty()).then(|| {
            Problem::new(
                Reason::FencedOut,
                format!(
                    "the fence of disk {id} (nvme-tcp-server-allow-host-name={allowed}) keeps \
                     out {}, which the volume is published to; the controller's repair pass \
                     resets it",
                    kept_out.join(" and ")
                ),
            )
        })
    }
}

/// What the disk alone shows keeping nodes from the volume in `id`: not exported, or exported
/// under an NQN other than the one its nodes connect to. Shared with `rds-csi volumes`.
pub fn disk_problems(id: &Slot, disk: &Disk) -> Vec<Problem> {
    if !disk.nvme_export {
        return vec![Problem::new(
            Reason::NotExported,
            format!("disk {id} is not exported (nvme-tcp-export=no): no node can connect"),
        )];
    }
    let wanted = id.nqn();
    disk.nqn
        .as_deref()
        .filter(|n| *n != wanted.as_str())
        .map(|nqn| {
            Problem::new(
                Reason::OtherNqn,
                format!(
                    "disk {id} is exported as {nqn}, not {wanted}: nodes connect to the NQN the \
                     volume was made with"
                ),
            )
        })
        .into_iter()
        .collect()
}

/// The disk's backing file gone, or of another size than the disk (beyond what either
/// listing's rounding allows): a copy that never finished, or a file changed behind RouterOS.
pub fn file_problem(id: &Slot, disk: &Disk, backing: Backing) -> Option<Problem> {
    let path = disk.file_path.as_deref()?;
    let file = match backing {
        Backing::Unread => return None,
        Backing::Missing => {
            return Some(Problem::new(
                Reason::FileMissing,
                format!("the backing file {path} of disk {id} is missing on the RDS"),
            ))
        }
        Backing::Found(file) => file,
    };
    let (disk_bytes, file_bytes) = (disk.size_bytes?, file.size_bytes?);
    let slack = disk.size_precision + file.size_precision;
    (disk_bytes.abs_diff(file_bytes) > slack).then(|| {
        Problem::new(
            Reason::FileSize,
            format!(
                "the backing file {path} holds {file_bytes} bytes but disk {id} is \
                 {disk_bytes} bytes: a copy that did not finish, or a file changed on the RDS"
            ),
        )
    })
}

/// The last problems seen of each volume, counted by reason into the `abnormal_volumes` gauge.
#[derive(Debug, Default)]
pub struct HealthBook {
    by_volume: Mutex<BTreeMap<String, Vec<Reason>>>,
}

impl HealthBook {
    /// Remembers the problems of one volume (none: healthy).
    pub fn record(&self, volume: &str, problems: &[Problem]) {
        let mut book = self.lock();
        let reasons: Vec<Reason> = problems.iter().map(|p| p.reason).collect();
        if reasons.is_empty() {
            book.remove(volume);
        } else {
            book.insert(volume.to_string(), reasons);
        }
        set_gauge(&book);
    }

    /// Replaces the whole book with what a full listing found (volumes it no longer shows
    /// were deleted): one update of the gauge for the pass.
    pub fn replace(&self, listed: BTreeMap<String, Vec<Reason>>) {
        let mut book = self.lock();
        *book = listed;
        book.retain(|_, reasons| !reasons.is_empty());
        set_gauge(&book);
    }

    pub fn forget(&self, volume: &str) {
        let mut book = self.lock();
        book.remove(volume);
        set_gauge(&book);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Reason>>> {
        self.by_volume.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn count(book: &BTreeMap<String, Vec<Reason>>, reason: Reason) -> usize {
    book.values().filter(|r| r.contains(&reason)).count()
}

fn set_gauge(book: &BTreeMap<String, Vec<Reason>>) {
    let gauge = &crate::metrics::global().abnormal_volumes;
    for reason in Reason::ALL {
        gauge
            .with_label_values(&[reason.label()])
            .set(count(book, reason) as i64);
    }
}
