//! What to connect to and how to trust it: the SSH settings for one RDS, the host-key pin
//! (`--rds-host-key` in its three forms, or known_hosts) and the russh handler that checks the
//! RDS's key against it at every handshake.

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::client;
use russh::keys::ssh_key::Fingerprint;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::{HashAlg, PrivateKey, PublicKey};

use super::error::TransportError;

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

    pub(super) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Loads a private key file: OpenSSH or PEM (PKCS#1/PKCS#8/SEC1), ed25519, RSA or ECDSA,
/// without a passphrase.
pub fn load_private_key(path: &std::path::Path) -> Result<PrivateKey, TransportError> {
    russh::keys::load_secret_key(path, None).map_err(|e| {
        // The commonest mistake, `id_ed25519.pub` for `id_ed25519`, is named as such.
        let public = std::fs::read_to_string(path).is_ok_and(|text| {
            let text = text.trim_start();
            text.starts_with("ssh-")
                || text.starts_with("ecdsa-")
                || text.starts_with("-----BEGIN PUBLIC KEY")
                || text.starts_with("---- BEGIN SSH2 PUBLIC KEY")
        });
        if public {
            TransportError::Config(format!(
                "--rds-key-file {} holds a public key; give the private key (the file without \
                 `.pub`), whose public half is authorised for the RouterOS user",
                path.display()
            ))
        } else {
            TransportError::Config(format!("private key {}: {e}", path.display()))
        }
    })
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
pub(super) type Rejection = Arc<StdMutex<Option<TransportError>>>;

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

pub(super) struct Handler {
    pub(super) config: Arc<SshConfig>,
    pub(super) rejection: Rejection,
    pub(super) accepted: Arc<StdMutex<Option<AcceptedHostKey>>>,
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
}
