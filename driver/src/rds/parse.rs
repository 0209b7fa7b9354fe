//! A tokenizer for RouterOS `print detail` and `print terse` output, as real hardware may print
//! it: an optional `Flags:` legend, entries that start with an index and flag letters, `key=value`
//! fields wrapped over indented continuation lines (cut between tokens, inside a token at the
//! width or before a hyphen, with or without trailing spaces), quoted strings with backslash
//! escapes, blank lines between entries and CRLF line endings.
//!
//! It never guesses: a line break inside a quoted string or inside a path-valued field (which
//! cannot hold spaces) is dropped, a line break anywhere else separates words, and text that is
//! not `key=value` makes the whole output unreadable rather than being skipped. Fields are looked
//! up by exact key, so `size` never matches inside `file-size`.

/// Fields whose values are paths: they cannot contain spaces, so a line break inside one is
/// always a wrap.
const PATH_KEYS: &[&str] = &["file-path", "name", "mount-point"];

/// Marks a line break inside the joined text of an entry.
const BREAK: char = '\n';

/// One entry of a `print detail` listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub index: Option<u32>,
    /// Flag letters printed after the index (`t` = NVMe/TCP export, `X` = disabled, ...).
    pub flags: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The value of `key`, unquoted; None when the entry has no such field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `print detail` (or `print terse`) output into entries. Fails on any text that is not
/// part of a legend or a `key=value` field: an answer the driver cannot read is never taken for
/// an empty list. Never panics.
pub fn parse_detail(output: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut current: Option<(Entry, String)> = None;
    let mut in_legend = false;
    let mut index_end = None;

    for raw in output.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_end();
        if line.is_empty() {
            in_legend = false;
            flush(&mut current, &mut entries)?;
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("Flags:") || trimmed.starts_with("Columns:") {
            flush(&mut current, &mut entries)?;
            in_legend = true;
            continue;
        }
        if let Some((index, rest)) = entry_start(line, &mut index_end) {
            in_legend = false;
            flush(&mut current, &mut entries)?;
            current = Some(new_entry(index, rest));
            continue;
        }
        if in_legend {
            continue; // a wrapped legend line
        }
        match current.as_mut() {
            Some((_, text)) => {
                text.push(BREAK);
                text.push_str(trimmed);
            }
            // Output without an index column: the first line of an entry is unindented.
            None => current = Some(new_entry(None, trimmed)),
        }
    }
    flush(&mut current, &mut entries)?;
    Ok(entries)
}

fn new_entry(index: Option<u32>, text: &str) -> (Entry, String) {
    let (flags, text) = split_flags(text);
    (
        Entry {
            index,
            flags,
            fields: Vec::new(),
        },
        text.to_string(),
    )
}

fn flush(current: &mut Option<(Entry, String)>, entries: &mut Vec<Entry>) -> Result<(), String> {
    if let Some((mut entry, text)) = current.take() {
        entry.fields = tokenize_fields(&text)?;
        if entry.fields.is_empty() {
            return Err(format!(
                "unexpected text in RouterOS output: {:?}",
                format!("{} {}", entry.flags, text.replace(BREAK, " ")).trim()
            ));
        }
        entries.push(entry);
    }
    Ok(())
}

/// An entry starts with its index, right-aligned in a column as wide as the largest index
/// (` 0`, `    7` in a listing of 10,000). The first index found fixes where that column ends;
/// continuation lines are indented past it, so a wrapped `091 200` is never taken for an index.
fn entry_start<'a>(line: &'a str, index_end: &mut Option<usize>) -> Option<(Option<u32>, &'a str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = &line[indent..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !rest[digits..].starts_with([' ', '\t']) {
        return None;
    }
    let end = indent + digits;
    match *index_end {
        Some(column) if column != end => return None,
        // Wider than any listing RouterOS could print: a continuation.
        None if end > 7 => return None,
        None => *index_end = Some(end),
        Some(_) => {}
    }
    Some((rest[..digits].parse().ok(), rest[digits..].trim_start()))
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t' || c == BREAK
}

/// Flag letters come before the first `key=value`: single letters or short runs of letters.
fn split_flags(text: &str) -> (String, &str) {
    let mut flags = String::new();
    let mut rest = text.trim_start_matches(is_space);
    loop {
        let word_end = rest.find(is_space).unwrap_or(rest.len());
        let word = &rest[..word_end];
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_alphabetic()) {
            return (flags, rest);
        }
        flags.push_str(word);
        rest = rest[word_end..].trim_start_matches(is_space);
    }
}

