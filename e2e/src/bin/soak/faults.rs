//! The faults the soak injects. Each operation draws its fault from its own seeded RNG, before
//! its call: most are mock-rds faults aimed (by a pattern naming the operation's volume or
//! snapshot) at one of the RouterOS commands that call sends, so they land on the call that
//! drew them; the rest are events (restarts, profile switches, cut or refused connections).
//! A run is thus a function of the seed and the operation count, up to the interleaving of the
//! workers, which is what lets a failing prefix be replayed and shrunk.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::RngExt;

/// Every kind of fault, in the order the summary prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A RouterOS failure text (`failure: ...`), not run.
    FailKnown,
    /// Words no driver has seen, exit status 0 or 1, not run.
    FailUnknown,
    /// No output and exit status 0 (what success looks like), not run.
    SilentNoop,
    /// The exec is never answered (not run).
    Hang,
    /// Run, then the connection is cut before the reply.
    Drop,
    Latency,
    RefuseConnections,
    DropConnections,
    RestartMock,
    RestartDriver,
    Profile,
}

pub const KINDS: [Kind; 11] = [
    Kind::FailKnown,
    Kind::FailUnknown,
    Kind::SilentNoop,
    Kind::Hang,
    Kind::Drop,
    Kind::Latency,
    Kind::RefuseConnections,
    Kind::DropConnections,
    Kind::RestartMock,
    Kind::RestartDriver,
    Kind::Profile,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::FailKnown => "fail-known",
            Kind::FailUnknown => "fail-unknown",
            Kind::SilentNoop => "silent-noop",
            Kind::Hang => "hang",
            Kind::Drop => "drop-after-run",
            Kind::Latency => "latency",
            Kind::RefuseConnections => "refuse-connections",
            Kind::DropConnections => "drop-connections",
            Kind::RestartMock => "restart-mock",
            Kind::RestartDriver => "restart-driver",
            Kind::Profile => "profile",
        }
    }
}

/// Behaviour profiles the soak switches between; `default` stands for the run's own profile
/// (`--profile`), so a switch may go back to it.
const PROFILES: &[&str] = &[
    "default",
    "hardware-a",
    "hardware-b",
    "exit-zero",
    "errors-unknown,exit-zero",
    "copy-async",
    "wrap-hyphen,wrap-trailing-space",
    "resize-delayed",
];

/// A RouterOS command a CSI call sends, as the start of its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Add,
    Remove,
    FileRemove,
    Set,
    Print,
}

impl Target {
    fn prefix(self) -> &'static str {
        match self {
            Target::Add => "^/disk add",
            Target::Remove => "^/disk remove",
            Target::FileRemove => "^/file remove",
            Target::Set => "^/disk set",
            Target::Print => "print",
        }
    }
}

/// What one operation injects before its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A `/mock fault ...` command.
    Mock(Kind, String),
    /// `/mock drop-connections`, `/mock profile set=...` or a `/mock fault refuse-connections`.
    Control(Kind, String),
    Restart(Kind),
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Mock(k, _) | Fault::Control(k, _) | Fault::Restart(k) => *k,
        }
    }
}

/// Draws the fault of one operation whose call sends `targets` with `name` on their command
/// line. Two in five operations (three in five deletes) get a fault aimed at their call, one
/// in sixteen an event.
pub fn draw(rng: &mut StdRng, targets: &[Target], name: &str, own: &str) -> Option<Fault> {
    let roll = rng.random_range(0..100);
    // Deletes are few and their faults are where an unknown reply is most dangerous (a disk
    // reported gone that is not): they get a fault three times in five.
    let aimed = if targets.contains(&Target::Remove) {
        60
    } else {
        40
    };
    if roll < aimed && !targets.is_empty() {
        let target = targets[rng.random_range(0..targets.len())];
        // `.*` and then the name: the name is in a quoted argument of the command.
        let pattern = format!("{}.*{}", target.prefix(), name);
        let mutation = target != Target::Print;
        let kind = match rng.random_range(0..100) {
            0..=14 => Kind::FailKnown,
            15..=44 if mutation => Kind::FailUnknown,
            // Only where the driver reads back what it did.
            45..=54 if matches!(target, Target::Add | Target::Set) => Kind::SilentNoop,
            55..=62 => Kind::Hang,
            63..=82 => Kind::Drop,
            83..=99 => Kind::Latency,
            _ => Kind::FailKnown,
        };
        let command = match kind {
            Kind::FailKnown => format!(
                "/mock fault fail pattern=\"{pattern}\" times=1 message=\"{}\" exit-status={}",
                [
                    "failure: execution error",
                    "failure: disk is busy",
                    "failure: not enough space"
                ][rng.random_range(0..3)],
                rng.random_range(0..2)
            ),
            Kind::FailUnknown => format!(
                "/mock fault fail pattern=\"{pattern}\" times=1 message=\"{}\" exit-status={}",
                [
                    "all done",
                    "something new happened",
                    "command rejected: later"
                ][rng.random_range(0..3)],
                // Mostly 0: the exit status is not known to be reliable (profile exit-zero).
                u32::from(rng.random_range(0..3) == 0)
            ),
            Kind::SilentNoop => {
                format!("/mock fault fail pattern=\"{pattern}\" times=1 message=\"\" exit-status=0")
            }
            Kind::Hang => format!("/mock fault hang pattern=\"{pattern}\" times=1"),
            Kind::Drop => format!("/mock fault drop pattern=\"{pattern}\" times=1"),
            _ => format!("/mock fault latency pattern=\"{name}\" min=5ms max=150ms"),
        };
        return Some(Fault::Mock(kind, command));
    }
    if roll >= 94 {
        return Some(match rng.random_range(0..6) {
            0 => Fault::Restart(Kind::RestartMock),
            1 => Fault::Restart(Kind::RestartDriver),
            2 => Fault::Control(Kind::DropConnections, "/mock drop-connections".into()),
            3 => Fault::Control(
                Kind::RefuseConnections,
                "/mock fault refuse-connections enabled=yes for=300ms".into(),
            ),
            _ => Fault::Control(
                Kind::Profile,
                format!(
                    "/mock profile set={}",
                    match PROFILES[rng.random_range(0..PROFILES.len())] {
                        "default" => own,
                        other => other,
                    }
                ),
            ),
        });
    }
    None
}

/// How many faults of each kind were injected.
#[derive(Default)]
pub struct Counts([AtomicU64; KINDS.len()]);

impl Counts {
    pub fn add(&self, kind: Kind) {
        let i = KINDS.iter().position(|k| *k == kind).expect("listed");
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// `kind=N` for every kind, space-separated.
    pub fn describe(&self) -> String {
        KINDS
            .iter()
            .zip(&self.0)
            .map(|(k, c)| format!("{}={}", k.name(), c.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The `/disk add` commands that took effect, by how the driver sent them: inside a script, or
/// alone (the command-by-command sequence: an RDS that refuses scripts, a retry, a copy). Read
/// from the mock's history, which a restart of mock-rds forgets: it is read before each one.
#[derive(Default)]
pub struct Adds {
    pub scripted: AtomicU64,
    pub alone: AtomicU64,
}

impl Adds {
    /// Counts the adds the mock's history holds; a mock that does not answer adds nothing.
    pub async fn tally(&self, env: &e2e::Env) {
        let Ok(history) = env.mock.history(&env.keys).await else {
            return;
        };
        for h in history
            .iter()
            .filter(|h| h.command.starts_with("/disk add") && h.took_effect())
        {
            let count = if h.disposition == "Scripted" {
                &self.scripted
            } else {
                &self.alone
            };
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}
