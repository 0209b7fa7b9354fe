//! Behaviour profiles: where the reference leaves real RouterOS behaviour open, each plausible
//! reading is a named variant, and a profile is a set of them. `default` is the empty set (what
//! the mock always did). mock-rds/README.md gives the reference passage behind each variant.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// One plausible behaviour of real RouterOS, chosen by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    Wrap80,
    WrapHyphen,
    WrapTrailingSpace,
    WrapDigitGroups,
    TerseSupported,
    TerseError,
    ExitZero,
    ExitNone,
    ErrorsBare,
    ErrorsUnknown,
    SessionsSerialOpen,
    SessionsOneOpen,
    SessionsCap,
    CliLock,
    ClockWest,
    ClockEast,
    CopyAsync,
    CopyIgnoresSize,
    CopyInheritsExport,
    DirsNoCreate,
    RegexNoAnchors,
    ResizeRefusedExported,
    ResizeDelayed,
    NoAllowHost,
    ScriptingRefused,
    ScriptQuietPrint,
    PutHumanSize,
}

use Variant::*;

/// Every variant: its name and one line saying what it does.
pub const VARIANTS: &[(Variant, &str, &str)] = &[
    (Wrap80, "wrap-80", "long lines cut at exactly 80 columns, also inside a token (the default)"),
    (WrapHyphen, "wrap-hyphen", "a token too long for a line is cut before its last '-' that fits, so the continuation starts with '-'"),
    (WrapTrailingSpace, "wrap-trailing-space", "lines broken between tokens keep the separating space at their end"),
    (WrapDigitGroups, "wrap-digit-groups", "properties flow without fixed line groups and numbers may be cut between digit groups (size=53 687 / 091 200)"),
    (TerseSupported, "terse-supported", "`print terse` prints one line per item with no legend and no wrapping"),
    (TerseError, "terse-error", "`print terse` is answered with `syntax error`"),
    (ExitZero, "exit-zero", "every failure is printed on stdout with exit status 0"),
    (ExitNone, "exit-none", "after a failure the channel is closed without an exit status"),
    (ErrorsBare, "errors-bare", "failures use the documented bare texts (`disk is in use`, `disk is busy`, `file already exists`, `invalid parameter`) without `failure:`"),
    (ErrorsUnknown, "errors-unknown", "failures use texts no client has seen (`command rejected: ...`)"),
    (SessionsSerialOpen, "sessions-serial-open", "channel opens are served one at a time over all connections; an open arriving while 4 are pending is never answered"),
    (SessionsOneOpen, "sessions-one-open", "channel opens are served one at a time over all connections; an open arriving while another is pending is never answered"),
    (SessionsCap, "sessions-cap", "at most 4 channels may be open at once over all connections; more are refused"),
    (CliLock, "cli-lock", "one command runs at a time (one CLI lock), with a latency per command kind"),
    (ClockWest, "clock-west", "the RDS clock is in America/Los_Angeles (UTC-08:00): times are printed in that local time"),
    (ClockEast, "clock-east", "the RDS clock is in Pacific/Tongatapu (UTC+13:00): times are printed in that local time"),
    (CopyAsync, "copy-async", "`copy-from` returns at once: the disk appears with its size and the file grows over about a second; a copy whose connection closes stops and leaves a short file"),
    (CopyIgnoresSize, "copy-ignores-size", "`copy-from` ignores `file-size`: the copy has the source's size"),
    (CopyInheritsExport, "copy-inherits-export", "`copy-from` without NVMe/TCP arguments inherits the source's export settings"),
    (DirsNoCreate, "dirs-no-create", "`/disk add` refuses a file-path whose directory does not exist"),
    (RegexNoAnchors, "regex-no-anchors", "a `~` pattern with `^` or `$` matches nothing"),
    (ResizeRefusedExported, "resize-refused-exported", "`/disk set file-size` of an exported disk is refused"),
    (ResizeDelayed, "resize-delayed", "after `/disk set file-size` the disk shows the new size only about a second later"),
    (NoAllowHost, "no-allow-host", "a RouterOS build without `nvme-tcp-server-allow-host-name`: `/disk print` does not show it and `/disk add` and `/disk set` refuse it (`expected end of command`)"),
    (ScriptingRefused, "scripting-refused", "scripts (`:put [...]`) are refused like an unknown command: `bad command name put`"),
    (ScriptQuietPrint, "script-quiet-print", "inside a script (statements joined by `;`, `:if`) menu commands print nothing: only `:put` output shows"),
    (PutHumanSize, "put-human-size", "`:put [/file get ... size]` prints the rounded human size `/file print` shows (`10.0GiB`), not bytes"),
];

