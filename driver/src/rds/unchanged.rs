//! Since when a watched thing has shown the same value, remembered across calls: a copy's
//! sizes, so that a CO retry goes on counting how long the copy has stood still.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

struct Sighting<V> {
    shown: Option<V>,
    since: Instant,
    seen: Instant,
}

/// What each key showed last, since when, and when it was last asked about.
pub(super) struct Unchanged<V> {
    forget_after: Duration,
    sightings: Mutex<HashMap<String, Sighting<V>>>,
}

impl<V: PartialEq> Unchanged<V> {
    /// Keys nobody asks about for `forget_after` are forgotten (their callers gave up).
    pub(super) fn new(forget_after: Duration) -> Self {
        Self {
            forget_after,
            sightings: Mutex::default(),
        }
    }

    /// How long `key` has shown `shown`, counting from the first call that saw it.
    pub(super) fn for_how_long(&self, key: &str, shown: V) -> Duration {
        let now = Instant::now();
        let mut sightings = self.sightings.lock().unwrap_or_else(|p| p.into_inner());
        sightings.retain(|_, s| now.duration_since(s.seen) < self.forget_after);
        let sighting = sightings.entry(key.to_string()).or_insert(Sighting {
            shown: None,
            since: now,
            seen: now,
        });
        sighting.seen = now;
        if sighting.shown.as_ref() != Some(&shown) {
            sighting.shown = Some(shown);
            sighting.since = now;
        }
        now.duration_since(sighting.since)
    }

    pub(super) fn forget(&self, key: &str) {
        self.sightings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
