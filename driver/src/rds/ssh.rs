//! SSH transport to one RDS: a supervised russh connection (or a few), many concurrent exec
//! channels over it with a bound, deadlines on everything, and reconnection with exponential
//! backoff and jitter. RouterOS does not support `keepalive@openssh.com`, so russh's keepalive
//! stays off and liveness is probed with a cheap exec instead.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use russh::ChannelMsg;
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::connection::Connection;
use super::error::{ExecOutput, TransportError};
use super::observer::RdsObserver;
use super::open_window::{self, OpenWindow};
use super::reply::read_reply;
pub use super::reply::MAX_OUTPUT_BYTES;
pub use super::ssh_config::{
    fingerprint, load_host_key, load_private_key, AcceptedHostKey, HostKeyMatch, HostKeyPolicy,
    HostKeySource, SshConfig, HOST_KEY_FORMS,
};
use super::ssh_config::{Handler, Rejection};
#[derive(Default)]
struct SlotState {
    current: Option<Arc<Connection>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<TransportError>,
}

/// What [`Transport::channel_burst`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelBurst {
    pub accepted: usize,
    pub refused: usize,
    pub unanswered: usize,
}

/// Why a channel could not be opened.
enum OpenFailure {
    /// The RDS answered with a refusal, or the connection failed.
    Refused(russh::Error),
    /// An open sent beside others was left unanswered (`open_window`).
    Stalled,
}

/// A cheap command to prove a connection still answers.
pub const LIVENESS_COMMAND: &str = "/system identity print";

pub struct Transport {
    config: Arc<SshConfig>,
    slots: Vec<Mutex<SlotState>>,
    channels: Semaphore,
    /// Channel opens pending at once over all connections (`open_window`).
    opens: OpenWindow,
    /// Signalled whenever a command's channel is done, for opens the RDS refused for lack of one.
    channel_done: Notify,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    reconnects: AtomicU64,
    accepted_host_key: Arc<StdMutex<Option<AcceptedHostKey>>>,
    observer: Arc<dyn RdsObserver>,
}

impl Transport {
    /// A transport that reports to no one.
    pub fn new(config: SshConfig) -> Arc<Self> {
        Self::with_observer(config, Arc::new(super::observer::Unobserved))
    }

    /// A transport reporting its channels, and its client's commands, to `observer`.
    pub fn with_observer(config: SshConfig, observer: Arc<dyn RdsObserver>) -> Arc<Self> {
        let slots = (0..config.connections.max(1))
            .map(|_| Mutex::default())
            .collect();
        Arc::new(Self {
            channels: Semaphore::new(config.max_channels.max(1)),
            opens: OpenWindow::default(),
            channel_done: Notify::new(),
            config: Arc::new(config),
            slots,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            accepted_host_key: Arc::default(),
            observer,
        })
    }

    /// Where this transport and its client report.
    pub(super) fn observer(&self) -> &Arc<dyn RdsObserver> {
        &self.observer
    }

    pub fn address(&self) -> String {
        self.config.addr()
    }

    /// The user it logs in as.
    pub fn user(&self) -> &str {
        &self.config.user
    }