/// Variants in no combined profile: a RouterOS build that lacks what an opt-in feature of the
/// driver needs (`--nvme-fencing`), not a reading the driver works around (`rds-csi doctor`
/// fails on it; the e2e scenarios under the combined profiles use that feature); and
/// `sessions-one-open`, which the driver survives by replacing its connection once, a pause
/// of seconds that scenarios with deadlines of seconds could not tell from a failure (it has
/// tests of its own).
pub const NOT_COMBINED: &[Variant] = &[NoAllowHost, SessionsOneOpen];

/// Variants that contradict each other: a profile holds at most one of each group.
const EXCLUSIVE: &[&[Variant]] = &[
    &[Wrap80, WrapHyphen],
    &[TerseSupported, TerseError],
    &[ExitZero, ExitNone],
    &[ErrorsBare, ErrorsUnknown],
    &[ClockWest, ClockEast],
    &[SessionsSerialOpen, SessionsOneOpen],
    &[ScriptingRefused, PutHumanSize],
    &[ScriptingRefused, ScriptQuietPrint],
];

/// Combined profiles that read like plausible hardware; together they hold every variant but
/// those in [`NOT_COMBINED`].
pub const COMBINED: &[(&str, &[Variant])] = &[
    (
        "hardware-a",
        &[
            WrapHyphen,
            WrapTrailingSpace,
            TerseSupported,
            ExitZero,
            ErrorsBare,
            SessionsSerialOpen,
            CliLock,
            ClockWest,
            CopyAsync,
            CopyInheritsExport,
            DirsNoCreate,
            ResizeDelayed,
            PutHumanSize,
            ScriptQuietPrint,
        ],
    ),
    (
        "hardware-b",
        &[
            Wrap80,
            WrapDigitGroups,
            TerseError,
            ExitNone,
            ErrorsUnknown,
            SessionsCap,
            ClockEast,
            CopyIgnoresSize,
            RegexNoAnchors,
            ResizeRefusedExported,
            ScriptingRefused,
        ],
    ),
];

impl Variant {
    pub fn name(self) -> &'static str {
        VARIANTS
            .iter()
            .find(|(v, _, _)| *v == self)
            .map_or("?", |(_, n, _)| n)
    }

    fn by_name(name: &str) -> Option<Variant> {
        VARIANTS
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(v, _, _)| *v)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of variants. Empty is `default`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile(BTreeSet<Variant>);

/// Channel opens that may be pending at once, over all connections, under `sessions-serial-open`,
/// or channels open at once under `sessions-cap`.
pub const SESSION_LIMIT: usize = 4;
/// Time one channel open takes under `sessions-serial-open`.
pub const OPEN_DELAY: Duration = Duration::from_millis(5);
/// How long an asynchronous copy takes to reach its full size.
pub const COPY_DURATION: Duration = Duration::from_millis(1200);
/// How long a delayed resize takes to show.
pub const RESIZE_DELAY: Duration = Duration::from_millis(800);

