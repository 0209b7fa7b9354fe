//! The SSH transport (russh): exec requests, one command per channel, answers on stdout followed
//! by exit-status, EOF and close; a shell request gets the console (`crate::console`). Also where connection-level faults happen (refuse, stall,
//! drop), since they act on the TCP socket rather than on a command.

use std::collections::{HashMap, HashSet};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PublicKey;
use russh::server::{Auth as SshAuth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::engine::{Effect, Ending, Engine};
use crate::fault::{Action, Disposition};
use crate::profile::{Profile, Variant, OPEN_DELAY, SESSION_LIMIT};
use crate::Auth;

struct Conns {
    /// A duplicate of each live socket, so it can be shut down from outside its task.
    live: HashMap<u64, std::net::TcpStream>,
    stopped: bool,
}

pub(crate) struct Shared {
    pub engine: Arc<Engine>,
    pub auth: Auth,
    conns: Mutex<Conns>,
    next_conn: AtomicU64,
    /// Session channels accepted and not yet closed, by connection (`sessions-cap`).
    open_channels: Mutex<HashSet<(u64, ChannelId)>>,
    /// Channel opens not yet answered (`sessions-serial-open`).
    pending_opens: AtomicUsize,
    /// Serves channel opens one at a time (`sessions-serial-open`).
    open_gate: tokio::sync::Mutex<()>,
    /// The one RouterOS CLI (`cli-lock`).
    cli: tokio::sync::Mutex<()>,
}

impl Shared {
    pub fn new(engine: Arc<Engine>, auth: Auth) -> Shared {
        Shared {
            engine,
            auth,
            conns: Mutex::new(Conns {
                live: HashMap::new(),
                stopped: false,
            }),
            next_conn: AtomicU64::new(1),
            open_channels: Mutex::new(HashSet::new()),
            pending_opens: AtomicUsize::new(0),
            open_gate: tokio::sync::Mutex::new(()),
            cli: tokio::sync::Mutex::new(()),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks a new socket; `None` once the server is stopping.
    fn register(&self, sock: TcpStream) -> std::io::Result<Option<(TcpStream, u64)>> {
        let std_sock = sock.into_std()?;
        let dup = std_sock.try_clone()?;
        let sock = TcpStream::from_std(std_sock)?;
        let mut c = self.conns();
        if c.stopped {
            let _ = dup.shutdown(Shutdown::Both);
            return Ok(None);
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        c.live.insert(id, dup);
        Ok(Some((sock, id)))
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, ChannelId)>> {
        self.open_channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unregister(&self, id: u64) {
        self.conns().live.remove(&id);
    }

    fn alive(&self, id: u64) -> bool {
        self.conns().live.contains_key(&id)
    }

    /// Cuts one connection at the TCP level: the client sees the connection close with no SSH
    /// disconnect message, like a network failure or an RDS reboot.
    fn kill(&self, id: u64) {
        if let Some(s) = self.conns().live.remove(&id) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn kill_all(&self) {
        for (_, s) in self.conns().live.drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn kill_all_but(&self, keep: u64) {
        self.conns().live.retain(|id, s| {
            if *id == keep {
                return true;
            }
            let _ = s.shutdown(Shutdown::Both);
            false
        });
    }

    pub fn connection_count(&self) -> usize {
        self.conns().live.len()
    }

    /// Marks the server stopped (no new connections are tracked) and cuts the live ones.
    pub fn stop(&self) {
        self.conns().stopped = true;
        self.kill_all();
    }

    fn allows(&self, key: &PublicKey) -> bool {
        match &self.auth {
            Auth::AnyKey => true,
            Auth::AuthorizedKeys(keys) => keys.iter().any(|k| k.key_data() == key.key_data()),
        }
    }
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let sock = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(e) => {
                    // Usually EMFILE; back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if shared.engine.refuse_connections() {
            tracing::debug!("refusing connection (fault)");
            drop(sock);
            continue;
        }
        let (mut sock, id) = match shared.register(sock) {
            Ok(Some(x)) => x,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "could not track connection");
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let shared = shared.clone();
        if shared.engine.stall_handshake() {
            tracing::debug!(conn = id, "stalling handshake (fault)");
            tokio::spawn(async move {
                // Never send the SSH banner; just drain until the peer or a kill closes it.
                let mut buf = [0u8; 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                shared.unregister(id);
            });
            continue;
        }
        let config = config.clone();
        tokio::spawn(async move {
            let handler = Conn {
                shared: shared.clone(),
                id,
                user: String::new(),
                execs: HashSet::new(),
                ptys: HashSet::new(),
                consoles: HashMap::new(),
                unanswered: Vec::new(),
            };
            match russh::server::run_stream(config, sock, handler).await {
                Ok(session) => {
                    if let Err(e) = session.await {
                        tracing::debug!(conn = id, error = %e, "connection ended");
                    }
                }
                Err(e) => tracing::debug!(conn = id, error = %e, "handshake failed"),
            }
            shared.unregister(id);
            shared.engine.connection_closed(id);
        });
    }
}

/// One SSH connection.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    /// Who logged in, for the console's prompt.
    user: String,
    /// Channels that already had their one exec or shell.
    execs: HashSet<ChannelId>,
    /// Channels with a terminal: their output ends lines with CR LF.
    ptys: HashSet<ChannelId>,
    /// Channels running the console, and where their keystrokes go.
    consoles: HashMap<ChannelId, tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    /// Opens never answered (`sessions-serial-open` overload); rejected when the connection ends.
    unanswered: Vec<russh::server::ChannelOpenHandle>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.channels().retain(|(conn, _)| *conn != id);
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<SshAuth, Self::Error> {
        self.user = user.to_string();
        Ok(match self.shared.auth {
            Auth::AnyKey => SshAuth::Accept,
            Auth::AuthorizedKeys(_) => SshAuth::reject(),
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<SshAuth, Self::Error> {
        Ok(if self.shared.allows(offer.public_key) {
            SshAuth::Accept
        } else {
            SshAuth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<SshAuth, Self::Error> {
        let ok = self.shared.allows(key.public_key);
        tracing::debug!(conn = self.id, user, ok, "publickey auth");
        self.user = user.to_string();
        Ok(if ok {
            SshAuth::Accept
        } else {
            SshAuth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Replies go through the session handle; dropping the receiver just discards stdin.
        let id = channel.id();
        drop(channel);
        let profile = self.shared.engine.profile();
        if profile.has(Variant::SessionsCap) && self.shared.channels().len() >= SESSION_LIMIT {
            tracing::debug!(conn = self.id, "refusing a channel over the session cap");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.shared.channels().insert((self.id, id));
        let one_open = profile.has(Variant::SessionsOneOpen);
        if profile.has(Variant::SessionsSerialOpen) || one_open {
            let limit = if one_open { 1 } else { SESSION_LIMIT };
            if self.shared.pending_opens.load(Ordering::Relaxed) >= limit {
                tracing::debug!(
                    conn = self.id,
                    "leaving a channel open unanswered (overload)"
                );
                self.unanswered.push(reply);
                return Ok(());
            }
            self.shared.pending_opens.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _gate = shared.open_gate.lock().await;
                tokio::time::sleep(OPEN_DELAY).await;
                // No longer pending once answered: before the answer leaves, so a client that
                // sends its next open on receiving it never finds this one still counted.
                shared.pending_opens.fetch_sub(1, Ordering::Relaxed);
                reply.accept().await;
            });
            return Ok(());
        }
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.execs.insert(channel) {
            // RouterOS runs one command per channel.
            session.channel_failure(channel)?;
            return Ok(());
        }
        session.channel_success(channel)?;
        let line = String::from_utf8_lossy(data).trim().to_string();
        let handle = session.handle();
        // Run off the connection's task so a slow or hung command does not block the others.
        tokio::spawn(run_command(
            self.shared.clone(),
            self.id,
            handle,
            channel,
            line,
            self.ptys.contains(&channel),
        ));
        Ok(())
    }

    // A terminal changes only line endings (`ssh -t` with a command, and the console).
    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.ptys.insert(channel);
        session.channel_success(channel)?;
        Ok(())
    }

    /// `ssh` without a command: a line-based console running the same commands as exec.
    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.execs.insert(channel) {
            session.channel_failure(channel)?;
            return Ok(());
        }
        session.channel_success(channel)?;
        let (keys, typed) = tokio::sync::mpsc::unbounded_channel();
        self.consoles.insert(channel, keys);
        let user = if self.user.is_empty() {
            "admin"
        } else {
            &self.user
        };
        tokio::spawn(crate::console::run(
            crate::console::Console::new(
                self.shared.clone(),
                self.id,
                session.handle(),
                channel,
                self.ptys.contains(&channel),
                user,
            ),
            typed,
        ));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(keys) = self.consoles.get(&channel) {
            let _ = keys.send(data.to_vec());
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The console ends after the lines it already has.
        self.consoles.remove(&channel);
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.execs.remove(&channel);
        self.ptys.remove(&channel);
        self.consoles.remove(&channel);
        self.shared.channels().remove(&(self.id, channel));
        Ok(())
    }
}

/// What the mock answered to one command: output, exit status (`None` under `exit-none`)
/// and what else it does to the connections.
pub(crate) struct Answer {
    pub output: String,
    pub status: Option<u32>,
    pub effect: Effect,
}

/// Runs `line` as RouterOS would on connection `conn`, faults and profile included, and records
/// it. `None` when no answer is to be sent: the command hangs, or its connection is gone.
pub(crate) async fn answer(shared: &Arc<Shared>, conn: u64, line: &str) -> Option<Answer> {
    let engine = shared.engine.clone();
    let (action, delay) = engine.decide(line);
    // Under `cli-lock` a command holds the one CLI for its whole latency and run.
    let _cli = if engine.profile().has(Variant::CliLock) && !crate::engine::is_mock_command(line) {
        let guard = shared.cli.lock().await;
        tokio::time::sleep(delay + Profile::cli_latency(line)).await;
        Some(guard)
    } else {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        None
    };
    if !shared.alive(conn) {
        // The connection went away (or the server stopped) while we waited: do not run it.
        return None;
    }
    match action {
        Action::Hang => {
            engine.record(line, None, "", Disposition::Hung);
            None
        }
        Action::Fail {
            message,
            exit_status,
        } => {
            let output = if message.is_empty() {
                String::new()
            } else {
                engine.cfg.output.lines(&message)
            };
            engine.record(line, Some(exit_status), &output, Disposition::Failed);
            Some(Answer {
                output,
                status: Some(exit_status),
                effect: Effect::None,
            })
        }
        Action::DropAfterRun => {
            let r = execute(&engine, line, conn).await;
            let disposition = if r.refused {
                Disposition::Refused
            } else {
                Disposition::Dropped
            };
            engine.record(line, Some(r.exit_status), &r.output, disposition);
            shared.kill(conn);
            None
        }
        Action::Run => {
            let r = execute(&engine, line, conn).await;
            match r.ending {
                Ending::Answer => {}
                Ending::Hang => {
                    engine.record(line, None, "", Disposition::Hung);
                    return None;
                }
                Ending::Drop => {
                    engine.record(line, Some(r.exit_status), &r.output, Disposition::Dropped);
                    shared.kill(conn);
                    return None;
                }
            }
            let status = (!r.omit_exit_status).then_some(r.exit_status);
            let disposition = if r.refused {
                Disposition::Refused
            } else {
                Disposition::Answered
            };
            engine.record(line, status, &r.output, disposition);
            Some(Answer {
                output: r.output,
                status,
                effect: r.effect,
            })
        }
    }
}

/// Applies what an answer does beyond its output: `drop-connections` cuts every other
/// connection at once and queues a disconnect behind this one's reply, so the person who asked
/// still sees the command succeed.
pub(crate) async fn apply_effect(
    shared: &Shared,
    conn: u64,
    handle: &russh::server::Handle,
    effect: Effect,
) {
    if effect == Effect::DropConnections {
        shared.kill_all_but(conn);
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                "drop-connections".into(),
                String::new(),
            )
            .await;
    }
}

/// One exec: the answer on the channel, then exit status, EOF and close.
async fn run_command(
    shared: Arc<Shared>,
    conn: u64,
    handle: russh::server::Handle,
    channel: ChannelId,
    line: String,
    pty: bool,
) {
    let Some(answer) = answer(&shared, conn, &line).await else {
        return;
    };
    let output = if pty {
        crate::console::terminal_lines(&answer.output)
    } else {
        answer.output
    };
    reply(&handle, channel, output, answer.status).await;
    shared.channels().remove(&(conn, channel));
    apply_effect(&shared, conn, &handle, answer.effect).await;
}

/// Runs the command on the blocking pool: it may copy backing files and fsync the state.
async fn execute(engine: &Arc<Engine>, line: &str, conn: u64) -> crate::Reply {
    let e = engine.clone();
    let l = line.to_string();
    match tokio::task::spawn_blocking(move || e.execute_on(&l, Some(conn))).await {
        Ok(r) => r,
        Err(err) => {
            tracing::error!(error = %err, "command panicked");
            crate::Reply {
                output: engine.cfg.output.lines("failure: internal error"),
                exit_status: engine.cfg.error_exit_status,
                omit_exit_status: false,
                refused: true,
                effect: Effect::None,
                ending: crate::engine::Ending::Answer,
            }
        }
    }
}

/// Sends the output, the exit status (unless `None`: the `exit-none` variant), EOF and close.
async fn reply(
    handle: &russh::server::Handle,
    channel: ChannelId,
    out: String,
    status: Option<u32>,
) {
    if !out.is_empty() {
        let _ = handle.data(channel, out.into_bytes()).await;
    }
    if let Some(status) = status {
        let _ = handle.exit_status_request(channel, status).await;
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}
