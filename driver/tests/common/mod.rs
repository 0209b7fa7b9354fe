//! Shared by the driver's integration tests: an embedded mock-rds and an RDS client for it.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod controller;
#[macro_use]
pub mod loop_host;

use std::path::Path;
use std::time::Duration;

use mock_rds::{Auth, Config, MockRds};
use rds_csi::rds::{HostKeyPolicy, RdsClient, RetryPolicy, SshConfig, Transport};
use russh::keys::{Algorithm, PrivateKey, PublicKey};

pub fn new_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

/// mock-rds on 127.0.0.1:0 that accepts only `client_key`, with its state in `state_dir`.
pub async fn start_mock(client_key: &PublicKey, state_dir: Option<&Path>) -> MockRds {
    MockRds::start(Config {
        state_dir: state_dir.map(Path::to_path_buf),
        auth: Auth::AuthorizedKeys(vec![client_key.clone()]),
        ..Config::default()
    })
    .await
    .unwrap()
}

/// The mock's own host key, pinned.
pub fn pinned(mock: &MockRds) -> HostKeyPolicy {
    let blob = mock
        .host_public_key_openssh()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    HostKeyPolicy::Pinned(vec![russh::keys::parse_public_key_base64(&blob).unwrap()])
}

/// Retries and attempts short enough for tests that inject hangs and drops.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(2),
    }
}

/// A client of `mock` with fast reconnects.
pub fn client_for(
    mock: &MockRds,
    key: PrivateKey,
    policy: HostKeyPolicy,
    retry: RetryPolicy,
) -> RdsClient {
    let addr = mock.addr();
    let mut config = SshConfig::new(addr.ip().to_string(), addr.port(), "admin", key, policy);
    config.connect_timeout = Duration::from_secs(5);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    RdsClient::new(Transport::new(config), retry)
}
