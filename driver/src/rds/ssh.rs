//! SSH transport to one RDS: a supervised russh connection (or a few), many concurrent exec
//! channels over it with a bound, deadlines on everything, and reconnection with exponential
//! backoff and jitter. RouterOS does not support `keepalive@openssh.com`, so russh's keepalive
//! stays off and liveness is probed with a cheap exec instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::error::{ExecOutput, TransportError};

/// How the RDS's host key is verified.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// Accept exactly these keys (from `--rds-host-key`).
    Pinned(Vec<PublicKey>),
    /// Accept the keys recorded for the host in this known_hosts file.
    KnownHosts(PathBuf),
    /// Accept any key. Logged loudly at every connect.
    InsecureSkipVerify,
}

#[derive(Debug, Clone)]
pub struct SshConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: Arc<PrivateKey>,
    pub host_key: HostKeyPolicy,
    /// TCP connect, SSH handshake and authentication together.
    pub connect_timeout: Duration,
    /// Parallel SSH connections to the RDS.
    pub connections: usize,
    /// Exec channels open at once, over all connections.
    pub max_channels: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl SshConfig {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        key: PrivateKey,
        host_key: HostKeyPolicy,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            key: Arc::new(key),
            host_key,
            connect_timeout: Duration::from_secs(10),
            connections: 1,
            max_channels: 8,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Loads a private key file: OpenSSH or PEM (PKCS#1/PKCS#8/SEC1), ed25519, RSA or ECDSA,
/// without a passphrase.
pub fn load_private_key(path: &std::path::Path) -> Result<PrivateKey, TransportError> {
    russh::keys::load_secret_key(path, None)
        .map_err(|e| TransportError::Config(format!("private key {}: {e}", path.display())))
}

/// Loads a pinned host key: one OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`), or
/// a known_hosts style line with a leading host field.
pub fn load_host_key(path: &std::path::Path) -> Result<PublicKey, TransportError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TransportError::Config(format!("host key {}: {e}", path.display())))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| {
            TransportError::Config(format!("host key {}: no key in the file", path.display()))
        })?;
    let words: Vec<&str> = line.split_whitespace().collect();
    // The key blob follows the algorithm name, wherever that is on the line.
    words
        .windows(2)
        .find(|w| {
            w[0].starts_with("ssh-") || w[0].starts_with("ecdsa-") || w[0].starts_with("rsa-")
        })
        .and_then(|w| russh::keys::parse_public_key_base64(w[1]).ok())
        .ok_or_else(|| {
            TransportError::Config(format!(
                "host key {}: expected an OpenSSH public key line such as `ssh-ed25519 AAAA...`",
                path.display()
            ))
        })
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Why the handler rejected a host key, kept so the connect error can say it plainly.
type Rejection = Arc<StdMutex<Option<TransportError>>>;

