//! Which `mkfsOptions` a StorageClass may pass, per filesystem. Checked by the controller at
//! CreateVolume and again by the node before it formats.
//!
//! mkfs runs in the node plugin, which sees the host's files. Several mkfs options read or write
//! a path (`mke2fs -d DIR` copies a directory into the new filesystem, `-l`, `-z`,
//! `-J device=`; `mkfs.xfs -p FILE`, `-c options=`, `-d name=`, `-l logdev=`, `-r rtdev=`), so
//! a deny-list cannot be trusted: only options known to shape nothing but the new filesystem are
//! accepted, each flag as its own word (no `-jd` bundles, no attached values) and each value
//! checked by a grammar without `/`.

/// What may follow a flag.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// The flag stands alone.
    None,
    /// A decimal integer.
    Count,
    /// A percentage such as `0` or `0.5`.
    Percent,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A filesystem label of at most this many characters.
    Label(usize),
    /// A UUID, or one of mke2fs's `clear`, `random`, `time`.
    Uuid,
    /// mke2fs features: `name` or `^name`, comma separated.
    Features,
    /// Comma-separated `key` or `key=value`, the key from this list.
    Suboptions(&'static [&'static str]),
}

struct Flag {
    name: &'static str,
    value: Value,
}

const fn flag(name: &'static str, value: Value) -> Flag {
    Flag { name, value }
}

/// mke2fs (ext3, ext4). Left out on purpose: `-d` (root directory), `-l` (bad-blocks file),
/// `-z` (undo file), `-c` (runs badblocks), `-F`, `-n`, `-S` (change what is done, not how),
/// `-M`, `-o`, `-t`, and `-J device=` / `-E offset=`.
const EXT: &[Flag] = &[
    flag("-b", Value::Count),
    flag("-C", Value::Count),
    flag("-D", Value::None),
    flag("-e", Value::OneOf(&["continue", "remount-ro", "panic"])),
    flag(
        "-E",
        Value::Suboptions(&[
            "stride",
            "stripe_width",
            "stripe-width",
            "resize",
            "lazy_itable_init",
            "lazy_journal_init",
            "packed_meta_blocks",
            "root_owner",
            "discard",
            "nodiscard",
            "num_backup_sb",
            "quotatype",
            "encoding",
            "encoding_flags",
            "orphan_file_size",
            "assume_storage_prezeroed",
        ]),
    ),
    flag("-g", Value::Count),
    flag("-G", Value::Count),
    flag("-i", Value::Count),
    flag("-I", Value::Count),
    flag("-j", Value::None),
    flag("-J", Value::Suboptions(&["size", "fast_commit_size"])),
    flag("-L", Value::Label(16)),
    flag("-m", Value::Percent),
    flag("-N", Value::Count),
    flag("-O", Value::Features),
    flag("-r", Value::OneOf(&["0", "1"])),
    flag(
        "-T",
        Value::OneOf(&[
            "default",
            "floppy",
            "small",
            "news",
            "largefile",
            "largefile4",
            "hurd",
            "big",
            "huge",
        ]),
    ),
    flag("-U", Value::Uuid),
];

/// mkfs.xfs. Left out on purpose: `-p` (protofile), `-c` (config file), `-r` (realtime device),
/// `-f`, `-N`, and the path-naming suboptions `-d name=`/`file`, `-l logdev=`.
const XFS: &[Flag] = &[
    flag("-b", Value::Suboptions(&["size"])),
    flag(
        "-d",
        Value::Suboptions(&[
            "agcount",
            "agsize",
            "size",
            "su",
            "sw",
            "sunit",
            "swidth",
            "noalign",
            "extszinherit",
            "cowextsize",
            "concurrency",
        ]),
    ),
    flag(
        "-i",
        Value::Suboptions(&[
            "size",
            "maxpct",
            "align",
            "sparse",
            "attr",
            "projid32bit",
            "nrext64",
            "exchange",
            "perblock",
        ]),
    ),
    flag("-K", Value::None),
    flag("-L", Value::Label(12)),
    flag(
        "-l",
        Value::Suboptions(&["size", "version", "sunit", "su", "lazy-count", "internal"]),
    ),
    flag(
        "-m",
        Value::Suboptions(&[
            "crc",
            "finobt",
            "uuid",
            "rmapbt",
            "reflink",
            "bigtime",
            "inobtcount",
            "autofsck",
        ]),
    ),
    flag(
        "-n",
        Value::Suboptions(&["size", "version", "ftype", "parent"]),
    ),
    flag("-s", Value::Suboptions(&["size"])),
];