    /// Whether any connection is up now (without waiting for a busy slot).
    pub fn is_connected(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.try_lock()
                .map(|s| s.current.as_ref().is_some_and(|c| !c.handle.is_closed()))
                .unwrap_or(true)
        })
    }

    /// How many connections have been made: it changes whenever the RDS may be a different one
    /// (a reboot or an upgrade), so what was learnt about it is learnt again.
    pub fn generation(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// The host key accepted at the last successful handshake; None before one.
    pub fn accepted_host_key(&self) -> Option<AcceptedHostKey> {
        self.accepted_host_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connections made after the first, over the transport's life.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Runs one command on its own channel, finishing by `deadline`.
    pub async fn exec(
        self: &Arc<Self>,
        command: &str,
        deadline: Instant,
    ) -> Result<ExecOutput, TransportError> {
        let started = Instant::now();
        let timeout = |what: &str| TransportError::Timeout {
            what: what.to_string(),
            after: started.elapsed(),
        };
        let _permit = timeout_at(deadline, self.channels.acquire())
            .await
            .map_err(|_| timeout("a free SSH channel"))?
            .map_err(|_| TransportError::ConnectionLost("transport closed".into()))?;
        self.observer.channel_opened();
        let this = Arc::clone(self);
        let _in_flight = scopeguard(move || {
            this.observer.channel_closed();
            this.channel_done.notify_waiters();
        });
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let conn = self.connection(slot, deadline).await?;
        let in_use = conn.begin();

        let mut refusals = 0;
        let mut channel = loop {
            match timeout_at(deadline, self.open_channel(&conn)).await {
                Err(_) => {
                    self.check_liveness_later(slot, &conn);
                    return Err(timeout("opening an SSH channel"));
                }
                Ok(Ok(channel)) => break channel,
                Ok(Err(OpenFailure::Stalled)) => {
                    drop(in_use);
                    self.discard(slot, &conn).await;
                    return Err(TransportError::ConnectionLost(
                        "the RDS left an SSH channel open unanswered while others were pending"
                            .into(),
                    ));
                }
                // The RDS allows fewer channels than are in use: wait for one to be done.
                Ok(Err(OpenFailure::Refused(_)))
                    if !conn.handle.is_closed() && self.others_in_flight() =>
                {
                    refusals += 1;
                    let pause = backoff(
                        Duration::from_millis(10),
                        Duration::from_millis(200),
                        refusals,
                    );
                    if Instant::now() + pause >= deadline {
                        return Err(timeout("a channel the RDS would accept"));
                    }
                    let _ = tokio::time::timeout(pause, self.channel_done.notified()).await;
                }
                Ok(Err(OpenFailure::Refused(e))) => {
                    return Err(self.channel_failed(slot, &conn, e).await)
                }
            }
        };
        let run = async {
            channel
                .exec(true, command)
                .await
                .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
            read_reply(&mut channel).await
        };
        match timeout_at(deadline, run).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e @ TransportError::OutputTooLarge { .. })) => {
                // Only this channel is at fault: the connection carries on for the others.
                let _ = tokio::time::timeout(Duration::from_secs(1), channel.close()).await;
                Err(e)
            }
            Ok(Err(e)) => {
                drop(in_use);
                self.replace(slot, &conn).await;
                Err(e)
            }
            Err(_) => {
                // The command hangs. Give up on its channel; if the whole connection is wedged,
                // the liveness check replaces it.
                let _ = tokio::time::timeout(Duration::from_secs(1), channel.close()).await;
                self.check_liveness_later(slot, &conn);
                Err(timeout("the command's reply"))
            }
        }
    }

    /// Opens `n` session channels at once on one connection, past the open window, and closes
    /// them again: how many the RDS accepted, refused, and left unanswered by `deadline`. Only
    /// `rds-csi validate` does this, to learn the RDS's session limits.
    pub async fn channel_burst(
        self: &Arc<Self>,
        n: usize,
        deadline: Instant,
    ) -> Result<ChannelBurst, TransportError> {
        let conn = self.connection(0, deadline).await?;
        let opens = (0..n).map(|_| timeout_at(deadline, conn.handle.channel_open_session()));
        let mut burst = ChannelBurst::default();
        for result in futures_util::future::join_all(opens).await {
            match result {
                Ok(Ok(channel)) => {
                    burst.accepted += 1;
                    let _ = tokio::time::timeout(Duration::from_secs(1), channel.close()).await;
                }
                Ok(Err(_)) => burst.refused += 1,
                Err(_) => burst.unanswered += 1,
            }
        }
        if burst.unanswered > 0 {
            // Opens left pending may wedge the connection: start afresh.
            self.discard(0, &conn).await;
        }
        Ok(burst)
    }

    /// Opens a session channel within the open window. An open sent beside others that the
    /// RDS leaves unanswered is a stall: the window narrows to one for good and the connection,
    /// which may be wedged, is replaced (the caller retries on a new one).
    async fn open_channel(
        &self,
        conn: &Connection,
    ) -> Result<russh::Channel<client::Msg>, OpenFailure> {
        let ticket = self.opens.enter().await;
        if !ticket.beside_others() {
            let opened = conn.handle.channel_open_session().await;
            ticket.answered();
            return opened.map_err(OpenFailure::Refused);
        }
        match tokio::time::timeout(open_window::STALL, conn.handle.channel_open_session()).await {
            Ok(opened) => {
                ticket.answered();
                opened.map_err(OpenFailure::Refused)
            }
            Err(_) => {
                ticket.stalled();
                Err(OpenFailure::Stalled)
            }
        }
    }

    /// Whether commands other than the caller's hold channels now.
    fn others_in_flight(&self) -> bool {
        self.config.max_channels.max(1) - self.channels.available_permits() > 1
    }

    async fn channel_failed(
        &self,
        slot: usize,
        conn: &Arc<Connection>,
        e: russh::Error,
    ) -> TransportError {
        if conn.handle.is_closed() {
            self.discard(slot, conn).await;
            TransportError::ConnectionLost(e.to_string())
        } else {
            // The server refused one more channel (too many open); the connection is fine.
            TransportError::ConnectionLost(format!("the RDS refused a new SSH channel: {e}"))
        }
    }

    /// Drops `conn` from its slot (if still current) so the next command reconnects.
    async fn discard(&self, slot: usize, conn: &Arc<Connection>) {
        let mut state = self.slots[slot].lock().await;
        if state.current.as_ref().is_some_and(|c| c.id == conn.id) {
            tracing::warn!(rds = %self.config.addr(), "SSH connection lost; will reconnect");
            state.current = None;
        }
        drop(state);
        let _ = conn
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    /// After a command timed out, probe the connection with a short deadline; a connection that
    /// cannot answer even that is replaced.
    fn check_liveness_later(self: &Arc<Self>, slot: usize, conn: &Arc<Connection>) {
        let this = Arc::clone(self);
        let conn = Arc::clone(conn);
        tokio::spawn(async move {
            // The probe is one more channel: it waits its turn like any command. If no channel
            // frees up, commands are still running and will say for themselves.
            let turn = Instant::now() + Duration::from_secs(5);
            let Ok(Ok(_permit)) = timeout_at(turn, this.channels.acquire()).await else {
                return;
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            let alive = async {
                let mut ch = this.open_channel(&conn).await.ok()?;
                ch.exec(true, LIVENESS_COMMAND).await.ok()?;
                while let Some(msg) = ch.wait().await {
                    if let ChannelMsg::ExitStatus { .. } = msg {
                        return Some(());
                    }
                }
                None
            };
            if timeout_at(deadline, alive).await.ok().flatten().is_none() {
                this.replace(slot, &conn).await;
            }
        });
    }

    /// Takes a connection that failed out of service. One that other commands still use is
    /// retired, not cut: cutting it would lose their replies (a `copy-from` then looks lost).
    async fn replace(&self, slot: usize, conn: &Arc<Connection>) {
        if conn.in_flight() == 0 || conn.handle.is_closed() {
            self.discard(slot, conn).await;
            return;
        }
        let mut state = self.slots[slot].lock().await;
        if state.current.as_ref().is_some_and(|c| c.id == conn.id) {
            tracing::warn!(rds = %self.config.addr(), in_flight = conn.in_flight(),
                "SSH connection does not answer; new commands use a new one, and it closes when its commands end");
            state.current = None;
        }
        drop(state);
        conn.retire();
    }

    /// The slot's live connection, connecting (with backoff after failures) when there is none.
    async fn connection(
        &self,
        slot: usize,
        deadline: Instant,
    ) -> Result<Arc<Connection>, TransportError> {
        let started = Instant::now();
        let mut state = timeout_at(deadline, self.slots[slot].lock())
            .await
            .map_err(|_| TransportError::Timeout {
                what: "the SSH connection to be established".into(),
                after: started.elapsed(),
            })?;
        if let Some(conn) = &state.current {
            if !conn.handle.is_closed() {
                return Ok(Arc::clone(conn));
            }
            state.current = None;
        }
        if let Some(retry_at) = state.retry_at {
            if retry_at > deadline {
                return Err(state.last_error.clone().unwrap_or_else(|| {
                    TransportError::ConnectionLost("waiting to reconnect".into())
                }));
            }
            tokio::time::sleep_until(retry_at).await;
        }
        let connect_deadline = deadline.min(Instant::now() + self.config.connect_timeout);
        match self.connect(connect_deadline).await {
            Ok(handle) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                if id > 0 {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(rds = %self.config.addr(), connection = id, "SSH connected");
                let conn = Arc::new(Connection::new(handle, id));
                *state = SlotState {
                    current: Some(Arc::clone(&conn)),
                    ..Default::default()
                };
                Ok(conn)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                let delay = backoff(
                    self.config.backoff_initial,
                    self.config.backoff_max,
                    state.failures,
                );
                state.retry_at = e.is_retryable().then(|| Instant::now() + delay);
                state.last_error = Some(e.clone());
                // The caller's retry or its error reports it; a warning here would say it twice.
                tracing::info!(rds = %self.config.addr(), error = %e, retry_in = ?delay, "SSH connect failed");
                Err(e)
            }
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<client::Handle<Handler>, TransportError> {
        let addr = self.config.addr();
        let started = Instant::now();
        let rejection: Rejection = Arc::default();
        let handler = Handler {
            config: Arc::clone(&self.config),
            rejection: Arc::clone(&rejection),
            accepted: Arc::clone(&self.accepted_host_key),
        };
        let ssh_config = Arc::new(client::Config {
            // No keepalive@openssh.com: RouterOS does not answer it.
            keepalive_interval: None,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let attempt = async {
            let mut handle = client::connect(
                ssh_config,
                (self.config.host.as_str(), self.config.port),
                handler,
            )
            .await
            .map_err(|e| {
                rejection
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_else(|| TransportError::Connect {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })
            })?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| TransportError::Connect {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?
                .flatten();
            let auth = handle
                .authenticate_publickey(
                    self.config.user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::clone(&self.config.key), hash),
                )
                .await
                .map_err(|e| TransportError::Connect {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            if !auth.success() {
                return Err(TransportError::AuthRejected {
                    user: self.config.user.clone(),
                    addr: addr.clone(),
                });
            }
            Ok(handle)
        };
        timeout_at(deadline, attempt)
            .await
            .map_err(|_| TransportError::Timeout {
                what: format!("SSH connect, handshake and login to {addr}"),
                after: started.elapsed(),
            })?
    }
}

/// Runs `f` when dropped, so a gauge goes back down however the command ends.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Exponential backoff with jitter: the n-th consecutive failure waits between half and all of
/// `initial * 2^(n-1)`, capped at `max`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let ceiling = exp.min(max);
    let floor = ceiling / 2;
    let jitter = rand::random_range(0..=ceiling.saturating_sub(floor).as_millis() as u64);
    floor + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            let first = backoff(i, m, 1);
            assert!(
                first >= Duration::from_millis(50) && first <= i,
                "{first:?}"
            );
            let third = backoff(i, m, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let capped = backoff(i, m, 40);
            assert!(
                capped >= Duration::from_secs(1) && capped <= m,
                "{capped:?}"
            );
        }
    }
}