impl Profile {
    /// Parses `default`, a variant name, a combined profile name, or a comma-separated list of
    /// them (`wrap-hyphen,exit-zero`).
    pub fn parse(spec: &str) -> Result<Profile, String> {
        let mut set = BTreeSet::new();
        for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "default" {
                continue;
            }
            if let Some((_, vs)) = COMBINED.iter().find(|(n, _)| *n == name) {
                set.extend(vs.iter().copied());
            } else if let Some(v) = Variant::by_name(name) {
                set.insert(v);
            } else {
                return Err(format!(
                    "unknown profile or variant `{name}` (see --list-profiles)"
                ));
            }
        }
        for group in EXCLUSIVE {
            let chosen: Vec<&str> = group
                .iter()
                .filter(|v| set.contains(v))
                .map(|v| v.name())
                .collect();
            if chosen.len() > 1 {
                return Err(format!(
                    "variants {} cannot be combined",
                    chosen.join(" and ")
                ));
            }
        }
        Ok(Profile(set))
    }

    pub fn has(&self, v: Variant) -> bool {
        self.0.contains(&v)
    }

    pub fn variants(&self) -> impl Iterator<Item = Variant> + '_ {
        self.0.iter().copied()
    }

    /// The RDS's offset from UTC in seconds and its zone name.
    pub fn clock(&self) -> (i64, &'static str) {
        if self.has(ClockWest) {
            (-8 * 3600, "America/Los_Angeles")
        } else if self.has(ClockEast) {
            (13 * 3600, "Pacific/Tongatapu")
        } else {
            (0, "UTC")
        }
    }

    /// Time a command holds the CLI lock under `cli-lock`, by command kind; a script holds it
    /// for the commands in it.
    pub fn cli_latency(line: &str) -> Duration {
        if crate::command::is_sequence(line) {
            return crate::command::script_leaves(line)
                .iter()
                .filter(|leaf| !crate::command::is_sequence(leaf))
                .map(|leaf| Self::cli_latency(leaf))
                .sum();
        }
        let l = line.trim_start_matches('/');
        let ms = if l.starts_with("disk add") && l.contains("copy-from") {
            60
        } else if l.starts_with("disk add") {
            30
        } else if l.starts_with("disk set") || l.starts_with("disk remove") {
            20
        } else if l.starts_with("file") {
            8
        } else {
            4
        };
        Duration::from_millis(ms)
    }

    /// One line per variant: name, a space, the description (`--list-profiles`), then the
    /// combined profiles.
    pub fn listing() -> String {
        let mut out = String::from("default the mock's own behaviour (no variant)\n");
        for (_, name, about) in VARIANTS {
            out.push_str(&format!("{name} {about}\n"));
        }
        for (name, vs) in COMBINED {
            let names: Vec<&str> = vs.iter().map(|v| v.name()).collect();
            out.push_str(&format!("{name} combined: {}\n", names.join(",")));
        }
        out
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("default");
        }
        let names: Vec<&str> = self.0.iter().map(|v| v.name()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_lists_and_combinations() {
        assert_eq!(Profile::parse("default").unwrap(), Profile::default());
        assert_eq!(Profile::parse("").unwrap(), Profile::default());
        let p = Profile::parse("wrap-hyphen, exit-zero").unwrap();
        assert!(p.has(WrapHyphen) && p.has(ExitZero) && !p.has(ExitNone));
        assert_eq!(p.to_string(), "wrap-hyphen,exit-zero");
        assert!(Profile::parse("exit-zero,exit-none")
            .unwrap_err()
            .contains("cannot be combined"));
        assert!(Profile::parse("nonsense")
            .unwrap_err()
            .contains("`nonsense`"));
    }

    #[test]
    fn combined_profiles_cover_every_variant_and_are_consistent() {
        let mut all = BTreeSet::new();
        for (name, vs) in COMBINED {
            let p = Profile::parse(name).unwrap();
            assert_eq!(p.variants().count(), vs.len(), "{name}");
            all.extend(vs.iter().copied());
        }
        for (v, _, _) in VARIANTS {
            assert_eq!(
                all.contains(v),
                !NOT_COMBINED.contains(v),
                "{v}: in a combined profile exactly when it is not in NOT_COMBINED"
            );
        }
    }

    #[test]
    fn listing_has_one_line_per_variant() {
        let listing = Profile::listing();
        for (_, name, _) in VARIANTS {
            assert!(
                listing
                    .lines()
                    .any(|l| l.split_once(' ').map(|(n, _)| n) == Some(*name)),
                "{name}"
            );
        }
    }
}
