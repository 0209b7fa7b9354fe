//! SSH transport to one RDS: a supervised russh connection (or a few), many concurrent exec
//! channels over it with a bound, deadlines on everything, and reconnection with exponential
//! backoff and jitter. RouterOS does not support `keepalive@openssh.com`, so russh's keepalive
//! stays off and liveness is probed with a cheap exec instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::client;
use russh::keys::ssh_key::Fingerprint;
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
    /// Accept the key with this SHA256 fingerprint (from `--rds-host-key SHA256:...`).
    PinnedFingerprint(Fingerprint),
    /// Accept the keys recorded for the host in this known_hosts file.
    KnownHosts(PathBuf),
    /// Accept any key. Logged loudly at every connect.
    InsecureSkipVerify,
}

/// The forms `--rds-host-key` accepts, for error messages.
pub const HOST_KEY_FORMS: &str = "a SHA256 fingerprint (`SHA256:...`, as `ssh-keygen -lf` and \
    mock-rds print it), a public key line (`ssh-ed25519 AAAA... [comment]`), or a file holding \
    one of those (or a known_hosts line)";

/// What `--rds-host-key` names: the pin itself, or a file that holds it. The file is read when
/// the client is built, not when the flag is parsed, so checking a command line opens no file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeySource {
    Fingerprint(Fingerprint),
    Key(PublicKey),
    File(PathBuf),
}

impl HostKeySource {
    /// Tells the three forms apart. A value is taken as a file only if it exists or looks like a
    /// path, so a mistyped fingerprint or key is reported as such, never as a missing file.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.starts_with(FINGERPRINT_PREFIX) {
            return parse_fingerprint(value).map(Self::Fingerprint);
        }
        if value.contains(char::is_whitespace) && value.split_whitespace().any(is_key_algorithm) {
            return parse_key_line(value).map(Self::Key);
        }
        let path = std::path::Path::new(value);
        if !value.is_empty() && (value.contains('/') || path.exists()) {
            return Ok(Self::File(path.to_path_buf()));
        }
        Err(format!("`{value}` is none of: {HOST_KEY_FORMS}"))
    }

    /// The policy this pin stands for, reading the file if it names one.
    pub fn policy(&self) -> Result<HostKeyPolicy, TransportError> {
        match self {
            Self::Fingerprint(f) => Ok(HostKeyPolicy::PinnedFingerprint(*f)),
            Self::Key(k) => Ok(HostKeyPolicy::Pinned(vec![k.clone()])),
            Self::File(path) => load_host_key(path),
        }
    }
}

const FINGERPRINT_PREFIX: &str = "SHA256:";

/// `SHA256:` and the 43 base64 characters of a 32-byte digest, with or without the `=` padding
/// (`ssh-keygen` prints none, some tools add it).
fn parse_fingerprint(value: &str) -> Result<Fingerprint, String> {
    let encoded = value.strip_prefix(FINGERPRINT_PREFIX).unwrap_or(value);
    let digest = encoded.strip_suffix('=').unwrap_or(encoded);
    let well_formed = digest.len() == 43
        && digest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if well_formed {
        if let Ok(fingerprint) = format!("{FINGERPRINT_PREFIX}{digest}").parse() {
            return Ok(fingerprint);
        }
    }
    Err(format!(
        "`{value}` is not a SHA256 fingerprint: expected `SHA256:` and 43 base64 characters \
         (A-Z a-z 0-9 + /), optionally followed by `=`"
    ))
}

fn is_key_algorithm(word: &str) -> bool {
    ["ssh-", "ecdsa-", "rsa-", "sk-"]
        .iter()
        .any(|prefix| word.starts_with(prefix))
}

/// A public key line (`ssh-ed25519 AAAA... [comment]`) or a known_hosts line (a host field
/// first): the key blob follows the algorithm name, wherever that is on the line.
fn parse_key_line(line: &str) -> Result<PublicKey, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| is_key_algorithm(w[0]))
        .and_then(|w| russh::keys::parse_public_key_base64(w[1]).ok())
        .ok_or_else(|| {
            "expected an OpenSSH public key line such as `ssh-ed25519 AAAA...`; \
             its key does not decode"
                .to_string()
        })
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

