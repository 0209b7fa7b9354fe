//! One SSH connection and the commands using it. A connection that stops answering is retired
//! rather than cut while commands still run on it (a long `copy-from`, say): they keep their
//! channels and their replies, new commands get a fresh connection, and the last command to
//! finish closes the old one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use russh::client;

use super::ssh_config::Handler;

pub(super) struct Connection {
    pub handle: client::Handle<Handler>,
    pub id: u64,
    in_flight: AtomicUsize,
    retired: AtomicBool,
}

/// One command's use of a connection, until dropped.
pub(super) struct InUse(Arc<Connection>);

impl Drop for InUse {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.retired.load(Ordering::SeqCst)
        {
            self.0.close_later();
        }
    }
}

impl Connection {
    pub fn new(handle: client::Handle<Handler>, id: u64) -> Self {
        Self {
            handle,
            id,
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// Counts a command as using the connection while the guard lives.
    pub fn begin(self: &Arc<Self>) -> InUse {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InUse(Arc::clone(self))
    }

    /// Commands using the connection now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Closes the connection once no command uses it (now, if none does). The caller has
    /// already taken it out of service.
    pub fn retire(self: &Arc<Self>) {
        self.retired.store(true, Ordering::SeqCst);
        if self.in_flight() == 0 {
            self.close_later();
        }
    }

    fn close_later(self: &Arc<Self>) {
        let conn = Arc::clone(self);
        tokio::spawn(async move {
            let _ = conn
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        });
    }
}
