//! Work that RouterOS may finish after it has replied (the `copy-async` and `resize-delayed`
//! variants). Nothing runs in the background: every command and every state read first settles
//! what the time elapsed since has done, so the outcome depends only on the clock.

use std::time::{Duration, Instant};

use crate::profile::{COPY_DURATION, RESIZE_DELAY};
use crate::state::{DataDir, State};

const MIB: u64 = 1 << 20;

/// A `copy-from` still filling its file.
#[derive(Debug, Clone)]
struct CopyJob {
    slot: String,
    source: String,
    path: String,
    size: u64,
    /// Where the copy stops: `size`, or short of it (`CopyShort`).
    end: u64,
    /// How long a copy that stopped short waits before it goes on to `size`; None: it never does.
    resume: Option<Duration>,
    started: Instant,
    /// The connection that asked for it: the copy stops when that connection closes.
    conn: Option<u64>,
}

impl CopyJob {
    /// Bytes copied by `now`: whole MiB steps, so the file is visibly short until the end.
    fn copied(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started);
        if self.resume.is_some_and(|r| elapsed >= COPY_DURATION + r) {
            return self.size;
        }
        if elapsed >= COPY_DURATION {
            return self.end;
        }
        let part = (self.end as u128 * elapsed.as_millis() / COPY_DURATION.as_millis()) as u64;
        (part / MIB * MIB).min(self.end.saturating_sub(1))
    }

    /// Whether the copy has done all it will.
    fn finished(&self, copied: u64) -> bool {
        copied >= self.size || (self.resume.is_none() && copied >= self.end)
    }
}

/// The next copy stops `by` bytes short of its size, as a copy that dies near its end would; with
/// `resume`, it stands still that long and then finishes (a slow tail still being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyShort {
    pub by: u64,
    pub resume: Option<Duration>,
}

#[derive(Debug, Clone)]
struct PendingResize {
    slot: String,
    size: u64,
    due: Instant,
}

#[derive(Debug, Default)]
pub struct Background {
    copies: Vec<CopyJob>,
    resizes: Vec<PendingResize>,
    /// Armed for the next copy.
    short: Option<CopyShort>,
}

impl Background {
    pub fn start_copy(
        &mut self,
        slot: &str,
        source: &str,
        path: &str,
        size: u64,
        conn: Option<u64>,
        short: Option<CopyShort>,
    ) {
        self.copies.push(CopyJob {
            slot: slot.to_string(),
            source: source.to_string(),
            path: path.to_string(),
            size,
            end: size.saturating_sub(short.map_or(0, |s| s.by)),
            resume: short.and_then(|s| s.resume),
            started: Instant::now(),
            conn,
        });
    }

    /// Makes the next copy stop short.
    pub fn arm_short(&mut self, short: CopyShort) {
        self.short = Some(short);
    }

    /// The short stop armed for this copy, if any (once).
    pub fn take_short(&mut self) -> Option<CopyShort> {
        self.short.take()
    }

    pub fn delay_resize(&mut self, slot: &str, size: u64) {
        self.resizes.retain(|r| r.slot != slot);
        self.resizes.push(PendingResize {
            slot: slot.to_string(),
            size,
            due: Instant::now() + RESIZE_DELAY,
        });
    }

    /// Whether a copy into or out of `slot` is running (RouterOS would call the disk busy).
    pub fn busy(&self, slot: &str) -> bool {
        self.copies
            .iter()
            .any(|c| c.slot == slot || c.source == slot)
    }

    /// Applies the progress made by now. Returns whether the state changed.
    pub fn settle(&mut self, st: &mut State, unix_now: u64) -> bool {
        let now = Instant::now();
        let mut changed = false;
        self.copies.retain(|job| {
            let copied = job.copied(now);
            if let Some(f) = st.file_mut(&job.path) {
                if f.size != copied {
                    f.size = copied;
                    f.last_modified = unix_now;
                    changed = true;
                }
            }
            !job.finished(copied) && st.disk(&job.slot).is_some()
        });
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.resizes)
            .into_iter()
            .partition(|r| r.due <= now);
        self.resizes = waiting;
        for r in due {
            if let Some(d) = st.disks.iter_mut().find(|d| d.slot == r.slot) {
                d.file_size = d.file_size.max(r.size);
                let path = d.file_path.clone();
                if let Some(f) = st.file_mut(&path) {
                    f.size = f.size.max(r.size);
                    f.last_modified = unix_now;
                }
                changed = true;
            }
        }
        changed
    }

    /// Stops the copies `conn` asked for, leaving their files as short as they are now.
    pub fn connection_closed(&mut self, conn: u64, st: &mut State, data: Option<&DataDir>) -> bool {
        let (stopped, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.copies)
            .into_iter()
            .partition(|c| c.conn == Some(conn));
        self.copies = running;
        for job in &stopped {
            let copied = job.copied(Instant::now()).min(job.end);
            if job.finished(copied) {
                continue;
            }
            if let Some(f) = st.file_mut(&job.path) {
                f.size = copied;
            }
            if let Some(dd) = data {
                if let Err(e) = dd.truncate(&job.path, copied) {
                    tracing::warn!(path = %job.path, error = %e, "could not shorten an aborted copy");
                }
            }
            tracing::info!(slot = %job.slot, copied, size = job.size, "copy aborted: its connection closed");
        }
        !stopped.is_empty()
    }

    pub fn clear(&mut self) {
        self.copies.clear();
        self.resizes.clear();
        self.short = None;
    }
}