fn key_len(s: &str) -> usize {
    s.bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
        .count()
}

fn starts_with_key(s: &str) -> bool {
    let n = key_len(s);
    n > 0 && s.as_bytes().get(n) == Some(&b'=')
}

/// Parses `key=value` tokens. A quoted value runs to its closing quote; an unquoted value runs
/// over following words until a word that starts a new `key=` (so `size=53 687 091 200`,
/// `type=.img file` and `last-modified=2025-11-11 16:47:07` each stay one value), except that a
/// path-valued field ends at a space and continues only across a line break. Any other word is
/// an error.
pub fn tokenize_fields(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut fields = Vec::new();
    let mut rest = text.trim_start_matches(is_space);
    while !rest.is_empty() {
        if !starts_with_key(rest) {
            let end = rest.find(is_space).unwrap_or(rest.len());
            return Err(format!(
                "unexpected text in RouterOS output: {:?}",
                &rest[..end]
            ));
        }
        let eq = key_len(rest);
        let key = rest[..eq].to_string();
        let after = &rest[eq + 1..];
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            read_quoted(quoted)?
        } else if PATH_KEYS.contains(&key.as_str()) {
            read_path(after)
        } else {
            read_unquoted(after)
        };
        fields.push((key, value));
        rest = remainder.trim_start_matches(is_space);
    }
    Ok(fields)
}

fn read_quoted(s: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            BREAK => {} // the terminal's cut, not part of the string
            '\\' => match chars.next() {
                Some((_, BREAK)) | None => return Err("a broken escape in a quoted value".into()),
                Some((_, escaped)) => value.push(escaped),
            },
            _ => value.push(c),
        }
    }
    Err(format!("an unterminated quoted value: {value:?}"))
}

/// A path: one word, continued by the next word only across a line break.
fn read_path(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut rest = s;
    loop {
        let end = rest.find(is_space).unwrap_or(rest.len());
        value.push_str(&rest[..end]);
        let gap_end = rest[end..]
            .find(|c| !is_space(c))
            .map_or(rest.len(), |i| end + i);
        let gap = &rest[end..gap_end];
        let next = &rest[gap_end..];
        if gap.contains(BREAK)
            && !next.is_empty()
            && !starts_with_key(next)
            && !next.starts_with('"')
        {
            rest = next;
            continue;
        }
        return (value, &rest[end..]);
    }
}

fn read_unquoted(s: &str) -> (String, &str) {
    let mut end = s.find(is_space).unwrap_or(s.len());
    loop {
        let after = &s[end..];
        let next = after.trim_start_matches(is_space);
        if next.is_empty() || starts_with_key(next) || next.starts_with('"') {
            break;
        }
        let word_start = s.len() - next.len();
        end = word_start + next.find(is_space).unwrap_or(next.len());
    }
    let words: Vec<&str> = s[..end].split(is_space).filter(|w| !w.is_empty()).collect();
    (words.join(" "), &s[end..])
}

