//! A small russh client for the tests (the driver's client is a separate, independent crate).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mock_rds::{Config, MockRds};
use russh::client;
use russh::keys::{
    Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh::ChannelMsg;

pub struct Checker {
    expected: Option<PublicKey>,
}

impl Checker {
    /// Accepts any host key.
    pub fn default_any() -> Checker {
        Checker { expected: None }
    }
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match (&self.expected, key) {
            (None, _) => true,
            (Some(want), PublicKeyOrCertificate::PublicKey { key, .. }) => {
                want.key_data() == key.key_data()
            }
            _ => false,
        })
    }
}

pub struct Client {
    handle: client::Handle<Checker>,
}

/// What one command answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub exit: Option<u32>,
}

pub fn new_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        ..Default::default()
    })
}

impl Client {
    /// Connects and authenticates with `key` (a fresh key when `None`), checking the host key
    /// when `host` is given.
    pub async fn connect_with(
        addr: SocketAddr,
        key: Option<PrivateKey>,
        host: Option<PublicKey>,
    ) -> anyhow::Result<Client> {
        let mut handle = client::connect(client_config(), addr, Checker { expected: host }).await?;
        let key = key.unwrap_or_else(new_key);
        let res = handle
            .authenticate_publickey("admin", PrivateKeyWithHashAlg::new(Arc::new(key), None))
            .await?;
        anyhow::ensure!(res.success(), "authentication failed");
        Ok(Client { handle })
    }

    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        Self::connect_with(addr, None, None).await
    }

    /// Runs one command on a new channel and collects stdout and the exit status until the
    /// server closes the channel.
    pub async fn run(&self, cmd: &str) -> anyhow::Result<Output> {
        let mut ch = self.handle.channel_open_session().await?;
        ch.exec(true, cmd).await?;
        let mut out = Output::default();
        let mut bytes = Vec::new();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => bytes.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.exit = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        out.stdout = String::from_utf8(bytes).context("stdout is not UTF-8")?;
        Ok(out)
    }

    /// Runs a command that must succeed silently or print something, with exit 0.
    pub async fn ok(&self, cmd: &str) -> String {
        let out = self.run(cmd).await.unwrap();
        assert_eq!(out.exit, Some(0), "{cmd}: {out:?}");
        assert!(
            !out.stdout.contains("failure:"),
            "{cmd}: unexpected failure: {out:?}"
        );
        out.stdout
    }

    pub fn handle(&self) -> &client::Handle<Checker> {
        &self.handle
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }
}

pub async fn start() -> MockRds {
    MockRds::start(Config::default()).await.unwrap()
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> MockRds {
    let mut c = Config::default();
    f(&mut c);
    MockRds::start(c).await.unwrap()
}

/// Polls `cond` until it holds or `timeout` passes (no fixed sleeps as synchronisation).
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub const PVC: &str = "pvc-0f923194-922a-5dd8-b376-c2c6ccb56dd8";

/// The exact command line the driver sends for CreateVolume (every value quoted).
pub fn add_cmd(slot: &str, size: &str) -> String {
    format!(
        "/disk add type=file file-path=\"/storage-pool/metal-csi/{slot}.img\" file-size={size} \
         slot=\"{slot}\" nvme-tcp-export=yes nvme-tcp-server-port=4420 \
         nvme-tcp-server-nqn=\"nqn.2000-02.com.mikrotik:{slot}\""
    )
}
