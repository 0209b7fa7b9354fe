//! The RDS client: SSH transport, RouterOS commands, output parsing and error classification.

pub mod client;
pub mod command;
mod connection;
mod copy;
pub mod error;
pub mod model;
mod observer;
mod open_window;
pub mod parse;
mod reply;
pub mod script;
pub mod ssh;
mod ssh_config;
mod unchanged;

pub use client::{disk_mismatch, RdsClient, RetryPolicy};
pub use command::{AllocSize, Command, DiskAdd, Nqn, NvmeExport, Port, RdsPath, Slot};
pub use copy::{CopySeen, CopyState};
pub use error::{RdsError, TransportError};
pub use model::{Capacity, Disk, FileInfo, RdsClock, Traffic};
pub use observer::RdsObserver;
pub use ssh::{HostKeyPolicy, SshConfig, Transport};

use std::time::Duration;
use tokio::time::Instant;

/// A deadline `after` from now.
pub fn deadline_in(after: Duration) -> Instant {
    Instant::now() + after
}
