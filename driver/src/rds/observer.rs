//! What the RDS client reports as it works (each command's outcome and latency, the exec
//! channels in use), for whoever keeps metrics. The transport takes an observer when it is
//! built and the client reports through the transport's.

use std::time::Duration;

/// Receives the client's reports. Calls are cheap and must not block: they are made on every
/// command.
pub trait RdsObserver: Send + Sync {
    /// A command of `kind` finished with `outcome` (`ok`, `not-found`, `transport`, ...) after
    /// `elapsed`.
    fn command_done(&self, kind: &str, outcome: &str, elapsed: Duration);
    /// An exec channel was taken for a command.
    fn channel_opened(&self);
    /// That command's channel was given back.
    fn channel_closed(&self);
}

/// An observer that drops every report: for clients nobody keeps metrics of.
pub struct Unobserved;

impl RdsObserver for Unobserved {
    fn command_done(&self, _kind: &str, _outcome: &str, _elapsed: Duration) {}
    fn channel_opened(&self) {}
    fn channel_closed(&self) {}
}
