//! The probes of `rds-csi validate`, one per assumption: each runs its commands in the scratch
//! directory, records what RouterOS did, and says which mock-rds variants that matches.

use std::time::Duration;

use tokio::time::Instant;

use super::{exit_of, failed, text, Handled, Run, BARE_TEXTS, BURST, MIB, SETTLE};
use crate::rds::command::{quote, Command, RdsPath, Slot, NQN_PREFIX};
use crate::rds::error::{classify, is_known_failure_text, ExecOutput};
use crate::rds::parse::{parse_detail, parse_exact_count, parse_human_size, parse_key_colon_value};
use crate::rds::{Disk, RdsClock, TransportError};

impl Run<'_> {
    pub(super) async fn version(&mut self) -> anyhow::Result<()> {
        let out = self
            .exec("/system resource print", Some("system-resource-print.txt"))
            .await?;
        let kv = parse_key_colon_value(&out.stdout);
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        self.report.routeros_version = get("version");
        self.report.board = get("board-name");
        let observed = format!(
            "RouterOS {}, board {}",
            self.report.routeros_version.as_deref().unwrap_or("?"),
            self.report.board.as_deref().unwrap_or("?")
        );
        self.find(
            "version",
            "RouterOS and board version",
            observed,
            vec![],
            Handled::Yes,
        );
        Ok(())
    }

    pub(super) async fn clock(&mut self) -> anyhow::Result<()> {
        let out = self
            .exec("/system clock print", Some("system-clock-print.txt"))
            .await?;
        let (observed, variants, handled) = match RdsClock::parse(&out.stdout) {
            Ok(clock) => {
                let ours = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let skew = clock.now_wall - clock.offset_seconds - ours;
                let variants = match clock.offset_seconds {
                    o if o < 0 => vec!["clock-west"],
                    o if o > 0 => vec!["clock-east"],
                    _ => vec![],
                };
                (
                    format!(
                        "UTC{:+} h ({}); the RDS's clock is {skew} s from ours",
                        clock.offset_seconds as f64 / 3600.0,
                        parse_key_colon_value(&out.stdout)
                            .into_iter()
                            .find(|(k, _)| k == "time-zone-name")
                            .map_or("zone unknown".into(), |(_, v)| v)
                    ),
                    variants,
                    Handled::Yes,
                )
            }
            Err(e) => (e, vec![], Handled::No),
        };
        self.find(
            "clock",
            "time zone and clock (file times are local)",
            observed,
            variants,
            handled,
        );
        Ok(())
    }

    pub(super) async fn print_terse(&mut self) -> anyhow::Result<()> {
        let slot = self.slot("none")?;
        let line = format!("/disk print terse where slot={}", quote(slot.as_str()));
        let out = self.exec(&line, Some("disk-print-terse-empty.txt")).await?;
        let ok = classify(out.clone(), false).is_ok() && parse_detail(&out.stdout).is_ok();
        let (observed, variants) = if ok {
            ("supported".to_string(), vec!["terse-supported"])
        } else if text(&out).to_ascii_lowercase().contains("syntax error") {
            (
                format!("refused: {} ({})", text(&out), exit_of(&out)),
                vec!["terse-error"],
            )
        } else {
            (
                format!("refused: {} ({})", text(&out), exit_of(&out)),
                vec![],
            )
        };
        self.find(
            "print-terse",
            "`print terse` support",
            observed,
            variants,
            Handled::Yes,
        );
        Ok(())
    }

    pub(super) async fn make_scratch(&mut self, base: &RdsPath) -> anyhow::Result<()> {
        let is_dir = self.file(base).await?.is_some_and(|f| f.is_directory());
        anyhow::ensure!(
            is_dir,
            "the base path {base} is not a directory on the RDS; create it first \
             (`/file add type=directory name={}`) or pass --rds-volume-base-path",
            base.file_name()
        );
        let scratch = self.scratch.clone();
        anyhow::ensure!(
            self.file(&scratch).await?.is_none(),
            "{scratch} already exists on the RDS; refusing to touch it"
        );
        // Noted before the command, as disks are: a run stopped while it is sent still
        // removes it, and it was not there a moment ago.
        self.dirs.push(scratch.clone());
        let out = self
            .exec(
                &format!(
                    "/file add type=directory name={}",
                    quote(scratch.file_name())
                ),
                None,
            )
            .await?;
        anyhow::ensure!(
            !failed(&out),
            "could not make the scratch directory {scratch}: {}",
            text(&out)
        );
        self.find(
            "scratch",
            "`/file add type=directory` makes a directory",
            format!("made {scratch}"),
            vec![],
            Handled::Yes,
        );
        Ok(())
    }

    fn add_line(&self, slot: &Slot, path: &RdsPath, size: &str, export: bool) -> String {
        let mut line = format!(
            "/disk add type=file file-path={} file-size={} slot={}",
            quote(path.as_str()),
            quote(size),
            quote(slot.as_str())
        );
        if export {
            line += &format!(
                " nvme-tcp-export=yes nvme-tcp-server-port=\"4420\" nvme-tcp-server-nqn={}",
                quote(&format!("{NQN_PREFIX}{slot}"))
            );
        }
        line
    }

    pub(super) async fn directories(&mut self) -> anyhow::Result<()> {
        let slot = self.slot("dir")?;
        let dir = self.scratch.join("sub")?;
        let path = dir.join(&format!("{slot}.img"))?;
        let line = self.add_line(&slot, &path, "1M", false);
        self.adding(&slot, &path);
        // Inside the fresh scratch directory, so whatever is there later is this run's own;
        // removing it when the RDS never made it is a no-op.
        self.dirs.push(dir);
        let out = self.exec(&line, None).await?;
        let made = self.disk(&slot).await?.is_some();
        if !made {
            self.bundle.files.push((
                "error-no-such-directory.txt".into(),
                out.stdout.clone() + &out.stderr,
            ));
        }
        let (observed, variants) = if made {
            ("creates missing directories".to_string(), vec![])
        } else {
            (
                format!("refuses: {} ({})", text(&out), exit_of(&out)),
                vec!["dirs-no-create"],
            )
        };
        self.find(
            "directories",
            "`/disk add` makes the file's directory",
            observed,
            variants,
            Handled::Yes,
        );
        Ok(())
    }

    /// The scratch volume: a long name, so its path and NQN wrap.
    fn volume(&self) -> anyhow::Result<(Slot, RdsPath)> {
        let slot = self.slot("vol-0123456789abcdef-0123456789")?;
        let path = self.scratch.join(&format!("{slot}.img"))?;
        Ok((slot, path))
    }

    pub(super) async fn add(&mut self) -> anyhow::Result<()> {
        let (slot, path) = self.volume()?;
        let line = self.add_line(&slot, &path, "1M", true);
        self.adding(&slot, &path);
        let out = self.exec(&line, None).await?;
        let made = self.disk(&slot).await?;
        let silent = out.stdout.trim().is_empty() && out.exit_status == Some(0);
        let (observed, handled) = match (&made, silent) {
            (Some(_), true) => ("prints nothing, exit 0".to_string(), Handled::Yes),
            (Some(_), false) => (
                format!(
                    "made the disk but printed {:?} ({})",
                    text(&out),
                    exit_of(&out)
                ),
                Handled::No,
            ),
            (None, _) => anyhow::bail!("`/disk add` failed: {} ({})", text(&out), exit_of(&out)),
        };
        self.bundle.expected = serde_json::json!({
            "slot": slot.as_str(),
            "file_path": path.as_str(),
            "size_bytes": MIB,
            "nqn": format!("{NQN_PREFIX}{slot}"),
        });
        self.find(
            "add",
            "a successful `/disk add` prints nothing",
            observed,
            vec![],
            handled,
        );
        Ok(())
    }

    pub(super) async fn wrapping(&mut self) -> anyhow::Result<()> {
        let (slot, path) = self.volume()?;
        let line = format!("/disk print detail where slot={}", quote(slot.as_str()));
        let out = self
            .exec(&line, Some("disk-print-detail-single.txt"))
            .await?;
        let (seen, variants, width) = wrap_features(&out.stdout);
        let parsed = self.disk(&slot).await?;
        let exact = parsed.as_ref().is_some_and(|d| {
            d.file_path.as_deref() == Some(path.as_str())
                && d.size_bytes == Some(MIB)
                && d.nqn.as_deref() == Some(format!("{NQN_PREFIX}{slot}").as_str())
        });
        let observed = format!(
            "{}; the driver reads path, size and NQN {}",
            describe_wrapping(&seen, width),
            if exact { "exactly" } else { "WRONG" }
        );
        let handled = if exact { Handled::Yes } else { Handled::No };
        self.find(
            "wrapping",
            "how `print detail` wraps long values",
            observed,
            variants,
            handled,
        );
        Ok(())
    }

    pub(super) async fn failures(&mut self) -> anyhow::Result<()> {
        let (slot, path) = self.volume()?;
        let duplicate = self.add_line(&slot, &path, "1M", true);
        let dup = self
            .exec(&duplicate, Some("error-already-exists.txt"))
            .await?;
        let absent = self.slot("absent")?;
        let missing = self
            .exec(
                &format!("/disk remove {}", quote(absent.as_str())),
                Some("error-no-such-item.txt"),
            )
            .await?;
        let bad = self
            .exec(
                &format!(
                    "/disk set [find slot={}] file-size=\"lots\"",
                    quote(slot.as_str())
                ),
                Some("error-invalid-value.txt"),
            )
            .await?;
        let outs = [&dup, &missing, &bad];
        let exits: Vec<String> = outs.iter().map(|o| exit_of(o)).collect();
        let mut variants = Vec::new();
        if outs.iter().all(|o| o.exit_status == Some(0)) {
            variants.push("exit-zero");
        } else if outs.iter().all(|o| o.exit_status.is_none()) {
            variants.push("exit-none");
        }
        let texts: Vec<String> = outs.iter().map(|o| text(o)).collect();
        let lower: Vec<String> = texts.iter().map(|t| t.to_ascii_lowercase()).collect();
        if texts.iter().all(|t| is_known_failure_text(t)) {
            // The RouterOS forms the driver knows.
        } else if lower
            .iter()
            .any(|t| BARE_TEXTS.iter().any(|b| t.starts_with(b)))
        {
            variants.push("errors-bare");
        } else {
            variants.push("errors-unknown");
        }
        let all_failures = outs.iter().all(|o| failed(o));
        let observed = format!(
            "{}; texts: {}",
            exits.join(", "),
            texts
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let handled = if all_failures {
            Handled::Yes
        } else {
            Handled::No
        };
        self.find(
            "failures",
            "exit status and texts of failed commands",
            observed,
            variants,
            handled,
        );
        Ok(())
    }

    pub(super) async fn regex(&mut self) -> anyhow::Result<()> {
        let name = format!("{}/", self.scratch.file_name());
        let anchored = self
            .exec(
                &format!(
                    "/file print detail where name~{}",
                    quote(&format!("^{name}"))
                ),
                Some("file-print-detail-anchored.txt"),
            )
            .await?;
        let plain = self
            .exec(
                &format!("/file print detail where name~{}", quote(&name)),
                Some("file-print-detail.txt"),
            )
            .await?;
        let count = |o: &ExecOutput| parse_detail(&o.stdout).map_or(0, |e| e.len());
        let (a, p) = (count(&anchored), count(&plain));
        let (observed, variants) = if a == 0 && p > 0 {
            (
                format!("`^` matches nothing ({p} files without it)"),
                vec!["regex-no-anchors"],
            )
        } else {
            (
                format!("anchors work ({a} files with `^`, {p} without)"),
                vec![],
            )
        };
        self.find(
            "regex",
            "`~` patterns support `^`",
            observed,
            variants,
            Handled::Yes,
        );
        Ok(())
    }

    pub(super) async fn file_times(&mut self) -> anyhow::Result<()> {
        let (_, path) = self.volume()?;
        let file = self.file(&path).await?;
        let clock = self.rds.clock(Self::deadline()).await?;
        let (observed, handled) = match file.as_ref().and_then(|f| f.last_modified.clone()) {
            Some(printed) => match clock.age(&printed) {
                Some(age) if age < Duration::from_secs(600) => (
                    format!("`{printed}`, {} s old by the RDS's clock", age.as_secs()),
                    Handled::Yes,
                ),
                other => (
                    format!(
                        "`{printed}` does not read as just made ({} by the RDS's clock)",
                        other.map_or("no age".into(), |age| format!("{} s old", age.as_secs()))
                    ),
                    Handled::No,
                ),
            },
            None => ("no last-modified time".to_string(), Handled::No),
        };
        self.find(
            "file-times",
            "file times are in the RDS's local time",
            observed,
            vec![],
            handled,
        );
        Ok(())
    }

    pub(super) async fn copy(&mut self) -> anyhow::Result<()> {
        let (source, _) = self.volume()?;
        let slot = self.slot("copy")?;
        let path = self.scratch.join(&format!("{slot}.img"))?;
        // No NVMe/TCP arguments: does the copy keep its source's export?
        let line = format!(
            "/disk add type=file copy-from=[find slot={}] file-path={} slot={}",
            quote(source.as_str()),
            quote(path.as_str()),
            quote(slot.as_str())
        );
        self.adding(&slot, &path);
        let out = self.exec(&line, None).await?;
        anyhow::ensure!(!failed(&out), "`copy-from` failed: {}", text(&out));
        let short_at_once = match (self.disk(&slot).await?, self.file(&path).await?) {
            (Some(d), Some(f)) => {
                f.size_bytes.unwrap_or(0) + f.size_precision < d.size_bytes.unwrap_or(0)
            }
            _ => true,
        };
        let until = Instant::now() + SETTLE;
        let whole = loop {
            let complete = match (self.disk(&slot).await?, self.file(&path).await?) {
                (Some(d), Some(f)) => {
                    f.size_bytes.unwrap_or(0) + f.size_precision >= d.size_bytes.unwrap_or(u64::MAX)
                }
                _ => false,
            };
            if complete || Instant::now() >= until {
                break complete;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let disk = self.disk(&slot).await?;
        let inherited = disk.as_ref().is_some_and(|d| d.nvme_export);
        let mut variants = Vec::new();
        let mut seen = Vec::new();
        if short_at_once {
            variants.push("copy-async");
            seen.push(if whole {
                "replies before the copy is whole (the file grew afterwards)"
            } else {
                "replies before the copy is whole, and it never became whole"
            });
        } else {
            seen.push("replies when the copy is whole");
        }
        if inherited {
            variants.push("copy-inherits-export");
            seen.push("keeps the source's NVMe/TCP export");
        } else {
            seen.push("is not exported");
        }
        let handled = if whole { Handled::Yes } else { Handled::No };
        self.find(
            "copy",
            "`copy-from` is synchronous and not exported",
            seen.join("; "),
            variants,
            handled,
        );
        Ok(())
    }

    /// Whether the RDS gives a file's exact size (`:put [/file get ... size]`), on the copy the
    /// `copy` step made: with it the driver knows a copy is whole; without it, only to the
    /// rounding of `/file print`'s size.
    pub(super) async fn exact_size(&mut self) -> anyhow::Result<()> {
        let slot = self.slot("copy")?;
        let path = self.scratch.join(&format!("{slot}.img"))?;
        let want = self.disk(&slot).await?.and_then(|d| d.size_bytes);
        let line = Command::FileExactSize { path: path.clone() }.render();
        // A read: its output is the answer, not the unexpected text of a mutation.
        let refused = |out: &ExecOutput| classify(out.clone(), false).is_err();
        // An asynchronous copy may still be writing the last bytes its rounded size hides.
        let until = Instant::now() + SETTLE;
        let out = loop {
            let out = self.exec(&line, None).await?;
            let exact = parse_exact_count(&out.stdout).filter(|_| !refused(&out));
            if exact.is_none() || exact >= want || Instant::now() >= until {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.bundle.files.push((
            "file-exact-size.txt".into(),
            out.stdout.clone() + &out.stderr,
        ));
        let exact = parse_exact_count(&out.stdout).filter(|_| !refused(&out));
        let shown = text(&out);
        let (observed, variants, handled) = match (exact, want) {
            (Some(bytes), Some(want)) if bytes == want => (
                format!("exact: {bytes} bytes, the copy's disk size"),
                vec![],
                Handled::Yes,
            ),
            (Some(bytes), want) => (
                format!(
                    "exact: {bytes} bytes, but the copy's disk shows {}",
                    want.map_or("no size".into(), |w| format!("{w} bytes"))
                ),
                vec![],
                Handled::No,
            ),
            // `contains`: some RouterOS builds may word failures differently around the text.
            (None, _) if shown.to_ascii_lowercase().contains("bad command name") => (
                format!(
                    "refused: {shown} ({}); copies are known whole only to the rounding of \
                     `/file print`",
                    exit_of(&out)
                ),
                vec!["scripting-refused"],
                Handled::Yes,
            ),
            (None, _) if !refused(&out) && parse_human_size(&shown).is_some() => (
                format!(
                    "rounded: {shown}; copies are known whole only to the rounding of \
                     `/file print`"
                ),
                vec!["put-human-size"],
                Handled::Yes,
            ),
            (None, _) => (
                format!("unreadable: {shown} ({})", exit_of(&out)),
                vec![],
                Handled::No,
            ),
        };
        self.find(
            "exact-size",
            "`:put [/file get ... size]` prints a file's exact size in bytes",
            observed,
            variants,
            handled,
        );
        Ok(())
    }

    pub(super) async fn copy_size(&mut self) -> anyhow::Result<()> {
        let (source, _) = self.volume()?;
        let slot = self.slot("grow")?;
        let path = self.scratch.join(&format!("{slot}.img"))?;
        let line = format!(
            "/disk add type=file copy-from=[find slot={}] file-path={} file-size=\"2M\" slot={} nvme-tcp-export=no",
            quote(source.as_str()),
            quote(path.as_str()),
            quote(slot.as_str())
        );
        self.adding(&slot, &path);
        let out = self.exec(&line, None).await?;
        anyhow::ensure!(
            !failed(&out),
            "`copy-from` with file-size failed: {}",
            text(&out)
        );
        let size = self.disk(&slot).await?.and_then(|d| d.size_bytes);
        let (observed, variants) = if size == Some(2 * MIB) {
            ("a copy takes the `file-size` given".to_string(), vec![])
        } else {
            (
                format!(
                    "a copy keeps its source's size ({} for 2 MiB asked)",
                    size.map_or("no size".into(), |b| format!("{b} bytes"))
                ),
                vec!["copy-ignores-size"],
            )
        };
        self.find(
            "copy-size",
            "`copy-from` honours `file-size`",
            observed,
            variants,
            Handled::Yes,
        );
        Ok(())
    }

    pub(super) async fn wrapping_list(&mut self) -> anyhow::Result<()> {
        // Every scratch disk in one listing, with names of many lengths, so line breaks fall
        // at many places (a number is cut only when it happens to straddle a line end).
        let longest = 64 - self.prefix.len() - 2;
        for n in (1..=longest).rev().step_by(2).take(14) {
            let slot = self.slot(&format!("p{}", "x".repeat(n)))?;
            let path = self.scratch.join(&format!("{slot}.img"))?;
            // 1 GiB (sparse, never written) prints as four digit groups.
            let line = self.add_line(&slot, &path, "1G", false);
            self.adding(&slot, &path);
            let out = self.exec(&line, None).await?;
            anyhow::ensure!(!failed(&out), "`/disk add` failed: {}", text(&out));
        }
        let line = format!(
            "/disk print detail where slot~{}",
            quote(&format!("{}-", self.prefix))
        );
        let out = self.exec(&line, Some("disk-print-detail-list.txt")).await?;
        let (seen, variants, width) = wrap_features(&out.stdout);
        let readable = crate::rds::parse::parse_detail(&out.stdout).is_ok_and(|e| e.len() >= 3);
        let observed = format!(
            "{}; the listing {}",
            describe_wrapping(&seen, width),
            if readable { "parses" } else { "does NOT parse" }
        );
        let handled = if readable { Handled::Yes } else { Handled::No };
        self.find(
            "wrapping-list",
            "how a listing of several disks wraps",
            observed,
            variants,
            handled,
        );
        Ok(())
    }

    pub(super) async fn resize(&mut self) -> anyhow::Result<()> {
        let (slot, _) = self.volume()?;
        let line = format!(
            "/disk set [find slot={}] file-size=\"2M\"",
            quote(slot.as_str())
        );
        let out = self.exec(&line, None).await?;
        let grown = |d: Option<Disk>| d.and_then(|d| d.size_bytes) == Some(2 * MIB);
        let (observed, variants) = if failed(&out) {
            (
                format!(
                    "refused for an exported disk: {} ({})",
                    text(&out),
                    exit_of(&out)
                ),
                vec!["resize-refused-exported"],
            )
        } else if grown(self.disk(&slot).await?) {
            ("grows at once".to_string(), vec![])
        } else {
            let until = Instant::now() + SETTLE;
            let later = loop {
                let now_grown = grown(self.disk(&slot).await?);
                if now_grown || Instant::now() >= until {
                    break now_grown;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if later {
                (
                    "shows the new size only later".to_string(),
                    vec!["resize-delayed"],
                )
            } else {
                (
                    "accepted, but the size never changed".to_string(),
                    vec!["resize-delayed"],
                )
            }
        };
        self.find(
            "resize",
            "`/disk set file-size` grows an exported disk at once",
            observed,
            variants,
            Handled::Yes,
        );
        Ok(())
    }

    pub(super) async fn allow_host(&mut self) -> anyhow::Result<()> {
        let (slot, _) = self.volume()?;
        let host = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000000";
        let line = format!(
            "/disk set [find slot={}] nvme-tcp-server-allow-host-name={}",
            quote(slot.as_str()),
            quote(host)
        );
        let out = self
            .exec(&line, Some("disk-set-allow-host-name.txt"))
            .await?;
        let shown = self
            .exec(
                &format!("/disk print detail where slot={}", quote(slot.as_str())),
                None,
            )
            .await?;
        let value = parse_detail(&shown.stdout).ok().and_then(|e| {
            e.first()
                .and_then(|e| e.get("nvme-tcp-server-allow-host-name"))
                .map(str::to_string)
        });
        let (observed, variants) = match (failed(&out), value) {
            (true, None) => (
                format!(
                    "not a property of this RouterOS: {} ({}), and not shown",
                    text(&out),
                    exit_of(&out)
                ),
                vec!["no-allow-host"],
            ),
            (true, Some(v)) => (
                format!(
                    "shown (`{v}`) but not accepted: {} ({})",
                    text(&out),
                    exit_of(&out)
                ),
                vec![],
            ),
            (false, v) => (
                format!(
                    "accepted; read back as {}",
                    v.map_or("nothing".into(), |v| format!("`{v}`"))
                ),
                vec![],
            ),
        };
        // Fencing is off by default; this only tells whether it could be turned on.
        self.find(
            "allow-host",
            "`nvme-tcp-server-allow-host-name` takes a host NQN",
            observed,
            variants,
            Handled::Yes,
        );
        Ok(())
    }

    pub(super) async fn sessions(&mut self) -> anyhow::Result<()> {
        let burst = self
            .rds
            .transport()
            .channel_burst(BURST, Instant::now() + Duration::from_secs(5))
            .await
            .map_err(|e: TransportError| anyhow::anyhow!("channel burst: {e}"))?;
        let mut variants = Vec::new();
        if burst.refused > 0 {
            variants.push("sessions-cap");
        }
        // Opens left unanswered once more than one is pending, or more than a few: the
        // driver's open window (one at first, at most four) settles at one after the first.
        match burst.unanswered {
            0 => {}
            n if n >= BURST - 1 => variants.push("sessions-one-open"),
            _ => variants.push("sessions-serial-open"),
        }
        let observed = format!(
            "{BURST} channels opened at once: {} accepted, {} refused, {} unanswered",
            burst.accepted, burst.refused, burst.unanswered
        );
        self.find(
            "sessions",
            "several channel opens at once are all served",
            observed,
            variants,
            Handled::Yes,
        );
        Ok(())
    }
}

/// What the line breaks of a `print detail` show: the features seen, the variants they match,
/// and the widest line. Each break is judged by both sides of it, so a cut at the width that
/// happens to fall before a hyphen or a digit is not taken for another rule.
fn wrap_features(stdout: &str) -> (Vec<&'static str>, Vec<&'static str>, usize) {
    let lines: Vec<&str> = stdout.lines().map(|l| l.trim_end_matches('\r')).collect();
    let digits = |w: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&w.len()) && w.bytes().all(|b| b.is_ascii_digit())
    };
    let (mut trailing, mut hyphen, mut groups, mut width_cut) = (false, false, false, false);
    for pair in lines.windows(2) {
        let (prev_raw, next_raw) = (pair[0], pair[1]);
        if !next_raw.starts_with("    ") || next_raw.trim().is_empty() {
            continue;
        }
        trailing |= prev_raw.ends_with(' ');
        let prev = prev_raw.trim_end();
        let next = next_raw.trim_start();
        let last = prev.rsplit(' ').next().unwrap_or("");
        let first = next.split(' ').next().unwrap_or("");
        let last_value = last.rsplit_once('=').map_or(last, |(_, v)| v);
        if digits(last_value, 1..=3) && digits(first, 3..=3) {
            groups = true;
        } else if !prev_raw.ends_with(' ') && !first.contains('=') {
            // A cut inside a token: at the width, or earlier before a hyphen.
            if prev.len() >= 79 {
                width_cut = true;
            } else if first.starts_with('-') {
                hyphen = true;
            }
        }
    }
    let mut seen = Vec::new();
    let mut variants = Vec::new();
    for (on, what, variant) in [
        (trailing, "trailing spaces", Some("wrap-trailing-space")),
        (hyphen, "cuts before a hyphen", Some("wrap-hyphen")),
        (
            groups,
            "numbers cut between digit groups",
            Some("wrap-digit-groups"),
        ),
        (width_cut, "tokens cut at 80 columns", None),
    ] {
        if on {
            seen.push(what);
            variants.extend(variant);
        }
    }
    let width = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    (seen, variants, width)
}

fn describe_wrapping(seen: &[&str], width: usize) -> String {
    let what = if seen.is_empty() {
        "no wrapping".to_string()
    } else {
        seen.join(", ")
    };
    format!("{what} (widest line {width})")
}
