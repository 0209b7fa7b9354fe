//! Storage-side fencing in the soak: which volumes are fenced, what their disks must allow
//! (derived here from the key, independently of the driver's code), and the check of every
//! fenced disk at a quiet point (no call in flight) and at the end.
//!
//! The soak has one node, so a fenced disk allows the "closed" NQN (no node holds the volume) or
//! that node's NQN (it holds it); never any host, never another NQN.

use std::path::Path;
use std::sync::atomic::Ordering;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::model::Hold;
use crate::ops::{vol, Soak, VOLUMES};

/// Whether the volume name `pvc-soak-v{i}` is fenced: every other one (a restore or clone into a
/// fenced name is fenced too, as its StorageClass is).
pub fn fenced(i: usize) -> bool {
    i % 2 == 1
}

/// What a fenced disk may allow, computed from the key as the README specifies it.
pub struct Oracle {
    key: Vec<u8>,
}

impl Oracle {
    /// The key as the driver reads it from `path`: the file's bytes, trailing ASCII whitespace
    /// removed.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)?;
        Ok(Self::new(&bytes))
    }

    pub fn new(bytes: &[u8]) -> Self {
        Self {
            key: bytes.trim_ascii_end().to_vec(),
        }
    }

    /// `nqn.2014-08.org.nvmexpress:uuid:<U>`, U the version-4 UUID of the first 16 bytes of
    /// HMAC-SHA256(key, purpose).
    fn nqn(&self, purpose: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any length");
        mac.update(purpose);
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        format!("nqn.2014-08.org.nvmexpress:uuid:{id}")
    }

    /// What a fenced disk no node holds allows.
    pub fn closed(&self) -> String {
        self.nqn(b"rds-csi fence closed v1")
    }

    /// What a fenced disk that only `node` holds allows.
    pub fn host(&self, node: &str) -> String {
        self.nqn(format!("rds-csi fence host v1\0{node}").as_bytes())
    }
}

/// Checks every volume's disk against what the model knows of its holders: a fenced, exported
/// disk allows exactly what they need when that is known (counted in `fence_checks`), and the
/// closed or the node's NQN when not; one whose create, copy, expand or publish succeeded since
/// the last call that may have unexported it is exported; an unfenced one allows any host.
/// Called with no call in flight.
pub async fn check(soak: &Soak, op: usize) {
    let disks = match soak.env.read().await.mock.disks() {
        Ok(d) => d,
        Err(e) => {
            soak.model.violation(
                op,
                format!("fence check: cannot read the mock's disks: {e:#}"),
            );
            return;
        }
    };
    let closed = soak.oracle.closed();
    let node = soak.oracle.host(e2e::NODE_ID);
    for i in 0..VOLUMES {
        let name = vol(i);
        let Some(disk) = disks.iter().find(|d| d.slot == name) else {
            continue;
        };
        let allowed = disk.allowed_host.as_str();
        if !fenced(i) {
            if !allowed.is_empty() {
                soak.model.violation(
                    op,
                    format!("{name} is not fenced but its disk allows only {allowed}"),
                );
            }
            continue;
        }
        let o = soak.model.get(&name);
        if !disk.exported {
            if o.hold.exported {
                soak.model.violation(
                    op,
                    format!(
                        "fenced {name} is not exported at a quiet point ({:?})",
                        o.hold
                    ),
                );
            }
            continue;
        }
        let Hold {
            closed: may_closed,
            node: may_node,
            ..
        } = o.hold;
        let ok = (may_closed && allowed == closed) || (may_node && allowed == node);
        if may_closed != may_node {
            soak.fence_checks.fetch_add(1, Ordering::Relaxed);
        }
        if ok {
            continue;
        }
        let what = if allowed.is_empty() {
            "any host".to_string()
        } else if allowed == closed {
            "the closed NQN".to_string()
        } else if allowed == node {
            format!("the NQN of {}", e2e::NODE_ID)
        } else {
            // Neither NQN the soak derives: the derivation here and the driver's disagree, or
            // the driver set a host it must never set.
            format!("{allowed}, neither the closed NQN {closed} nor the node's {node}")
        };
        soak.model.violation(
            op,
            format!(
                "fenced {name} allows {what}, the model expects {:?}",
                o.hold
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned from the driver (`FenceKey::closed_host` and `host_identity("e2e-node")` for this
    /// key file, printed by a scratch test in driver/src/fence_key.rs): the soak's derivation is
    /// independent code, and must agree.
    #[test]
    fn the_derivation_agrees_with_the_driver() {
        let oracle = Oracle::new(b"0123456789abcdef0123456789abcdef0123\n");
        assert_eq!(oracle.closed(), CLOSED);
        assert_eq!(oracle.host("e2e-node"), NODE);
        assert_ne!(oracle.host("e2e-node"), oracle.host("other"));
    }

    const CLOSED: &str = "nqn.2014-08.org.nvmexpress:uuid:c850ffd4-3670-4818-ac96-f3131f6bca2c";
    const NODE: &str = "nqn.2014-08.org.nvmexpress:uuid:6092dbce-2d0e-4867-8984-d8b2d53140ac";
}
