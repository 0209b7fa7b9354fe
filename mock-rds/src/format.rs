//! Output shapes. `routeros` reproduces what real RouterOS 7 prints for `print detail` (legend,
//! index and flag columns, 80-column wrapping, CRLF); `simple` is one line per entry for humans.
//!
//! This module deliberately shares nothing with the driver's parser: the fixtures in
//! `fixtures/routeros/` are the contract between the two.

use serde::{Deserialize, Serialize};

/// Terminal width RouterOS wraps `print detail` output at when no PTY tells it otherwise.
pub const WIDTH: usize = 80;

/// Shape of the text a print command answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum OutputMode {
    /// Byte-faithful to real RouterOS 7: flags legend, wrapped lines, CRLF.
    #[default]
    Routeros,
    /// One entry per line, no wrapping, raw byte counts, LF.
    Simple,
}

impl OutputMode {
    pub fn eol(self) -> &'static str {
        match self {
            OutputMode::Routeros => "\r\n",
            OutputMode::Simple => "\n",
        }
    }

    /// Turns `text` (lines separated by `\n`) into this mode's line endings, one per line.
    pub fn lines(self, text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(line);
            out.push_str(self.eol());
        }
        out
    }
}

/// One property value, typed so each mode can render it its own way.
#[derive(Debug, Clone)]
pub enum PVal {
    /// A RouterOS string: printed in double quotes with backslash escapes.
    Quoted(String),
    /// Printed as is (paths, enums, `.img file`, timestamps).
    Plain(String),
    /// A byte count: `53 687 091 200` in routeros mode.
    Bytes(u64),
    /// A byte count in human form: `50.0GiB` in routeros mode.
    Human(u64),
    Bool(bool),
    Int(u64),
    Percent(u64),
}

#[derive(Debug, Clone)]
pub struct Prop {
    pub key: &'static str,
    pub val: PVal,
}

impl Prop {
    pub fn new(key: &'static str, val: PVal) -> Prop {
        Prop { key, val }
    }

    /// The value `where key=...` and `key~...` compare against: unquoted, numbers in plain digits.
    pub fn raw(&self) -> String {
        match &self.val {
            PVal::Quoted(s) | PVal::Plain(s) => s.clone(),
            PVal::Bytes(n) | PVal::Human(n) | PVal::Int(n) | PVal::Percent(n) => n.to_string(),
            PVal::Bool(b) => yes_no(*b).to_string(),
        }
    }

    pub fn number(&self) -> Option<u64> {
        match &self.val {
            PVal::Bytes(n) | PVal::Human(n) | PVal::Int(n) | PVal::Percent(n) => Some(*n),
            _ => None,
        }
    }

    fn render(&self, mode: OutputMode) -> String {
        let v = match (&self.val, mode) {
            (PVal::Quoted(s), _) => quote(s),
            (PVal::Plain(s), _) => escape_nonprintable(s),
            (PVal::Bytes(n), OutputMode::Routeros) => thousands(*n),
            (PVal::Human(n), OutputMode::Routeros) => human(*n),
            (PVal::Bytes(n) | PVal::Human(n) | PVal::Int(n), _) => n.to_string(),
            (PVal::Bool(b), _) => yes_no(*b).to_string(),
            (PVal::Percent(n), _) => format!("{n}%"),
        };
        format!("{}={}", self.key, v)
    }
}

/// One printed item. `groups` start on a new line in routeros mode: real RouterOS breaks a disk's
/// detail output before `model`, `size`, `nvme-tcp-export`, `nfs-sharing`, `file-path` and
/// `file-size` even when the next property would still fit (see the [HW] sample in
/// rds-protocol.md).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The flag columns, already laid out (one char per flag slot, space when unset).
    pub flags: String,
    pub groups: Vec<Vec<Prop>>,
}

impl Entry {
    pub fn props(&self) -> impl Iterator<Item = &Prop> {
        self.groups.iter().flatten()
    }

