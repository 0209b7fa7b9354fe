//! The per-cluster secret behind storage-side fencing.
//!
//! A fenced disk lets in one host NQN: the publishing node's, or, while no node holds the volume,
//! a "closed" NQN no node connects with. Both are derived with HMAC-SHA256 from a key that the
//! controller and every node read from the driver's Secret, so a host on the storage network that
//! knows node names and this code still cannot compute either. The derivation depends on the key
//! and the node name only: a node rebuilt under the same name gets the same identity.

use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Fewer bytes than this are refused: the key must not be guessable.
pub const MIN_KEY_BYTES: usize = 32;

/// The key, as read from the Secret (trailing whitespace, such as a newline, removed: every
/// reader applies the same rule). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct FenceKey(Arc<[u8]>);

impl std::fmt::Debug for FenceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FenceKey(<redacted>)")
    }
}

/// What a node connects a fenced volume with: its host NQN and host ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    pub nqn: String,
    pub host_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FenceKeyError {
    #[error("fence key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "fence key{at}: {len} bytes, at least {MIN_KEY_BYTES} are needed (make one with \
         `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort { at: String, len: usize },
}

impl FenceKey {
    pub fn new(bytes: &[u8]) -> Result<Self, FenceKeyError> {
        Self::checked(bytes.trim_ascii_end(), String::new())
    }

    pub fn from_file(path: &Path) -> Result<Self, FenceKeyError> {
        let bytes = std::fs::read(path).map_err(|source| FenceKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::checked(bytes.trim_ascii_end(), format!(" file {}", path.display()))
    }

    fn checked(bytes: &[u8], at: String) -> Result<Self, FenceKeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(FenceKeyError::TooShort {
                at,
                len: bytes.len(),
            });
        }
        Ok(Self(bytes.into()))
    }

    /// A UUID (version 4 bits set) from the HMAC of `purpose`, domain-separated per use.
    fn derive(&self, purpose: &[u8]) -> uuid::Uuid {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(purpose);
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// The identity `node_id` connects fenced volumes with.
    pub fn host_identity(&self, node_id: &str) -> HostIdentity {
        let id = self.derive(format!("rds-csi fence host v1\0{node_id}").as_bytes());
        HostIdentity {
            nqn: format!("nqn.2014-08.org.nvmexpress:uuid:{id}"),
            host_id: id.to_string(),
        }
    }

    /// What a fenced disk that no node holds allows: an NQN no host is given.
    pub fn closed_host(&self) -> String {
        let id = self.derive(b"rds-csi fence closed v1");
        format!("nqn.2014-08.org.nvmexpress:uuid:{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn identities_depend_on_the_key_and_the_node_only() {
        let key = FenceKey::new(KEY).unwrap();
        let a = key.host_identity("node-a");
        assert_eq!(a, FenceKey::new(KEY).unwrap().host_identity("node-a"));
        assert!(a.nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        assert!(a.nqn.ends_with(&a.host_id));
        assert_eq!(
            uuid::Uuid::parse_str(&a.host_id).unwrap().get_version_num(),
            4
        );
        assert_ne!(a, key.host_identity("node-b"));
        let other = FenceKey::new(b"another key of thirty-two bytes!").unwrap();
        assert_ne!(a, other.host_identity("node-a"));
        assert_ne!(key.closed_host(), other.closed_host());
        assert_ne!(key.closed_host(), a.nqn);
        // Pinned: a change here changes every fenced volume's identity in a cluster (the
        // soak's own derivation checks the same values).
        let pinned = FenceKey::new(b"0123456789abcdef0123456789abcdef0123\n").unwrap();
        assert_eq!(
            pinned.closed_host(),
            "nqn.2014-08.org.nvmexpress:uuid:c850ffd4-3670-4818-ac96-f3131f6bca2c"
        );
        assert_eq!(
            pinned.host_identity("e2e-node").nqn,
            "nqn.2014-08.org.nvmexpress:uuid:6092dbce-2d0e-4867-8984-d8b2d53140ac"
        );
    }

    #[test]
    fn short_keys_are_refused_and_whitespace_is_not_key() {
        assert!(matches!(
            FenceKey::new(b"short"),
            Err(FenceKeyError::TooShort { len: 5, .. })
        ));
        assert!(FenceKey::new(&[b' '; 40]).is_err());
        let padded = [KEY, b" \r\n"].concat();
        assert_eq!(FenceKey::new(&padded).unwrap(), FenceKey::new(KEY).unwrap());
        assert_ne!(
            FenceKey::new(&[b" ", KEY].concat()).unwrap(),
            FenceKey::new(KEY).unwrap(),
            "only the end is trimmed"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = FenceKey::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::write(dir.path().join("k"), "tiny\n").unwrap();
        let err = FenceKey::from_file(&dir.path().join("k")).unwrap_err();
        assert!(err.to_string().contains("k: 4 bytes"), "{err}");
        // Logged configurations show that a key is set, never its bytes.
        assert_eq!(
            format!("{:?}", FenceKey::new(KEY).unwrap()),
            "FenceKey(<redacted>)"
        );
    }
}