/// Loads a pinned host key from a file's first line that is not blank or a comment: a SHA256
/// fingerprint, an OpenSSH public key line, or a known_hosts line.
pub fn load_host_key(path: &std::path::Path) -> Result<HostKeyPolicy, TransportError> {
    let invalid =
        |why: String| TransportError::Config(format!("host key file {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| invalid(format!("no key in the file; it must hold {HOST_KEY_FORMS}")))?;
    if line.starts_with(FINGERPRINT_PREFIX) {
        let word = line.split_whitespace().next().unwrap_or(line);
        return parse_fingerprint(word)
            .map(HostKeyPolicy::PinnedFingerprint)
            .map_err(invalid);
    }
    parse_key_line(line)
        .map(|key| HostKeyPolicy::Pinned(vec![key]))
        .map_err(invalid)
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Why the handler rejected a host key, kept so the connect error can say it plainly.
type Rejection = Arc<StdMutex<Option<TransportError>>>;

/// Which pin let the RDS's host key in, so `rds-csi doctor` can say what was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyMatch {
    /// A pinned public key.
    Key,
    /// A pinned SHA256 fingerprint.
    Fingerprint,
    /// A key recorded for the host in this known_hosts file.
    KnownHosts(PathBuf),
    /// Nothing was checked (`--rds-insecure-skip-verify`).
    NotVerified,
}

/// The host key the RDS presented at the last connect, and what accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedHostKey {
    /// `SHA256:...` of the RDS's key.
    pub fingerprint: String,
    pub matched: HostKeyMatch,
}

struct Handler {
    config: Arc<SshConfig>,
    rejection: Rejection,
    accepted: Arc<StdMutex<Option<AcceptedHostKey>>>,
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
                     (--rds-insecure-skip-verify); pin it with --rds-host-key {actual}"
                );
                Ok(HostKeyMatch::NotVerified)
            }
            HostKeyPolicy::Pinned(keys) => {
                if keys.iter().any(|k| k.key_data() == server_key.key_data()) {
                    Ok(HostKeyMatch::Key)
                } else {
                    Err(TransportError::HostKeyMismatch {
                        addr,
                        expected: keys
                            .iter()
                            .map(fingerprint)
                            .collect::<Vec<_>>()
                            .join(" or "),
                        actual: actual.clone(),
                    })
                }
            }
            HostKeyPolicy::PinnedFingerprint(expected) => {
                if server_key.fingerprint(HashAlg::Sha256) == *expected {
                    Ok(HostKeyMatch::Fingerprint)
                } else {
                    Err(TransportError::HostKeyMismatch {
                        addr,
                        expected: expected.to_string(),
                        actual: actual.clone(),
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
                        Ok(HostKeyMatch::KnownHosts(path.clone()))
                    }
                    Ok(known) if known.is_empty() => Err(TransportError::HostKeyUnknown {
                        addr,
                        actual: actual.clone(),
                        source_name: path.display().to_string(),
                    }),
                    Ok(known) => Err(TransportError::HostKeyMismatch {
                        addr,
                        expected: known
                            .iter()
                            .map(|(_, k)| fingerprint(k))
                            .collect::<Vec<_>>()
                            .join(" or "),
                        actual: actual.clone(),
                    }),
                    Err(e) => Err(TransportError::Config(format!(
                        "known_hosts {}: {e}",
                        path.display()
                    ))),
                }
            }
        };
        match verdict {
            Ok(matched) => {
                *self.accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(AcceptedHostKey {
                    fingerprint: actual,
                    matched,
                });
                Ok(true)
            }
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

/// What [`Transport::channel_burst`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelBurst {
    pub accepted: usize,
    pub refused: usize,
    pub unanswered: usize,
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
    accepted_host_key: Arc<StdMutex<Option<AcceptedHostKey>>>,
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
            accepted_host_key: Arc::default(),
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

    /// Opens `n` session channels at once on one connection, past the open gate, and closes
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
    use russh::keys::Algorithm;

    fn new_public_key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn host_key_fingerprint_is_read_with_or_without_padding() {
        let key = new_public_key();
        let printed = fingerprint(&key);
        let expected = HostKeySource::Fingerprint(key.fingerprint(HashAlg::Sha256));
        assert_eq!(HostKeySource::parse(&printed).unwrap(), expected);
        assert_eq!(
            HostKeySource::parse(&format!("{printed}=")).unwrap(),
            expected
        );
        assert_eq!(
            HostKeySource::parse(&format!(" {printed}\n")).unwrap(),
            expected
        );
        for bad in [
            "SHA256:",
            "SHA256:abc",
            &format!("{printed}=="),
            &format!("{printed}x"),
            &format!("SHA256:-{}", &printed[8..]),
        ] {
            let err = HostKeySource::parse(bad).unwrap_err();
            assert!(err.contains("is not a SHA256 fingerprint"), "{bad}: {err}");
        }
    }

    #[test]
    fn host_key_line_is_read_with_or_without_comment() {
        let key = new_public_key();
        let line = key.to_openssh().unwrap();
        let expected = HostKeySource::Key(key.clone());
        assert_eq!(HostKeySource::parse(&line).unwrap(), expected);
        assert_eq!(
            HostKeySource::parse(&format!("{line} root@rds")).unwrap(),
            expected
        );
        let err = HostKeySource::parse("ssh-ed25519 AAAAnotakey").unwrap_err();
        assert!(err.contains("does not decode"), "{err}");
    }

    #[test]
    fn host_key_file_holds_any_of_the_line_forms() {
        let key = new_public_key();
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let source = HostKeySource::parse(path.to_str().unwrap()).unwrap();
            assert_eq!(source, HostKeySource::File(path.clone()));
            source.policy()
        };
        let line = key.to_openssh().unwrap();
        let Ok(HostKeyPolicy::Pinned(keys)) = file("key.pub", format!("# RDS\n{line} c\n")) else {
            panic!("a key line pins the key")
        };
        assert_eq!(keys, std::slice::from_ref(&key));
        let Ok(HostKeyPolicy::Pinned(keys)) = file("known", format!("[10.0.0.1]:22 {line}\n"))
        else {
            panic!("a known_hosts line pins its key")
        };
        assert_eq!(keys, std::slice::from_ref(&key));
        let Ok(HostKeyPolicy::PinnedFingerprint(f)) =
            file("fp", format!("{}=\n", fingerprint(&key)))
        else {
            panic!("a fingerprint line pins the fingerprint")
        };
        assert_eq!(f, key.fingerprint(HashAlg::Sha256));
        let err = file("empty", "# nothing\n".into()).unwrap_err().to_string();
        assert!(
            err.contains("no key in the file") && err.contains("SHA256"),
            "{err}"
        );
        let err = file("junk", "hello\n".into()).unwrap_err().to_string();
        assert!(
            err.contains("host key file") && err.contains("ssh-ed25519"),
            "{err}"
        );
    }

    #[test]
    fn host_key_value_of_no_form_names_the_three_forms() {
        for bad in [
            "",
            "AAAAC3NzaC1lZDI1NTE5",
            "MD5:16:27:ac:a5",
            "no-such-file.pub",
        ] {
            let err = HostKeySource::parse(bad).unwrap_err();
            assert!(
                err.contains("SHA256:") && err.contains("public key line") && err.contains("file"),
                "{bad}: {err}"
            );
            assert!(!err.contains("No such file"), "{bad}: {err}");
        }
        // A path is a path: that it is missing is reported when it is read.
        let missing = HostKeySource::parse("/nonexistent/host_key.pub").unwrap();
        let err = missing.policy().unwrap_err().to_string();
        assert!(
            err.contains("host key file /nonexistent/host_key.pub"),
            "{err}"
        );
    }

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
