//! Waiting for a copy (`/disk add ... copy-from=`) to be whole: RouterOS may copy after
//! replying, and a copy counts only once an exact byte count (or, without one, a settled
//! rounded size) says its file has the disk's full size.

use std::time::Duration;

use tokio::time::Instant;

use super::client::RdsClient;
use super::command::{RdsPath, Slot};
use super::error::{RdsError, TransportError};
use super::model::{Disk, FileInfo};

/// A copy whose exactly counted file has not grown for this long has stopped.
const COPY_STALL: Duration = Duration::from_secs(4);
/// The slowest rate, in bytes per second, at which the driver expects the RDS to copy: an
/// eighth of what one NVMe drive of its pool sustains. It sets how long a copy seen only by its
/// rounded size must stand still to count as stopped (`copy_window`).
const MIN_COPY_RATE: u64 = 128 << 20;
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_millis(500);

/// How far a copy has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    /// The file has the disk's full size.
    Complete(Box<Disk>),
    /// The file stopped growing short of its size, or its disk went away.
    Interrupted(String),
}

/// A copy's disk, its file and the file's exact byte count (if the RDS gives one), as read
/// together by a script.
#[derive(Debug, Clone)]
pub struct CopySeen {
    pub disk: Disk,
    pub file: Option<FileInfo>,
    pub exact: Option<u64>,
}

/// A copy's disk and file, read once.
struct CopyReading {
    disk: Disk,
    /// The disk's exact size.
    want: u64,
    /// The file's size: exact when `precision` is 0, else as displayed.
    have: u64,
    /// How far the true file size may be from `have`.
    precision: u64,
}

impl CopyReading {
    /// What `seen` says of the copy into `slot`, or why the copy is over (Err).
    fn of(slot: &Slot, seen: CopySeen) -> Result<CopyReading, String> {
        let CopySeen { disk, file, exact } = seen;
        let (Some(want), Some(file)) = (disk.size_bytes, file) else {
            return Err(format!("disk {slot} has no readable size or no file"));
        };
        let (have, precision) = match exact {
            Some(bytes) => (bytes, 0),
            // A `/file print` that shows bytes (precision 0) is exact too.
            None => (file.size_bytes.unwrap_or_default(), file.size_precision),
        };
        Ok(CopyReading {
            disk,
            want,
            have,
            precision,
        })
    }

    fn same_as(&self, other: &CopyReading) -> bool {
        (self.want, self.have, self.precision) == (other.want, other.have, other.precision)
    }

    /// ` (shown rounded, within N bytes)` when the file size is not exact.
    fn approximately(&self) -> String {
        match self.precision {
            0 => String::new(),
            p => format!(", shown rounded: within {p} bytes"),
        }
    }
}

/// How long a copy's file must show the same size before the copy counts as no longer running.
/// With an exact count (precision 0) any progress shows, so `COPY_STALL` suffices. With a
/// rounded display, progress shows only when the display steps by one unit of its last digit
/// (twice the precision): a copy still running at `MIN_COPY_RATE` takes that long to step it,
/// and also to write the at most two precisions that may be missing when the display is
/// within precision of the disk's size. `10.0GiB`: 4 s; `1.5TiB`: about 14 minutes.
fn copy_window(precision: u64) -> Duration {
    COPY_STALL.max(Duration::from_secs(
        precision.saturating_mul(2) / MIN_COPY_RATE,
    ))
}

impl RdsClient {
    /// Waits until the file of a disk made by `copy-from` has the disk's full size: RouterOS may
    /// copy after replying. A copy is Complete only when an exact byte count of its file
    /// (`exact_file_size`, or a `/file print` that shows bytes) is at least the disk's exact
    /// `size=`; a file whose exact count stops growing short of that, or a disk that goes away,
    /// is Interrupted.
    ///
    /// Without an exact count the file's size is known only to half a unit of its display
    /// (`10.0GiB`: 51 MiB; `1.5TiB`: 51 GiB). Then a copy is Complete once its displayed size
    /// is within that precision of the disk's size and has not changed for `copy_window`, and
    /// a last reading finds the disk and file unchanged; one that stands still further short is
    /// Interrupted. A copy that stopped short by less than the precision cannot be told from a
    /// whole one that way, and is acknowledged: only an exact count can show it.
    ///
    /// The first reading is `seen` when a script read the copy back right after it began, so
    /// that a copy already whole costs no further command.
    pub async fn wait_for_copy(
        &self,
        slot: &Slot,
        mut seen: Option<CopySeen>,
        deadline: Instant,
    ) -> Result<CopyState, RdsError> {
        let mut pause = POLL_MIN;
        let state = loop {
            let reading = match seen.take() {
                Some(seen) => CopyReading::of(slot, seen),
                None => self.read_copy(slot, deadline).await?,
            };
            let reading = match reading {
                Ok(reading) => reading,
                Err(why) => break CopyState::Interrupted(why),
            };
            let (have, want) = (reading.have, reading.want);
            let still = self.copy_still_for(slot, &reading);
            let window = copy_window(reading.precision);
            let within = have.saturating_add(reading.precision) >= want;
            if reading.precision == 0 && have >= want {
                break CopyState::Complete(Box::new(reading.disk));
            }
            if still >= window && !within {
                break CopyState::Interrupted(format!(
                    "the copy into {slot} stopped at {have} of {want} bytes{}",
                    reading.approximately()
                ));
            }
            if still >= window && within {
                // Only a displayed size: read once more before trusting the stillness.
                match self.read_copy(slot, deadline).await? {
                    Ok(again) if again.same_as(&reading) => {
                        tracing::warn!(
                            slot = %slot, shown = have, size = want, precision = reading.precision,
                            "acknowledging a copy by its rounded size: the RDS gives no exact \
                             byte count, so a copy that stopped within the rounding is not seen"
                        );
                        break CopyState::Complete(Box::new(again.disk));
                    }
                    Ok(_) => {}
                    Err(why) => break CopyState::Interrupted(why),
                }
            }
            if Instant::now() + pause >= deadline {
                return Err(RdsError::Transport(TransportError::Timeout {
                    what: format!(
                        "the copy into {slot} to finish ({have} of {want} bytes{})",
                        reading.approximately()
                    ),
                    after: still,
                }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        };
        self.copies.forget(slot.as_str());
        Ok(state)
    }

    /// A copy's disk and file as they are now, or why the copy is over (Err).
    async fn read_copy(
        &self,
        slot: &Slot,
        deadline: Instant,
    ) -> Result<Result<CopyReading, String>, RdsError> {
        let Some(disk) = self.get_disk(slot, deadline).await? else {
            return Ok(Err(format!("disk {slot} went away")));
        };
        let path = RdsPath::new(disk.file_path.clone().unwrap_or_default())?;
        let file = self.get_file(&path, deadline).await?;
        let exact = match file {
            Some(_) => self.exact_file_size(&path, deadline).await?,
            None => None,
        };
        Ok(CopyReading::of(slot, CopySeen { disk, file, exact }))
    }

    /// How long the copy into `slot` has shown what `reading` shows, over this call and earlier
    /// ones (a CO retry goes on counting).
    fn copy_still_for(&self, slot: &Slot, reading: &CopyReading) -> Duration {
        self.copies.for_how_long(
            slot.as_str(),
            (reading.want, reading.have, reading.precision),
        )
    }
}
