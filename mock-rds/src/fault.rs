//! Fault injection (failures, hangs, dropped connections, refused or stalled handshakes, latency)
//! and the command history tests assert on.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use regex::Regex;

/// A fault to inject. `pattern` is a regex searched for in the command line as received;
/// `times: None` means every matching command until the faults are cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer matching commands with `message` (e.g. `failure: disk is busy`; may be empty) and
    /// `exit_status` (0 is allowed, to test clients that must read failure text) without running them.
    Fail {
        pattern: String,
        times: Option<u32>,
        message: String,
        exit_status: u32,
    },
    /// Accept the exec and never answer; the command is not run.
    Hang { pattern: String, times: Option<u32> },
    /// Run the command (state changes), then drop the TCP connection before any reply.
    DropAfterRun { pattern: String, times: Option<u32> },
    /// Close new TCP connections at once, before the SSH banner.
    RefuseConnections(bool),
    /// Refuse new connections for this long, then accept them again (so a client that can
    /// only reach the mock over a new connection is not locked out).
    RefuseConnectionsFor(Duration),
    /// Accept new TCP connections and never send the SSH banner.
    StallHandshake(bool),
    /// Stall handshakes for this long, then answer them again.
    StallHandshakeFor(Duration),
    /// Delay matching commands by a uniform random time in `min..=max` (seeded RNG).
    Latency {
        pattern: String,
        min: Duration,
        max: Duration,
    },
}

/// What to do with one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run,
    Fail { message: String, exit_status: u32 },
    Hang,
    DropAfterRun,
}

#[derive(Debug)]
struct Rule {
    re: Regex,
    pattern: String,
    remaining: Option<u32>,
    action: Action,
}

#[derive(Debug)]
struct LatencyRule {
    re: Regex,
    pattern: String,
    min: Duration,
    max: Duration,
}

#[derive(Debug)]
pub struct Faults {
    rules: Vec<Rule>,
    latency: Vec<LatencyRule>,
    refuse: bool,
    refuse_until: Option<std::time::Instant>,
    stall: bool,
    stall_until: Option<std::time::Instant>,
    rng: StdRng,
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(pattern)
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            rules: Vec::new(),
            latency: Vec::new(),
            refuse: false,
            refuse_until: None,
            stall: false,
            stall_until: None,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn add(&mut self, fault: Fault) -> Result<(), regex::Error> {
        let rule = |pattern: String, times, action| -> Result<Rule, regex::Error> {
            Ok(Rule {
                re: compile(&pattern)?,
                pattern,
                remaining: times,
                action,
            })
        };
        match fault {
            Fault::Fail {
                pattern,
                times,
                message,
                exit_status,
            } => self.rules.push(rule(
                pattern,
                times,
                Action::Fail {
                    message,
                    exit_status,
                },
            )?),
            Fault::Hang { pattern, times } => self.rules.push(rule(pattern, times, Action::Hang)?),
            Fault::DropAfterRun { pattern, times } => {
                self.rules.push(rule(pattern, times, Action::DropAfterRun)?)
            }
            Fault::RefuseConnections(on) => {
                self.refuse = on;
                self.refuse_until = None;
            }
            Fault::RefuseConnectionsFor(d) => {
                self.refuse = true;
                self.refuse_until = Some(std::time::Instant::now() + d);
            }
            Fault::StallHandshake(on) => {
                self.stall = on;
                self.stall_until = None;
            }
            Fault::StallHandshakeFor(d) => {
                self.stall = true;
                self.stall_until = Some(std::time::Instant::now() + d);
            }
            Fault::Latency { pattern, min, max } => self.latency.push(LatencyRule {
                re: compile(&pattern)?,
                pattern,
                min: min.min(max),
                max: max.max(min),
            }),
        }
        Ok(())
    }