struct Handler {
    config: Arc<SshConfig>,
    rejection: Rejection,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let addr = self.config.addr();
        let PublicKeyOrCertificate::PublicKey {
            key: server_key, ..
        } = server_key
        else {
            *self.rejection.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(TransportError::Config(format!(
                    "{addr} offered a host certificate; pin a plain host key"
                )));
            return Ok(false);
        };
        let actual = fingerprint(server_key);
        let verdict = match &self.config.host_key {
            HostKeyPolicy::InsecureSkipVerify => {
                tracing::warn!(
                    rds = %addr,
                    host_key = %actual,
                    "INSECURE: accepting the RDS SSH host key without verification \
                     (--rds-insecure-skip-verify); pin it with --rds-host-key"
                );
                Ok(())
            }
            HostKeyPolicy::Pinned(keys) => {
                if keys.iter().any(|k| k.key_data() == server_key.key_data()) {
                    Ok(())
                } else {
                    Err(TransportError::HostKeyMismatch {
                        addr,
                        expected: keys
                            .iter()
                            .map(fingerprint)
                            .collect::<Vec<_>>()
                            .join(" or "),
                        actual,
                    })
                }
            }
            HostKeyPolicy::KnownHosts(path) => {
                match russh::keys::known_hosts::known_host_keys_path(
                    &self.config.host,
                    self.config.port,
                    path,
                ) {
                    Ok(known)
                        if known
                            .iter()
                            .any(|(_, k)| k.key_data() == server_key.key_data()) =>
                    {
                        Ok(())
                    }
                    Ok(known) if known.is_empty() => Err(TransportError::HostKeyUnknown {
                        addr,
                        actual,
                        source_name: path.display().to_string(),
                    }),
                    Ok(known) => Err(TransportError::HostKeyMismatch {
                        addr,
                        expected: known
                            .iter()
                            .map(|(_, k)| fingerprint(k))
                            .collect::<Vec<_>>()
                            .join(" or "),
                        actual,
                    }),
                    Err(e) => Err(TransportError::Config(format!(
                        "known_hosts {}: {e}",
                        path.display()
                    ))),
                }
            }
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::error!(error = %e, "refusing the RDS");
                *self.rejection.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

struct Connection {
    handle: client::Handle<Handler>,
    id: u64,
}

#[derive(Default)]
struct SlotState {
    current: Option<Arc<Connection>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<TransportError>,
}

/// A cheap command to prove a connection still answers.
pub const LIVENESS_COMMAND: &str = "/system identity print";

pub struct Transport {
    config: Arc<SshConfig>,
    slots: Vec<Mutex<SlotState>>,
    channels: Semaphore,
    /// One channel open at a time over all connections: RouterOS has been seen to stall when
    /// several opens are pending at once.
    open_gate: Mutex<()>,
    /// Signalled whenever a command's channel is done, for opens the RDS refused for lack of one.
    channel_done: Notify,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    reconnects: AtomicU64,
}

impl Transport {
    pub fn new(config: SshConfig) -> Arc<Self> {
        let slots = (0..config.connections.max(1))
            .map(|_| Mutex::default())
            .collect();
        Arc::new(Self {
            channels: Semaphore::new(config.max_channels.max(1)),
            open_gate: Mutex::new(()),
            channel_done: Notify::new(),
            config: Arc::new(config),
            slots,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        })
    }

    pub fn address(&self) -> String {
        self.config.addr()
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
        let in_flight = crate::metrics::global().ssh_channels_in_flight.clone();
        in_flight.inc();
        let this = Arc::clone(self);
        let _in_flight = scopeguard(move || {
            in_flight.dec();
            this.channel_done.notify_waiters();
        });
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let conn = self.connection(slot, deadline).await?;

        let mut refusals = 0;
        let mut channel = loop {
            match timeout_at(deadline, self.open_channel(&conn)).await {
                Err(_) => {
                    self.check_liveness_later(slot, &conn);
                    return Err(timeout("opening an SSH channel"));
                }
                Ok(Ok(channel)) => break channel,
                // The RDS allows fewer channels than are in use: wait for one to be done.
                Ok(Err(_)) if !conn.handle.is_closed() && self.others_in_flight() => {
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
                Ok(Err(e)) => return Err(self.channel_failed(slot, &conn, e).await),
            }
        };
        let run = async {
            channel
                .exec(true, command)
                .await
                .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
            let mut out = ExecOutput::default();
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let mut closed = false;
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                    ChannelMsg::Close => {
                        closed = true;
                        break;
                    }
                    _ => {}
                }
            }
            if !closed && out.exit_status.is_none() {
                // The connection went away before the command's reply: whether it ran is unknown.
                return Err(TransportError::ConnectionLost(
                    "connection closed before the command's reply".into(),
                ));
            }
            out.stdout = String::from_utf8_lossy(&stdout).into_owned();
            out.stderr = String::from_utf8_lossy(&stderr).into_owned();
            Ok(out)
        };
        match timeout_at(deadline, run).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => {
                self.discard(slot, &conn).await;
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

    /// Opens a session channel through the gate, so no two opens are ever pending together.
    async fn open_channel(
        &self,
        conn: &Connection,
    ) -> Result<russh::Channel<client::Msg>, russh::Error> {
        let _gate = self.open_gate.lock().await;
        conn.handle.channel_open_session().await
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
                this.discard(slot, &conn).await;
            }
        });
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
                let conn = Arc::new(Connection { handle, id });
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
                tracing::warn!(rds = %self.config.addr(), error = %e, retry_in = ?delay, "SSH connect failed");
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