/// Longest option string accepted; real ones are a few dozen characters.
const MAX_LEN: usize = 1024;

fn flags_of(fs: &str) -> Option<&'static [Flag]> {
    match fs {
        "ext4" | "ext3" => Some(EXT),
        "xfs" => Some(XFS),
        _ => None,
    }
}

fn is_count(v: &str) -> bool {
    (1..=12).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())
}

fn is_percent(v: &str) -> bool {
    let mut parts = v.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let frac = parts.next();
    (1..=3).contains(&whole.len())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| (1..=3).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
}

fn is_label(v: &str, max: usize) -> bool {
    (1..=max).contains(&v.len())
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_uuid(v: &str) -> bool {
    if matches!(v, "clear" | "random" | "time") {
        return true;
    }
    let groups: Vec<&str> = v.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A suboption value: sizes (`4k`), counts, owners (`0:0`), words. Never a path.
fn is_subvalue(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_features(v: &str) -> Result<(), String> {
    for f in v.split(',') {
        let name = f.strip_prefix('^').unwrap_or(f);
        let ok = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(format!(
                "feature `{f}` is not a feature name ([a-z0-9_], optionally prefixed with ^)"
            ));
        }
    }
    Ok(())
}

fn check_suboptions(v: &str, allowed: &[&str]) -> Result<(), String> {
    for item in v.split(',') {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if !allowed.contains(&key) {
            return Err(format!(
                "suboption `{key}` is not allowed (allowed: {})",
                allowed.join(", ")
            ));
        }
        if let Some(value) = value {
            if !is_subvalue(value) {
                return Err(format!(
                    "`{key}={value}`: the value must be 1 to 64 characters of [A-Za-z0-9._:-]"
                ));
            }
        }
    }
    Ok(())
}

fn check_value(flag: &str, value: Value, v: &str) -> Result<(), String> {
    let describe = |what: &str| format!("`{flag} {v}`: the value must be {what}");
    match value {
        Value::None => Ok(()),
        Value::Count if is_count(v) => Ok(()),
        Value::Count => Err(describe("a whole number")),
        Value::Percent if is_percent(v) => Ok(()),
        Value::Percent => Err(describe("a percentage such as 0 or 0.5")),
        Value::OneOf(words) if words.contains(&v) => Ok(()),
        Value::OneOf(words) => Err(describe(&format!("one of {}", words.join(", ")))),
        Value::Label(max) if is_label(v, max) => Ok(()),
        Value::Label(max) => Err(describe(&format!(
            "a label of 1 to {max} characters of [A-Za-z0-9._-], not starting with -"
        ))),
        Value::Uuid if is_uuid(v) => Ok(()),
        Value::Uuid => Err(describe("a UUID, clear, random or time")),
        Value::Features => check_features(v).map_err(|e| format!("`{flag} {v}`: {e}")),
        Value::Suboptions(allowed) => {
            check_suboptions(v, allowed).map_err(|e| format!("`{flag} {v}`: {e}"))
        }
    }
}

/// Splits `options` into mkfs arguments for filesystem `fs`, accepting only allow-listed flags
/// with valid values. The error says which word is wrong; the caller prefixes the field name.
pub fn parse_options(fs: &str, options: &str) -> Result<Vec<String>, String> {
    let flags = flags_of(fs).ok_or_else(|| format!("no mkfs options are known for `{fs}`"))?;
    if options.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} characters"));
    }
    let mut words = options.split_whitespace();
    let mut out = Vec::new();
    while let Some(word) = words.next() {
        let Some(flag) = flags.iter().find(|f| f.name == word) else {
            let names: Vec<&str> = flags.iter().map(|f| f.name).collect();
            return Err(format!(
                "`{word}` is not an allowed {fs} option (allowed, each as its own word: {})",
                names.join(" ")
            ));
        };
        out.push(word.to_string());
        if matches!(flag.value, Value::None) {
            continue;
        }
        let value = words
            .next()
            .ok_or_else(|| format!("`{word}` needs a value"))?;
        check_value(word, flag.value, value)?;
        out.push(value.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// Each value grammar at its edges: one inside and one outside every bound, and one
    /// character of each kind it refuses. A grammar that let any of these through would let
    /// mkfs see a value nobody checked.
    #[rstest]
    #[case::count_one_digit("-N", "7", true)]
    #[case::count_twelve_digits("-N", "123456789012", true)]
    #[case::count_thirteen_digits("-N", "1234567890123", false)]
    #[case::count_sign("-N", "-1", false)]
    #[case::count_letter("-N", "1k", false)]
    #[case::percent_three_digits("-m", "100", true)]
    #[case::percent_four_digits("-m", "1000", false)]
    #[case::percent_three_decimals("-m", "0.125", true)]
    #[case::percent_four_decimals("-m", "0.1250", false)]
    #[case::percent_no_whole("-m", ".5", false)]
    #[case::percent_no_decimals("-m", "5.", false)]
    #[case::percent_letter("-m", "5a", false)]
    #[case::percent_letter_decimal("-m", "5.a", false)]
    #[case::percent_two_points("-m", "1.2.3", false)]
    #[case::label_at_its_length("-L", "abcdefghijklmnop", true)]
    #[case::label_one_too_long("-L", "abcdefghijklmnopq", false)]
    #[case::label_punctuation("-L", "a.b_c-d", true)]
    #[case::label_leading_dash("-L", "-x", false)]
    #[case::label_slash("-L", "a/b", false)]
    #[case::label_colon("-L", "a:b", false)]
    #[case::uuid("-U", "0f923194-922a-5dd8-b376-c2c6ccb56dd8", true)]
    #[case::uuid_upper_hex("-U", "0F923194-922A-5DD8-B376-C2C6CCB56DD8", true)]
    #[case::uuid_word_clear("-U", "clear", true)]
    #[case::uuid_word_random("-U", "random", true)]
    #[case::uuid_word_time("-U", "time", true)]
    #[case::uuid_other_word("-U", "now", false)]
    #[case::uuid_four_groups("-U", "0f923194-922a-5dd8-b376c2c6ccb56dd8", false)]
    #[case::uuid_six_groups("-U", "0f923194-922a-5dd8-b376-c2c6-ccb56dd8", false)]
    #[case::uuid_short_group("-U", "0f92319-922a-5dd8-b376-c2c6ccb56dd8a", false)]
    #[case::uuid_not_hex("-U", "0f923194-922a-5dd8-b376-c2c6ccb56ddg", false)]
    #[case::one_of("-e", "panic", true)]
    #[case::one_of_other("-e", "reboot", false)]
    #[case::features("-O", "^has_journal,metadata_csum,64bit", true)]
    #[case::feature_at_its_length("-O", "abcdefghijklmnopqrstuvwxyz012345", true)]
    #[case::feature_one_too_long("-O", "abcdefghijklmnopqrstuvwxyz0123456", false)]
    #[case::feature_upper_case("-O", "Has_journal", false)]
    #[case::feature_dash("-O", "has-journal", false)]
    #[case::feature_empty("-O", "a,,b", false)]
    #[case::suboption_flag("-E", "nodiscard", true)]
    #[case::suboption_value_at_its_length("-E", &format!("stride={}", "1".repeat(64)), true)]
    #[case::suboption_value_one_too_long("-E", &format!("stride={}", "1".repeat(65)), false)]
    #[case::suboption_owner("-E", "root_owner=0:0", true)]
    #[case::suboption_empty_value("-E", "stride=", false)]
    #[case::suboption_slash("-E", "stride=1/2", false)]
    #[case::suboption_unknown("-E", "offset=1", false)]
    #[case::suboption_second_unknown("-E", "stride=1,offset=1", false)]
    fn each_value_grammar_holds_at_its_edges(
        #[case] flag: &str,
        #[case] value: &str,
        #[case] accepted: bool,
    ) {
        let options = format!("{flag} {value}");
        let parsed = parse_options("ext4", &options);
        assert_eq!(parsed.is_ok(), accepted, "ext4 `{options}`: {parsed:?}");
        if let Ok(words) = parsed {
            assert_eq!(words, [flag, value], "the words pass through unchanged");
        } else {
            assert!(
                parsed.unwrap_err().contains(flag),
                "the error names the flag"
            );
        }
    }

    #[test]
    fn the_length_limit_is_checked_before_the_words() {
        let at_limit = format!("-L {}", " ".repeat(MAX_LEN - 5) + "x");
        assert_eq!(at_limit.len(), MAX_LEN - 1);
        assert!(parse_options("ext4", &(at_limit.clone() + " ")).is_ok());
        let over = at_limit + "  ";
        let e = parse_options("ext4", &over).unwrap_err();
        assert!(e.contains("longer than 1024"), "{e}");
        let e = parse_options("zfs", "").unwrap_err();
        assert!(e.contains("`zfs`"), "{e}");
        let e = parse_options("ext4", "-m").unwrap_err();
        assert!(e.contains("`-m` needs a value"), "{e}");
    }

    #[test]
    fn a_flag_without_value_takes_none_and_the_next_word_is_a_flag_again() {
        assert_eq!(
            parse_options("ext4", "-j -m 1 -D").unwrap(),
            ["-j", "-m", "1", "-D"]
        );
        // `-j` takes no value: `5` is then a word of its own, and no flag.
        assert!(parse_options("ext4", "-j 5").is_err());
        assert_eq!(parse_options("xfs", "-K -L x").unwrap(), ["-K", "-L", "x"]);
        // XFS's label is shorter than ext4's.
        assert!(parse_options("xfs", "-L abcdefghijkl").is_ok());
        assert!(parse_options("xfs", "-L abcdefghijklm").is_err());
    }

    #[test]
    fn options_that_name_paths_or_change_the_job_are_refused() {
        for (fs, options) in [
            ("ext4", "-d var"),
            ("ext4", "-d /"),
            ("ext4", "-jd var"),
            ("ext4", "-m0"),
            ("ext4", "-l /etc/shadow"),
            ("ext4", "-z /tmp/undo"),
            ("ext4", "-J device=/dev/sda"),
            ("ext4", "-E offset=4096"),
            ("ext4", "-E root_owner=/etc"),
            ("ext4", "-L -d"),
            ("ext4", "-L"),
            ("ext4", "-M /var"),
            ("ext4", "-F"),
            ("ext4", "-n"),
            ("ext4", "-S"),
            ("ext4", "var"),
            ("ext4", "-O has_journal,../x"),
            ("ext4", "-U not-a-uuid"),
            ("ext3", "-c"),
            ("xfs", "-p /etc/passwd"),
            ("xfs", "-c options=/etc/x"),
            ("xfs", "-d name=/dev/sda"),
            ("xfs", "-d file,size=1g"),
            ("xfs", "-d var"),
            ("xfs", "-l logdev=/dev/sda"),
            ("xfs", "-r rtdev=/dev/sda"),
            ("xfs", "-m 0"),
            ("xfs", "-f"),
            ("btrfs", "-m 0"),
        ] {
            assert!(
                parse_options(fs, options).is_err(),
                "{fs} `{options}` was accepted"
            );
        }
    }

    #[test]
    fn options_that_shape_only_the_new_filesystem_pass() {
        for (fs, options, words) in [
            ("ext4", "", 0),
            ("ext4", "-m 0", 2),
            ("ext4", "-m 0.5 -j -D", 4),
            (
                "ext4",
                "-E lazy_itable_init=0,root_owner=1000:1000,nodiscard -O ^has_journal,metadata_csum",
                4,
            ),
            ("ext3", "-b 4096 -i 16384 -I 256 -L data_1 -T largefile", 10),
            ("ext4", "-U 0f923194-922a-5dd8-b376-c2c6ccb56dd8 -e remount-ro", 4),
            ("ext4", "-J size=64", 2),
            ("xfs", "-m reflink=1,crc=1 -d agcount=4,su=64k,sw=2 -K", 5),
            ("xfs", "-i size=512 -n ftype=1 -l size=64m,lazy-count=1 -L data", 8),
        ] {
            let out = parse_options(fs, options).unwrap();
            assert_eq!(out.len(), words, "{fs} `{options}`");
        }
    }

    #[test]
    fn errors_name_the_offending_word() {
        let e = parse_options("ext4", "-m 0 -d var").unwrap_err();
        assert!(e.contains("`-d`"), "{e}");
        let e = parse_options("xfs", "-d name=/dev/sda").unwrap_err();
        assert!(e.contains("name"), "{e}");
        let e = parse_options("ext4", "-E root_owner=/etc").unwrap_err();
        assert!(e.contains("root_owner=/etc"), "{e}");
    }
}