    pub fn get(&self, key: &str) -> Option<&Prop> {
        self.props().find(|p| p.key == key)
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `53687091200` -> `53 687 091 200`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// RouterOS human size: one decimal, binary units, and a unit is used only when the value is
/// strictly greater than one of it (1 GiB prints as `1024.0MiB`, as seen on hardware).
pub fn human(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n > size {
            return format!("{:.1}{}", n as f64 / size as f64, unit);
        }
    }
    n.to_string()
}

/// A RouterOS string literal. Non-printable and non-ASCII bytes become `\XX` so every output line
/// is ASCII and column counting is byte counting.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'$' => out.push_str("\\$"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
    out.push('"');
    out
}

fn escape_nonprintable(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
    out
}

/// How a print lays out its text: the output mode and the wrapping variants of the profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    pub mode: OutputMode,
    /// A token too long for a line is cut before its last `-` that fits (else at the width).
    pub cut_at_hyphen: bool,
    /// A line broken between tokens keeps the separating space at its end.
    pub trailing_space: bool,
    /// Line groups are ignored and numbers may break between their digit groups.
    pub flow: bool,
    /// `print terse`: one line per item, no legend, no wrapping.
    pub terse: bool,
}

impl From<OutputMode> for Layout {
    fn from(mode: OutputMode) -> Layout {
        Layout {
            mode,
            ..Layout::default()
        }
    }
}

/// Where to cut a token that fits on no line: `room` columns are left.
fn cut_point(tok: &str, room: usize, at_hyphen: bool) -> usize {
    if at_hyphen {
        if let Some(i) = tok[..room].rfind('-').filter(|&i| i > 0) {
            return i;
        }
    }
    room
}

/// Greedy word wrap of `groups` of tokens at [`WIDTH`] columns. `first` is the first line's
/// prefix and `indent` the continuation indent. Each group starts a line unless `layout.flow`.
/// A token too long for any line is cut so the cut line is exactly [`WIDTH`] columns (how hardware
/// printed `file-path=.../pvc-xxx` + `-yyy.img`), or before a hyphen with `cut_at_hyphen`.
fn wrap(first: &str, indent: usize, groups: &[Vec<String>], layout: Layout) -> Vec<String> {
    let pad = " ".repeat(indent);
    let mut lines = Vec::new();
    let mut cur = first.to_string();
    let mut has = false;
    let break_line = |cur: &mut String, lines: &mut Vec<String>, between_tokens: bool| {
        if between_tokens && layout.trailing_space {
            cur.push(' ');
        }
        lines.push(std::mem::replace(cur, pad.clone()));
    };
    for group in groups {
        if has && !layout.flow {
            break_line(&mut cur, &mut lines, true);
            has = false;
        }
        for tok in group {
            let need = tok.len() + usize::from(has);
            if cur.len() + need <= WIDTH {
                if has {
                    cur.push(' ');
                }
                cur.push_str(tok);
            } else if indent + tok.len() <= WIDTH {
                break_line(&mut cur, &mut lines, true);
                cur.push_str(tok);
            } else {
                if has {
                    break_line(&mut cur, &mut lines, true);
                }
                let mut rest = tok.as_str();
                while indent + rest.len() > WIDTH {
                    let at = cut_point(rest, WIDTH - indent, layout.cut_at_hyphen);
                    let (head, tail) = rest.split_at(at);
                    cur.push_str(head);
                    break_line(&mut cur, &mut lines, false);
                    rest = tail;
                }
                cur.push_str(rest);
            }
            has = true;
        }
    }
    lines.push(cur);
    lines
}

