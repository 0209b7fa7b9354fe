//! How many SSH channel opens may be pending at once, over all connections. RouterOS has been
//! seen to stall when several opens are pending, and how many it serves at once is not known,
//! so the window is earned: it starts at one, grows by one (up to `MAX`) after `PROOF` opens in
//! a row that the RDS answered promptly while the window was full, and falls back to one for
//! good when an open made beside others is not answered within `STALL` (the caller then gives
//! up on that connection).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The widest window: enough to take the open round trip off the critical path, few enough
/// that no RDS sees "many" pending.
pub const MAX: usize = 4;
/// Prompt opens in a row, with the window full, that earn one more.
const PROOF: u32 = 16;
/// An open beside others unanswered this long is a stall.
pub const STALL: Duration = Duration::from_secs(2);
/// An open answered within this many times the fastest one seen is prompt.
const PROMPT_FACTOR: u32 = 4;
/// ...or within this, whatever the fastest.
const PROMPT_FLOOR: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct State {
    limit: usize,
    pending: usize,
    streak: u32,
    fastest: Option<Duration>,
    /// A stall was seen: the window stays at one.
    settled: bool,
}

#[derive(Debug)]
pub struct OpenWindow {
    state: Mutex<State>,
    freed: Notify,
}

impl Default for OpenWindow {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                limit: 1,
                pending: 0,
                streak: 0,
                fastest: None,
                settled: false,
            }),
            freed: Notify::new(),
        }
    }
}

/// One open in flight; report how it ended with [`Ticket::answered`] or [`Ticket::stalled`].
pub struct Ticket<'a> {
    window: &'a OpenWindow,
    started: Instant,
    /// The window was full when this open was sent: a prompt answer proves it.
    full: bool,
    /// Other opens were pending: an open that hangs is a stall of the window, not of the RDS.
    beside_others: bool,
}

impl OpenWindow {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for room in the window.
    pub async fn enter(&self) -> Ticket<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.pending < s.limit {
                    s.pending += 1;
                    return Ticket {
                        window: self,
                        started: Instant::now(),
                        full: s.pending == s.limit,
                        beside_others: s.pending > 1,
                    };
                }
            }
            freed.await;
        }
    }

    /// The number of opens allowed in flight now.
    #[cfg(test)]
    fn limit(&self) -> usize {
        self.lock().limit
    }
}

impl Ticket<'_> {
    /// Whether this open, if it hangs, may be a stall caused by the window (others were
    /// pending beside it); only then does the caller bound it by [`STALL`].
    pub fn beside_others(&self) -> bool {
        self.beside_others
    }

    /// The RDS answered the open (accepted or refused it).
    pub fn answered(self) {
        let took = self.started.elapsed();
        let mut s = self.window.lock();
        let fastest = s.fastest.map_or(took, |f| f.min(took));
        s.fastest = Some(fastest);
        let prompt = took <= (fastest * PROMPT_FACTOR).max(PROMPT_FLOOR);
        if !prompt {
            s.streak = 0;
        } else if self.full && !s.settled && s.limit < MAX {
            s.streak += 1;
            if s.streak >= PROOF {
                s.limit += 1;
                s.streak = 0;
                tracing::debug!(window = s.limit, "SSH channel opens: window widened");
            }
        }
    }

    /// The open beside others went unanswered for [`STALL`]: one at a time from now on.
    pub fn stalled(self) {
        let mut s = self.window.lock();
        if !s.settled {
            tracing::warn!(
                window = s.limit,
                "the RDS left an SSH channel open unanswered while others were pending; \
                 opening channels one at a time from now on"
            );
        }
        s.settled = true;
        s.limit = 1;
        s.streak = 0;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.window.lock().pending -= 1;
        self.window.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_window_is_earned_by_prompt_full_opens_and_lost_for_good_by_a_stall() {
        let w = OpenWindow::default();
        assert_eq!(w.limit(), 1);
        for _ in 0..PROOF {
            w.enter().await.answered();
        }
        assert_eq!(w.limit(), 2, "one at a time, always full: earned");
        // Two in flight fill it; a single open in a window of two proves nothing.
        for _ in 0..PROOF * 2 {
            w.enter().await.answered();
        }
        assert_eq!(w.limit(), 2);
        for _ in 0..PROOF {
            let a = w.enter().await;
            let b = w.enter().await;
            assert!(b.beside_others() && !a.beside_others());
            b.answered();
            a.answered();
        }
        assert_eq!(w.limit(), 3);

        // A slow answer breaks the streak.
        let mut slow = w.enter().await;
        slow.started -= Duration::from_millis(500);
        slow.answered();
        assert_eq!(w.lock().streak, 0);

        let a = w.enter().await;
        let b = w.enter().await;
        b.stalled();
        drop(a);
        assert_eq!(w.limit(), 1);
        for _ in 0..PROOF * 4 {
            w.enter().await.answered();
        }
        assert_eq!(w.limit(), 1, "a stall is not forgotten");
    }

    #[tokio::test]
    async fn a_full_window_waits_for_a_free_place() {
        let w = OpenWindow::default();
        let first = w.enter().await;
        let second = w.enter();
        tokio::pin!(second);
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "a window of one holds one open"
        );
        drop(first);
        second.await.answered();
    }
}