    /// Clears every fault; the RNG keeps its position so a run stays reproducible.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.latency.clear();
        self.refuse = false;
        self.refuse_until = None;
        self.stall = false;
        self.stall_until = None;
    }

    /// Whether new connections are refused now.
    pub fn refusing(&self) -> bool {
        self.refuse
            && self
                .refuse_until
                .is_none_or(|until| std::time::Instant::now() < until)
    }

    /// Whether new connections get no SSH banner now.
    pub fn stalling(&self) -> bool {
        self.stall
            && self
                .stall_until
                .is_none_or(|until| std::time::Instant::now() < until)
    }

    /// Picks the action and the latency for `line`, consuming one use of the matching rule.
    pub fn decide(&mut self, line: &str) -> (Action, Duration) {
        let delay = self.latency_of(line);
        let Some(i) = self
            .rules
            .iter()
            .position(|r| r.remaining != Some(0) && r.re.is_match(line))
        else {
            return (Action::Run, delay);
        };
        let rule = &mut self.rules[i];
        let action = rule.action.clone();
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.rules.remove(i);
            }
        }
        (action, delay)
    }

    /// The injected latency of `line`: that of the first latency rule matching it.
    pub fn latency_of(&mut self, line: &str) -> Duration {
        match self.latency.iter().find(|l| l.re.is_match(line)) {
            Some(l) if l.max > l.min => {
                // Clamp absurd durations instead of letting `as` wrap them.
                let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
                let (min, max) = (ns(l.min), ns(l.max));
                Duration::from_nanos(self.rng.random_range(min..=max.max(min)))
            }
            Some(l) => l.min,
            None => Duration::ZERO,
        }
    }

    /// A human-readable list, for `/mock fault print`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rules {
            let times = r
                .remaining
                .map_or("always".to_string(), |n| format!("times={n}"));
            let what = match &r.action {
                Action::Fail {
                    message,
                    exit_status,
                } => format!("fail exit-status={exit_status} message={message:?}"),
                Action::Hang => "hang".into(),
                Action::DropAfterRun => "drop".into(),
                Action::Run => "run".into(),
            };
            out.push(format!("{what} pattern={:?} {times}", r.pattern));
        }
        for l in &self.latency {
            out.push(format!(
                "latency pattern={:?} min={}ms max={}ms",
                l.pattern,
                l.min.as_millis(),
                l.max.as_millis()
            ));
        }
        if self.refusing() {
            out.push("refuse-connections".into());
        }
        if self.stalling() {
            out.push("stall-handshake".into());
        }
        out
    }
}

/// How a recorded command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Run and answered.
    Answered,
    /// Run and refused by RouterOS (an error text, whatever the exit status): nothing changed.
    Refused,
    /// Answered by an injected [`Fault::Fail`]; not run.
    Failed,
    /// Accepted and never answered ([`Fault::Hang`]); not run.
    Hung,
    /// Run, then the connection was dropped before the reply ([`Fault::DropAfterRun`]).
    Dropped,
    /// Run as one command of a script, with this exit status (the script is recorded after
    /// its commands, as a whole).
    Scripted,
}

/// One command the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub time: SystemTime,
    pub command: String,
    /// The exit status sent, or that would have been sent (`None` when hung).
    pub exit_status: Option<u32>,
    /// The text sent on stdout, or that would have been sent.
    pub output: String,
    pub disposition: Disposition,
}

/// A bounded history; the oldest entries fall off.
#[derive(Debug)]
pub struct History {
    pub entries: VecDeque<HistoryEntry>,
    pub depth: usize,
}

impl History {
    pub fn push(&mut self, e: HistoryEntry) {
        if self.entries.len() >= self.depth {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }
}

/// Parses `250ms`, `2s`, `1m` or a plain number of milliseconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rule_fires_n_times_then_goes_away() {
        let mut f = Faults::new(1);
        f.add(Fault::Fail {
            pattern: "^/disk add".into(),
            times: Some(2),
            message: "failure: x".into(),
            exit_status: 0,
        })
        .unwrap();
        let fail = Action::Fail {
            message: "failure: x".into(),
            exit_status: 0,
        };
        assert_eq!(f.decide("/disk print").0, Action::Run);
        assert_eq!(f.decide("/disk add slot=a").0, fail);
        assert_eq!(f.decide("/disk add slot=b").0, fail);
        assert_eq!(f.decide("/disk add slot=c").0, Action::Run);
        assert!(f.describe().is_empty());
    }

    #[test]
    fn latency_is_seeded_and_in_range() {
        let run = || {
            let mut f = Faults::new(42);
            f.add(Fault::Latency {
                pattern: "".into(),
                min: Duration::from_millis(10),
                max: Duration::from_millis(20),
            })
            .unwrap();
            (0..10).map(|_| f.decide("x").1).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a
            .iter()
            .all(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_millis(20)));
        assert!(a.iter().any(|d| *d != a[0]));
    }

    #[test]
    fn bad_regex_is_an_error() {
        let mut f = Faults::new(0);
        assert!(f
            .add(Fault::Hang {
                pattern: "(".into(),
                times: None
            })
            .is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("15"), Some(Duration::from_millis(15)));
        assert_eq!(parse_duration("x"), None);
    }
}