/// The `/disk` flags legend, in flag-slot order. Groups of mutually exclusive flags share a slot;
/// `;` separates slots, as RouterOS 7 legends do.
pub const DISK_LEGEND: &[&str] = &[
    "X - DISABLED;",
    "A - ACQUIRED, E - EMPTY;",
    "B - BLOCK-DEVICE;",
    "M - MOUNTED, F - FORMATTING;",
    "S - SWAP;",
    "f - RAID-MEMBER-FAILED, r - RAID-MEMBER;",
    "c - ENCRYPTED;",
    "g - GPT, p - PARTITION;",
    "t - NVME-TCP-EXPORT;",
    "i - ISCSI-EXPORT;",
    "s - SMB-SHARING, n - NFS-SHARING, m - MEDIA-SHARING",
];

/// Number of flag slots (columns) in `/disk print detail`.
pub const DISK_FLAG_SLOTS: usize = 11;

fn legend_lines() -> Vec<String> {
    let mut items = Vec::new();
    for slot in DISK_LEGEND {
        // Wrap between single flags, never inside `X - NAME`.
        let parts: Vec<&str> = slot.split(", ").collect();
        for (i, p) in parts.iter().enumerate() {
            if i + 1 < parts.len() {
                items.push(format!("{p},"));
            } else {
                items.push((*p).to_string());
            }
        }
    }
    let mut lines = Vec::new();
    let mut cur = String::from("Flags:");
    for it in items {
        if cur.len() + 1 + it.len() > WIDTH {
            lines.push(std::mem::take(&mut cur));
            cur.push_str(&it);
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(&it);
        }
    }
    lines.push(cur);
    lines
}

fn index_width(count: usize) -> usize {
    count.saturating_sub(1).to_string().len().max(2)
}

/// The printed tokens of an entry, by line group. With `flow`, a number's digit groups are
/// separate tokens, so a line may break inside it.
fn tokens(entry: &Entry, layout: Layout) -> Vec<Vec<String>> {
    entry
        .groups
        .iter()
        .map(|g| {
            g.iter()
                .flat_map(|p| {
                    let text = p.render(layout.mode);
                    if layout.flow && matches!(p.val, PVal::Bytes(_)) {
                        text.split(' ').map(str::to_string).collect()
                    } else {
                        vec![text]
                    }
                })
                .collect()
        })
        .collect()
}

fn push_lines(out: &mut String, lines: &[String], mode: OutputMode) {
    for l in lines {
        out.push_str(l);
        out.push_str(mode.eol());
    }
}

/// One line per entry, never wrapped (`print terse`).
fn terse_list(entries: &[Entry], layout: Layout, flag_column: bool) -> String {
    let mut out = String::new();
    let w = index_width(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let toks: Vec<String> = e.props().map(|p| p.render(layout.mode)).collect();
        let flags = if flag_column {
            format!("{:<DISK_FLAG_SLOTS$} ", e.flags)
        } else {
            String::new()
        };
        out.push_str(&format!("{i:>w$} {flags}{}", toks.join(" ")));
        out.push_str(layout.mode.eol());
    }
    out
}

/// `/disk print detail`: legend (always, even with no entries), then each entry followed by a
/// blank line.
pub fn disk_list(entries: &[Entry], layout: impl Into<Layout>) -> String {
    let layout = layout.into();
    match layout.mode {
        OutputMode::Simple => simple_list(entries),
        OutputMode::Routeros if layout.terse => terse_list(entries, layout, true),
        OutputMode::Routeros => {
            let mut out = String::new();
            push_lines(&mut out, &legend_lines(), layout.mode);
            let w = index_width(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let first = format!("{i:>w$} {:<DISK_FLAG_SLOTS$} ", e.flags);
                let lines = wrap(&first, first.len(), &tokens(e, layout), layout);
                push_lines(&mut out, &lines, layout.mode);
                out.push_str(layout.mode.eol());
            }
            out
        }
    }
}