/// Parses `key: value` lines (`/disk monitor-traffic ... once`, `/system identity print`).
pub fn parse_key_colon_value(output: &str) -> Vec<(String, String)> {
    output
        .split('\n')
        .filter_map(|raw| {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let (key, value) = line.split_once(':')?;
            let key = key.trim();
            if key.is_empty() || key.contains(' ') {
                return None;
            }
            Some((key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Reads a byte count printed with space thousands separators (`53 687 091 200`).
pub fn parse_separated_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b' ') {
        return None;
    }
    s.bytes()
        .filter(u8::is_ascii_digit)
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
}

/// Reads the whole output of a script that prints one number (`:put [... size]`) as an exact
/// byte count: one line holding only a decimal integer, plain (`10737418240`) or with RouterOS's
/// space thousands separators in groups of three (`10 737 418 240`). Anything else (a human
/// size such as `10.0GiB`, an error text, more than one line, a sign or a decimal point) is
/// None: the caller then has no exact count, never a guessed one.
pub fn parse_exact_count(output: &str) -> Option<u64> {
    let mut lines = output.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let mut groups = line.split(' ');
    let first = groups.next()?;
    // No group that reaches this is empty (the first precedes a space of a trimmed line, the
    // others are 3 long), so `&&` made `||` is an equivalent mutant; the check stays for clarity.
    let digits = |g: &str| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit());
    let grouped = line.contains(' ');
    if !digits(first) || (grouped && first.len() > 3) {
        return None;
    }
    if !groups.all(|g| g.len() == 3 && digits(g)) {
        return None;
    }
    parse_separated_bytes(line)
}

/// Reads a human size (`50.0GiB`, `1024.0MiB`, `512B`, `12`) to bytes, rounding to the nearest
/// byte. Only a fallback: it carries at most one decimal of precision.
pub fn parse_human_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    if num_len == 0 {
        return None;
    }
    let number: f64 = s[..num_len].parse().ok()?;
    let unit = s[num_len..].trim();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        "p" | "pib" | "pb" => 1 << 50,
        _ => return None,
    };
    let bytes = (number * multiplier as f64).round();
    // Never negative nor NaN (no sign is read), and infinity also fails the last test: the
    // first `||` made `&&` is an equivalent mutant.
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return None;
    }
    Some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_keys_only() {
        let e = &parse_detail(" 0  type=file size=1 024 file-size=1.0KiB sector-size=512\r\n")
            .unwrap()[0];
        assert_eq!(e.get("size"), Some("1 024"));
        assert_eq!(e.get("file-size"), Some("1.0KiB"));
        assert_eq!(e.get("sector-size"), Some("512"));
        assert_eq!(e.get("ize"), None);
    }

    #[test]
    fn legend_index_flags_and_blank_lines() {
        let out = "Flags: X - disabled, B - block-device; t - nvme-tcp-export\r\n \
                   M - mounted\r\n 0 B  t type=file slot=\"a\"\r\n\r\n 1    type=file slot=\"b\"\r\n";
        let entries = parse_detail(out).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].index, Some(0));
        assert_eq!(entries[0].flags, "Bt");
        assert_eq!(entries[0].get("slot"), Some("a"));
        assert_eq!(entries[1].flags, "");
        assert_eq!(entries[1].get("slot"), Some("b"));
        assert!(parse_detail("Flags: X - disabled\r\n").unwrap().is_empty());
    }

    #[test]
    fn mid_token_breaks_join_without_space() {
        let head = " 0    type=file file-path=/storage-pool/metal-csi/pvc-";
        let first = format!("{head}{}", "a".repeat(80 - head.len()));
        let out = format!("{first}\r\n               -yyy.img file-size=1.0GiB\r\n");
        let e = &parse_detail(&out).unwrap()[0];
        let expected = format!(
            "/storage-pool/metal-csi/pvc-{}-yyy.img",
            "a".repeat(80 - head.len())
        );
        assert_eq!(e.get("file-path"), Some(expected.as_str()));
        assert_eq!(e.get("file-size"), Some("1.0GiB"));
        // A short line was wrapped at a word boundary: the words keep their space.
        let e =
            &parse_detail(" 0   name=x last-modified=2025-11-11\r\n     16:47:07\r\n").unwrap()[0];
        assert_eq!(e.get("last-modified"), Some("2025-11-11 16:47:07"));
    }

    #[test]
    fn quoted_values_with_escapes_and_breaks() {
        let out =
            " 0  model=\"a \\\"b\\\" c\" nqn=\"nqn.2000-02.com.mi\r\n     krotik:x\" e=\"\"\r\n";
        let e = &parse_detail(out).unwrap()[0];
        assert_eq!(e.get("model"), Some("a \"b\" c"));
        assert_eq!(e.get("nqn"), Some("nqn.2000-02.com.mikrotik:x"));
        assert_eq!(e.get("e"), Some(""));
    }

    #[test]
    fn multi_word_unquoted_values() {
        let out = " 1   name=storage-pool/metal-csi/pvc-1.img\r\n     type=.img file size=10.0GiB last-modified=2025-11-11 14:32:41\r\n";
        let e = &parse_detail(out).unwrap()[0];
        assert_eq!(e.get("name"), Some("storage-pool/metal-csi/pvc-1.img"));
        assert_eq!(e.get("type"), Some(".img file"));
        assert_eq!(e.get("size"), Some("10.0GiB"));
        assert_eq!(e.get("last-modified"), Some("2025-11-11 14:32:41"));
    }

    #[test]
    fn breaks_are_read_by_field_kind_whatever_the_width() {
        // A hyphen cut on a short line, with trailing spaces after tokens.
        let out = " 0  type=file slot=\"pvc-1\" \r\n     file-path=/pool/csi/pvc-1 \r\n     -22.img \r\n     size=53 687 \r\n     091 200 model=\"/pool/csi/pvc-1\r\n     -22.img\" \r\n";
        let e = &parse_detail(out).unwrap()[0];
        assert_eq!(e.get("file-path"), Some("/pool/csi/pvc-1-22.img"));
        assert_eq!(e.get("model"), Some("/pool/csi/pvc-1-22.img"));
        assert_eq!(e.get("size"), Some("53 687 091 200"));
        // A path ends at a space on its own line: what follows must be a field.
        assert!(parse_detail(" 0  file-path=/a/b c.img\r\n").is_err());
    }

    #[test]
    fn wide_index_columns_of_long_listings() {
        let mut out = String::new();
        for i in [0u32, 7, 10_255] {
            out.push_str(&format!(
                "{i:>5}   name=pool/f{i}.img\r\n        type=.img file\r\n\r\n"
            ));
        }
        let entries = parse_detail(&out).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].index, Some(7));
        assert_eq!(entries[2].get("name"), Some("pool/f10255.img"));
        // A continuation that starts with digit groups is not an entry.
        let e = parse_detail(" 0   size=53 687\r\n     091 200 x=1\r\n").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].get("size"), Some("53 687 091 200"));
        // An index is digits followed by a space: digits glued to text begin a key.
        let e = parse_detail(" 0  name=a\r\n 1g=b\r\n").unwrap();
        assert_eq!((e.len(), e[0].get("1g")), (1, Some("b")));
        // The widest first index column read as one (7 columns: 1,000,000 entries).
        let e = parse_detail("      7 name=a\r\n      8 name=b\r\n").unwrap();
        assert_eq!((e.len(), e[1].index), (2, Some(8)));
        // Output without an index column: a continuation indented past any index column
        // that starts with digits is still a continuation.
        let e = parse_detail("size=53 687\r\n        091 200 x=1\r\n").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].get("size"), Some("53 687 091 200"));
    }

    #[test]
    fn text_that_is_not_a_field_is_an_error() {
        for bad in [
            "disk is busy\r\n",
            "command rejected: no such item\r\n",
            " 0  slot=\"a\" stray\r\n",
            " 0  slot=\"unterminated\r\n",
            " 0  =no-key\r\n",
        ] {
            assert!(parse_detail(bad).is_err(), "{bad:?}");
        }
        assert!(parse_detail("").unwrap().is_empty());
        assert!(parse_detail("\r\n\r\n").unwrap().is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(
            parse_separated_bytes("53 687 091 200"),
            Some(53_687_091_200)
        );
        assert_eq!(parse_separated_bytes("0"), Some(0));
        assert_eq!(parse_separated_bytes("1.0GiB"), None);
        assert_eq!(parse_separated_bytes("99999999999999999999999"), None);
        assert_eq!(parse_human_size("50.0GiB"), Some(50 << 30));
        assert_eq!(parse_human_size("1024.0MiB"), Some(1 << 30));
        assert_eq!(parse_human_size("512"), Some(512));
        assert_eq!(parse_human_size("1.5KiB"), Some(1536));
        assert_eq!(parse_human_size("GiB"), None);
        assert_eq!(parse_human_size("1.0XiB"), None);
        assert_eq!(parse_human_size("2.0TiB"), Some(2 << 40));
        assert_eq!(parse_human_size("1.0PiB"), Some(1 << 50));
        assert_eq!(parse_human_size("0.0GiB"), Some(0));
        assert_eq!(
            parse_human_size("99999999999PiB"),
            None,
            "beyond u64, not saturated"
        );
    }

    #[test]
    fn exact_counts_are_whole_decimal_integers_only() {
        assert_eq!(parse_exact_count("10737418240\r\n"), Some(10 << 30));
        assert_eq!(parse_exact_count("10 737 418 240\n"), Some(10 << 30));
        assert_eq!(parse_exact_count("0"), Some(0));
        assert_eq!(
            parse_exact_count("100 000"),
            Some(100_000),
            "a full first group"
        );
        for bad in [
            "",
            "10.0GiB",
            "10737418240B",
            "-5",
            "1 0737418240",
            "10737 418 240",
            "10  737",
            "1,024",
            "12\n34",
            "bad command name put (line 1 column 2)",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_exact_count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_colon_value() {
        let kv = parse_key_colon_value("   read-ops:   243 401\r\n  write-rate: 12.8Mbps\r\n");
        assert_eq!(kv[0], ("read-ops".into(), "243 401".into()));
        assert_eq!(kv[1], ("write-rate".into(), "12.8Mbps".into()));
        // A line whose text before the colon is not one word is not a field.
        let kv = parse_key_colon_value(": 1\r\nnot a key: 2\r\ntime: 08:47:07\r\n");
        assert_eq!(kv, [("time".to_string(), "08:47:07".to_string())]);
    }
}
