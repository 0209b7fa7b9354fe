//! Helpers shared by the gRPC services: deadlines from the caller, per-key operation locks, and
//! the mapping of RDS errors to gRPC status codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Status};

use crate::rds::{RdsError, TransportError};

/// Used when the caller sent no deadline: long enough for a slow `/disk add` of a large file.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The longest deadline a caller may ask for; longer ones are cut to it.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// The most taken off a caller's deadline to leave time for the reply; see [`deadline`].
pub const MAX_REPLY_MARGIN: Duration = Duration::from_secs(1);

/// When the work must end: a tenth (at most [`MAX_REPLY_MARGIN`]) before the caller's deadline
/// (`grpc-timeout` header), or the default when the caller sent none; never past
/// [`MAX_DEADLINE`]. Work ending at the caller's own deadline races it: a retry or a reconnect
/// due just before it leaves the precise error unsent, and the caller sees only its timeout.
pub fn deadline<T>(request: &Request<T>) -> Instant {
    let timeout = match request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    {
        Some(timeout) => {
            let timeout = timeout.min(MAX_DEADLINE);
            timeout - (timeout / 10).min(MAX_REPLY_MARGIN)
        }
        None => DEFAULT_DEADLINE,
    };
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or(now + MAX_DEADLINE)
}

/// `grpc-timeout` is at most 8 digits followed by a unit: H, M, S, m (ms), u (µs), n (ns).
/// Longer values break the spec and are ignored rather than trusted.
fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Maps an RDS failure to the gRPC code a CO acts on correctly.
pub fn rds_status(e: RdsError) -> Status {
    let message = e.to_string();
    match e {
        RdsError::Invalid(_) => Status::invalid_argument(message),
        RdsError::NotFound(_) => Status::not_found(message),
        RdsError::AlreadyExists(_) => Status::already_exists(message),
        RdsError::OutOfSpace(_) => Status::resource_exhausted(message),
        RdsError::Transport(TransportError::HostKeyMismatch { .. })
        | RdsError::Transport(TransportError::HostKeyUnknown { .. })
        | RdsError::Transport(TransportError::AuthRejected { .. })
        | RdsError::Transport(TransportError::Config(_)) => Status::failed_precondition(message),
        RdsError::Transport(TransportError::OutputTooLarge { .. }) => Status::internal(message),
        RdsError::Transport(_) | RdsError::Busy(_) => Status::unavailable(message),
        RdsError::Interrupted(_) => Status::aborted(message),
        RdsError::InvalidArgument(_) | RdsError::Failed { .. } | RdsError::Parse(_) => {
            Status::internal(message)
        }
    }
}

/// One lock per key (volume or snapshot ID). Operations on different keys run in parallel; on
/// the same key they queue, up to the caller's deadline.
#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

pub struct KeyGuard {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str, deadline: Instant) -> Result<KeyGuard, Status> {
        let mutex = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, weak| weak.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        match tokio::time::timeout_at(deadline, mutex.lock_owned()).await {
            Ok(guard) => Ok(KeyGuard { _guard: guard }),
            Err(_) => Err(Status::aborted(format!(
                "another operation on {key} is still in progress"
            ))),
        }
    }

    /// Whether an operation holds, or waits for, the lock of `key` now.
    pub fn is_held(&self, key: &str) -> bool {
        let map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|weak| weak.strong_count() > 0)
    }

    /// Locks several keys (a copy's source and target), each once, always in sorted order: two
    /// calls that lock the same keys can then never wait on each other.
    pub async fn lock_all(
        &self,
        keys: &[&str],
        deadline: Instant,
    ) -> Result<Vec<KeyGuard>, Status> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let mut guards = Vec::with_capacity(keys.len());
        for key in keys {
            guards.push(self.lock(key, deadline).await?);
        }
        Ok(guards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    fn with_timeout(value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("grpc-timeout", value.parse().unwrap());
        r
    }

    #[test]
    fn huge_grpc_timeouts_are_capped_and_never_overflow() {
        let before = Instant::now();
        for value in ["18446744073709551615S", "99999999H", "5000000000000000000S"] {
            let d = deadline(&with_timeout(value));
            assert!(d > before, "{value}");
            assert!(d <= Instant::now() + MAX_DEADLINE, "{value} is not capped");
        }
        // More than the 8 digits the gRPC spec allows: not a timeout, so the default.
        let d = deadline(&with_timeout("123456789S"));
        assert!(d <= Instant::now() + DEFAULT_DEADLINE);
        assert!(d > before + DEFAULT_DEADLINE - Duration::from_secs(5));
    }

    /// The work ends a margin before the caller's deadline, so the reply (an Unavailable, an
    /// Aborted) reaches the caller before it gives up; with no caller deadline there is no margin.
    #[test]
    fn the_work_ends_a_reply_margin_before_the_callers_deadline() {
        for (value, work) in [
            ("3S", Duration::from_millis(2700)),
            ("100m", Duration::from_millis(90)),
            ("15S", Duration::from_secs(14)),
            ("2M", Duration::from_secs(119)),
        ] {
            let before = Instant::now();
            let d = deadline(&with_timeout(value));
            let after = Instant::now();
            assert!(d >= before + work && d <= after + work, "{value}");
        }
        let before = Instant::now();
        let d = deadline(&Request::new(()));
        assert!(d >= before + DEFAULT_DEADLINE && d <= Instant::now() + DEFAULT_DEADLINE);
    }

    #[tokio::test]
    async fn lock_all_takes_each_key_once_in_a_fixed_order() {
        let locks = KeyedLocks::default();
        let soon = || Instant::now() + Duration::from_millis(50);
        // The same key twice is one lock, not a wait on itself.
        let both = locks.lock_all(&["b", "a", "b"], soon()).await.unwrap();
        assert_eq!(both.len(), 2);
        assert!(locks.lock_all(&["a", "c"], soon()).await.is_err());
        drop(both);
        assert!(locks.lock_all(&["c", "a"], soon()).await.is_ok());
    }

    #[tokio::test]
    async fn same_key_waits_other_keys_do_not() {
        let locks = KeyedLocks::default();
        let soon = || Instant::now() + Duration::from_millis(50);
        let held = locks.lock("a", soon()).await.unwrap();
        assert!(locks.lock("b", soon()).await.is_ok());
        let err = locks.lock("a", soon()).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::Aborted);
        drop(held);
        assert!(locks.lock("a", soon()).await.is_ok());
    }
}