/// `/file print detail`: no legend (files have no flags), data at column 5 as on hardware.
pub fn file_list(entries: &[Entry], layout: impl Into<Layout>) -> String {
    let layout = layout.into();
    match layout.mode {
        OutputMode::Simple => simple_list(entries),
        OutputMode::Routeros if layout.terse => terse_list(entries, layout, false),
        OutputMode::Routeros => {
            let mut out = String::new();
            let w = index_width(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let first = format!("{i:>w$}   ");
                let lines = wrap(&first, first.len(), &tokens(e, layout), layout);
                push_lines(&mut out, &lines, layout.mode);
                out.push_str(layout.mode.eol());
            }
            out
        }
    }
}

fn simple_list(entries: &[Entry]) -> String {
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        let toks: Vec<String> = e.props().map(|p| p.render(OutputMode::Simple)).collect();
        out.push_str(&format!("{i} {}\n", toks.join(" ")));
    }
    out
}

/// `key: value` pairs with right-aligned keys and values, as `monitor-traffic ... once` and
/// `/system resource print` print them.
pub fn key_values(pairs: &[(&str, String)], key_width: usize, value_width: usize) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{k:>key_width$}: {v:>value_width$}\n"));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` for a Unix time (UTC; the mock's "router local time").
pub fn timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// Howard Hinnant's days-to-civil algorithm; avoids a date crate for one format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1 000");
        assert_eq!(thousands(53_687_091_200), "53 687 091 200");
        assert_eq!(thousands(7_681_574_174_720), "7 681 574 174 720");
    }

    #[test]
    fn human_steps_up_only_when_strictly_greater() {
        assert_eq!(human(1 << 30), "1024.0MiB");
        assert_eq!(human(10 << 30), "10.0GiB");
        assert_eq!(human(50 << 30), "50.0GiB");
        assert_eq!(human((1 << 30) + (1 << 29)), "1.5GiB");
        assert_eq!(human(1 << 40), "1024.0GiB");
        assert_eq!(human(1024), "1024");
        assert_eq!(human(1025), "1.0KiB");
        assert_eq!(human(0), "0");
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a\"b\\c$"), "\"a\\\"b\\\\c\\$\"");
        assert_eq!(quote("é"), "\"\\C3\\A9\"");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_762_879_627), "2025-11-11 16:47:07");
    }

    #[test]
    fn wrap_breaks_at_tokens_and_cuts_long_tokens_at_80() {
        let long = format!("file-path=/{}", "x".repeat(100));
        let lines = wrap(
            "   ",
            3,
            &[
                vec!["a=1".to_string(), "b=2".to_string()],
                vec![long.clone()],
            ],
            Layout::default(),
        );
        assert_eq!(lines[0], "   a=1 b=2");
        assert_eq!(lines[1].len(), WIDTH);
        assert!(lines.iter().all(|l| l.len() <= WIDTH));
        let joined: String = lines[1..].iter().map(|l| &l[3..]).collect();
        assert_eq!(joined, long);
    }

    #[test]
    fn wrap_variants() {
        let long = format!("file-path=/pool/{}-{}", "x".repeat(60), "y".repeat(20));
        let groups = [
            vec!["a=1".to_string(), "b=2".to_string()],
            vec![long.clone()],
        ];
        let hyphen = Layout {
            cut_at_hyphen: true,
            ..Layout::default()
        };
        let lines = wrap("   ", 3, &groups, hyphen);
        assert!(lines[2].trim_start().starts_with('-'), "{lines:?}");
        let joined: String = lines[1..].iter().map(|l| l.trim_start()).collect();
        assert_eq!(joined, long);
        let trailing = Layout {
            trailing_space: true,
            ..Layout::default()
        };
        let lines = wrap("   ", 3, &groups, trailing);
        assert_eq!(lines[0], "   a=1 b=2 ");
        // The cut inside the token keeps no space.
        assert!(!lines[1].ends_with(' '), "{lines:?}");
    }

    #[test]
    fn legend_fits_in_80_columns() {
        let lines = legend_lines();
        assert!(lines[0].starts_with("Flags: X - DISABLED;"));
        assert!(lines.iter().all(|l| l.len() <= WIDTH), "{lines:?}");
    }
}
