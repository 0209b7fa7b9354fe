//! Property tests of the RDS command and output layer: no input can reshape a command line, and
//! RouterOS-shaped output of any disk parses back to that disk.

use proptest::prelude::*;
use rds_csi::rds::command::{AllocSize, Command, DiskAdd, NvmeExport, Port, RdsPath, Slot};
use rds_csi::rds::model::Disk;
use rds_csi::rds::parse::parse_detail;

/// Splits a RouterOS command line into words the way the CLI does: whitespace separates words
/// except inside double quotes (with backslash escapes) and inside `[...]`.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped, mut depth) = (false, false, 0u32);
    for c in line.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && c == '[' {
            depth += 1;
        } else if !quoted && c == ']' {
            depth = depth.saturating_sub(1);
        } else if !quoted && depth == 0 && c.is_whitespace() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn keys(line: &str) -> Vec<String> {
    split_words(line)
        .into_iter()
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever strings a caller passes, a command either cannot be built or has exactly the
    /// intended arguments, each carrying exactly the value given.
    #[test]
    fn no_input_adds_arguments(
        slot in "[a-z0-9 \"=\\]\\[;$\\\\-]{1,12}",
        src in "[a-z0-9 \"=\\]\\[;$-]{1,12}",
        file in "[a-zA-Z0-9 \"=\\]\\[;$\\\\./_-]{1,16}",
        port in 0u32..70000,
    ) {
        let metachar = |s: &str| s.chars().any(|c| " \"=[];$\\".contains(c));
        let base = RdsPath::new("/storage-pool/metal-csi").unwrap();
        if metachar(&slot) {
            prop_assert!(Slot::new(slot.clone()).is_err());
        }
        if metachar(&file) {
            prop_assert!(base.join(&file).is_err());
        }
        let (Ok(slot), Ok(path)) = (Slot::new(slot), base.join(&file)) else { return Ok(()); };
        let Ok(port) = Port::new(port) else { return Ok(()); };
        let copy_from = Slot::new(src).ok();
        let add = Command::DiskAdd(DiskAdd {
            slot: slot.clone(),
            file_path: path.clone(),
            size: Some(AllocSize::round_up(1 << 30).unwrap()),
            copy_from: copy_from.clone(),
            export: Some(NvmeExport { port, nqn: slot.nqn() }),
        });
        let line = add.render();
        let mut expected = vec!["/disk", "add", "type"];
        if copy_from.is_some() { expected.push("copy-from"); }
        expected.extend(["file-path", "file-size", "slot", "nvme-tcp-export", "nvme-tcp-server-port", "nvme-tcp-server-nqn"]);
        prop_assert_eq!(keys(&line), expected);
        let words = split_words(&line);
        prop_assert!(words.contains(&format!("slot=\"{slot}\"")), "{}", line);
        prop_assert!(words.contains(&format!("file-path=\"{path}\"")), "{}", line);

        for cmd in [
            Command::DiskRemove { slot: slot.clone() },
            Command::FileRemove { path: path.clone() },
        ] {
            let line = cmd.render();
            prop_assert_eq!(split_words(&line).len(), 3, "{}", line);
        }
    }

    /// RouterOS-shaped output of a generated disk (legend, index, flags, 80-column wrapping with
    /// breaks inside long values, CRLF) reads back to the same values.
    #[test]
    fn detail_output_round_trips(
        id in "[a-z0-9]{1,8}(-[a-z0-9]{1,12}){0,5}",
        dir in "(/[a-z0-9._-]{1,12}){1,4}",
        size in 1u64..(1 << 50),
        export in any::<bool>(),
        port in 1u16..,
        index in 0u32..300,
    ) {
        let disk = Disk {
            slot: id.clone(),
            disk_type: "file".into(),
            flags: if export { "t".into() } else { String::new() },
            file_path: Some(format!("{dir}/{id}.img")),
            size_bytes: Some(size),
            size_precision: 0,
            nvme_export: export,
            nvme_port: export.then_some(port),
            nqn: export.then(|| format!("nqn.2000-02.com.mikrotik:{id}")),
            allowed_host: None,
            mount_point: None,
            free_bytes: None,
            model: None,
        };
        let text = format_like_routeros(&[(index, &disk)]);
        let entries = parse_detail(&text).unwrap();
        prop_assert_eq!(entries.len(), 1, "{}", text);
        let parsed = Disk::from_entry(&entries[0]).unwrap();
        prop_assert_eq!(parsed, disk, "{}", text);
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn parser_never_panics(text in any::<String>()) {
        for entry in parse_detail(&text).unwrap_or_default() {
            let _ = Disk::from_entry(&entry);
        }
    }
}

/// An independent, test-only rendering of `/disk print detail` output, written from the shapes
/// recorded in fixtures/routeros/README.md (not shared with mock-rds).
fn format_like_routeros(disks: &[(u32, &Disk)]) -> String {
    const WIDTH: usize = 80;
    const INDENT: usize = 15;
    let mut out = String::from("Flags: X - disabled; t - nvme-tcp-export\r\n");
    for (index, disk) in disks {
        let mut fields = vec![
            format!("type={}", disk.disk_type),
            format!("slot=\"{}\"", disk.slot),
            "slot-default=\"\"".to_string(),
            format!("size={}", separate(disk.size_bytes.unwrap())),
            format!("file-path={}", disk.file_path.as_deref().unwrap()),
            format!(
                "nvme-tcp-export={}",
                if disk.nvme_export { "yes" } else { "no" }
            ),
        ];
        if disk.nvme_export {
            fields.push(format!("nvme-tcp-server-port={}", disk.nvme_port.unwrap()));
            fields.push(format!(
                "nvme-tcp-server-nqn=\"{}\"",
                disk.nqn.as_deref().unwrap()
            ));
        }
        let mut line = format!("{index:>2} {:<3} ", disk.flags);
        let mut lines = Vec::new();
        for field in fields {
            let mut token = field.as_str();
            if line.len() + 1 + token.len() > WIDTH && line.trim().len() > 6 {
                lines.push(std::mem::replace(&mut line, " ".repeat(INDENT)));
            } else if !line.ends_with(' ') {
                line.push(' ');
            }
            // Hard-break a token that does not fit on a line at all.
            while line.len() + token.len() > WIDTH {
                let room = WIDTH - line.len();
                line.push_str(&token[..room]);
                token = &token[room..];
                lines.push(std::mem::replace(&mut line, " ".repeat(INDENT)));
            }
            line.push_str(token);
        }
        lines.push(line);
        for l in lines {
            out.push_str(l.trim_end());
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
    }
    out
}

fn separate(n: u64) -> String {
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
