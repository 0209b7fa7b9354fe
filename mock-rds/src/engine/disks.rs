//! `/disk add`, `/disk set` and `/disk remove`: the commands that change disks, with the
//! behaviour variants that shape them (copies, directories, resizes, busy disks).

use super::*;

impl Engine {
    pub(super) fn disk_add(&self, inv: &Invocation, conn: Option<u64>) -> Result<String, CliError> {
        inv.only_args(&[
            "type",
            "file-path",
            "file-size",
            "slot",
            "nvme-tcp-export",
            "nvme-tcp-server-port",
            "nvme-tcp-server-nqn",
            "nvme-tcp-server-allow-host-name",
            "copy-from",
        ])?;
        self.refuse_absent_properties(inv)?;
        if let Some(p) = inv.positional.first() {
            return Err(CliError::ExpectedEnd { col: p.col });
        }
        match inv.text("type") {
            Some("file") => {}
            Some("tmpfs" | "nvme-tcp" | "iscsi" | "nfs" | "smb" | "raid") => {
                return Err(failure("only type=file is simulated"))
            }
            Some(_) => return Err(CliError::NoMatch { arg: "type".into() }),
            None => return Err(failure("type not specified")),
        }
        let file_path = inv
            .text("file-path")
            .ok_or_else(|| failure("file-path not specified"))?
            .to_string();
        self.check_path(&file_path)?;
        let size = opt_size(inv, "file-size")?;
        let export_arg = opt_bool(inv, "nvme-tcp-export")?;
        let export = export_arg.unwrap_or(false);
        let port = match inv.text("nvme-tcp-server-port") {
            None => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| CliError::InvalidValue {
                arg: "nvme-tcp-server-port".into(),
            })?),
        };
        if inv.arg("nvme-tcp-server-port").is_some() && port.is_none() {
            return Err(CliError::InvalidValue {
                arg: "nvme-tcp-server-port".into(),
            });
        }
        let nqn = inv.text("nvme-tcp-server-nqn").map(str::to_string);
        let allow_host = allow_host_arg(inv)?;

        let mut st = lock(&self.state);
        let source = match inv.arg("copy-from").map(|a| &a.value) {
            None => None,
            Some(target) => {
                let slots = self.select_disks(&st, target)?;
                let src = slots
                    .iter()
                    .find_map(|s| st.disk(s))
                    .cloned()
                    .ok_or_else(|| failure("no such item"))?;
                Some(src)
            }
        };
        let slot = match inv.text("slot") {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => (1..)
                .map(|n| format!("file{n}"))
                .find(|s| st.disk(s).is_none())
                .unwrap_or_default(),
        };
        if st.disk(&slot).is_some() || slot == self.cfg.mount_point {
            return Err(failure("disk with such slot already exists"));
        }
        let profile = self.profile();
        let size = match (&source, size) {
            (Some(src), _) if profile.has(Variant::CopyIgnoresSize) => src.file_size,
            (Some(src), s) => s.unwrap_or(0).max(src.file_size),
            (None, Some(s)) => s,
            (None, None) => return Err(failure("file-size not specified")),
        };
        if profile.has(Variant::DirsNoCreate) && !st.parent_exists(&file_path) {
            return Err(failure("could not create file: no such directory"));
        }
        // Without NVMe/TCP arguments a copy may keep its source's export settings.
        let (export, port, nqn) = match &source {
            Some(src) if export_arg.is_none() && profile.has(Variant::CopyInheritsExport) => (
                src.nvme_tcp_export,
                port.or(src.nvme_tcp_server_port),
                nqn.or_else(|| src.nvme_tcp_server_nqn.clone()),
            ),
            _ => (export, port, nqn),
        };
        let copy_async = source.is_some() && profile.has(Variant::CopyAsync);
        if st.disks.iter().any(|d| d.file_path == file_path) {
            return Err(failure("file is already used by another disk"));
        }
        if st.file(&file_path).is_some() {
            return Err(failure("file already exists"));
        }
        let free = self
            .cfg
            .pool_size
            .saturating_sub(st.used(&self.cfg.mount_point));
        if size > free {
            return Err(failure("not enough space"));
        }
        // A copy armed to stop short (`/mock copy-short`): at once, or under copy-async at the
        // end of its run.
        let short = match source {
            Some(_) => lock(&self.background).take_short(),
            None => None,
        };
        let copied = match short {
            Some(s) if !copy_async => size.saturating_sub(s.by),
            _ => size,
        };
        if let Some(dd) = &self.cfg.data_dir {
            let res = match &source {
                Some(src) => dd.copy(&src.file_path, &file_path, size).and_then(|()| {
                    if copied < size {
                        dd.truncate(&file_path, copied)
                    } else {
                        Ok(())
                    }
                }),
                None => dd.create(&file_path, size),
            };
            res.map_err(|e| failure(format!("could not create file: {e}")))?;
        }
        let id = st.take_id();
        st.disks.push(Disk {
            slot: slot.clone(),
            file_path: file_path.clone(),
            file_size: size,
            nvme_tcp_export: export,
            nvme_tcp_server_port: if export {
                Some(port.unwrap_or(4420))
            } else {
                port
            },
            nvme_tcp_server_nqn: if export {
                Some(nqn.unwrap_or_else(|| default_nqn(&slot)))
            } else {
                nqn
            },
            nvme_tcp_server_allow_host_name: allow_host.unwrap_or_default(),
            copied_from: source.as_ref().map(|s| s.slot.clone()),
            id,
        });
        let now = self.now();
        if let (true, Some(src)) = (copy_async, &source) {
            // The disk is there at once; its file fills over time.
            st.put_file(&file_path, 0, now);
            lock(&self.background).start_copy(&slot, &src.slot, &file_path, size, conn, short);
        } else {
            st.put_file(&file_path, copied, now);
        }
        self.persist(&st);
        Ok(String::new())
    }

    pub(super) fn check_path(&self, file_path: &str) -> Result<(), CliError> {
        if !state::valid_path(file_path) {
            return Err(failure("invalid file-path"));
        }
        let under = file_path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.cfg.mount_point.as_str()))
            .is_some_and(|rest| rest.starts_with('/'));
        if !under {
            return Err(failure("file-path is not on a mounted disk"));
        }
        Ok(())
    }

    /// Under `no-allow-host` this RouterOS has no `nvme-tcp-server-allow-host-name`: naming it
    /// is the error any unknown argument gets.
    fn refuse_absent_properties(&self, inv: &Invocation) -> Result<(), CliError> {
        match inv.arg("nvme-tcp-server-allow-host-name") {
            Some(a) if self.has(Variant::NoAllowHost) => Err(CliError::ExpectedEnd { col: a.col }),
            _ => Ok(()),
        }
    }

    pub(super) fn single_target<'a>(&self, inv: &'a Invocation) -> Result<&'a Value, CliError> {
        match inv.positional.as_slice() {
            [one] => Ok(&one.value),
            [] => Err(failure("no item specified")),
            [_, extra, ..] => Err(CliError::ExpectedEnd { col: extra.col }),
        }
    }

    pub(super) fn disk_set(&self, inv: &Invocation) -> Result<String, CliError> {
        inv.only_args(&[
            "file-size",
            "nvme-tcp-export",
            "nvme-tcp-server-port",
            "nvme-tcp-server-nqn",
            "nvme-tcp-server-allow-host-name",
        ])?;
        self.refuse_absent_properties(inv)?;
        let target = self.single_target(inv)?;
        let size = opt_size(inv, "file-size")?;
        let export = opt_bool(inv, "nvme-tcp-export")?;
        let port = match inv.text("nvme-tcp-server-port") {
            None => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| CliError::InvalidValue {
                arg: "nvme-tcp-server-port".into(),
            })?),
        };
        let nqn = inv.text("nvme-tcp-server-nqn").map(str::to_string);
        let allow_host = allow_host_arg(inv)?;

        let mut st = lock(&self.state);
        let slots = self.select_disks(&st, target)?;
        if slots.contains(&self.cfg.mount_point) {
            return Err(failure("can not change this disk"));
        }
        self.refuse_busy(&slots)?;
        let profile = self.profile();
        if size.is_some() && export != Some(false) && profile.has(Variant::ResizeRefusedExported) {
            let exported = slots
                .iter()
                .any(|s| st.disk(s).is_some_and(|d| d.nvme_tcp_export));
            if exported {
                return Err(failure("can not change file-size of an exported disk"));
            }
        }
        // Check every target before changing any, so a failure leaves the state untouched.
        let mut grow = 0u64;
        if let Some(new) = size {
            for s in &slots {
                let d = st.disk(s).ok_or_else(|| failure("no such item"))?;
                if new < d.file_size {
                    return Err(failure("file-size can not be decreased"));
                }
                grow = grow.saturating_add(new - d.file_size);
            }
            let free = self
                .cfg
                .pool_size
                .saturating_sub(st.used(&self.cfg.mount_point));
            if grow > free {
                return Err(failure("not enough space"));
            }
        }
        let now = self.now();
        for s in &slots {
            let Some(i) = st.disks.iter().position(|d| d.slot == *s) else {
                continue;
            };
            if let Some(new) = size {
                if new > st.disks[i].file_size {
                    let fp = st.disks[i].file_path.clone();
                    if let Some(dd) = &self.cfg.data_dir {
                        dd.grow(&fp, new)
                            .map_err(|e| failure(format!("could not resize file: {e}")))?;
                    }
                    if profile.has(Variant::ResizeDelayed) {
                        let slot = st.disks[i].slot.clone();
                        lock(&self.background).delay_resize(&slot, new);
                    } else {
                        st.disks[i].file_size = new;
                        if st.file(&fp).is_some() {
                            st.put_file(&fp, new, now);
                        }
                    }
                }
            }
            let d = &mut st.disks[i];
            if let Some(e) = export {
                d.nvme_tcp_export = e;
                if e {
                    d.nvme_tcp_server_port.get_or_insert(4420);
                    let slot = d.slot.clone();
                    d.nvme_tcp_server_nqn
                        .get_or_insert_with(|| default_nqn(&slot));
                }
            }
            if let Some(p) = port {
                d.nvme_tcp_server_port = Some(p);
            }
            if let Some(n) = &nqn {
                d.nvme_tcp_server_nqn = Some(n.clone());
            }
            if let Some(h) = &allow_host {
                d.nvme_tcp_server_allow_host_name = h.clone();
            }
        }
        self.persist(&st);
        Ok(String::new())
    }

    pub(super) fn disk_remove(&self, inv: &Invocation) -> Result<String, CliError> {
        no_named(inv)?;
        if inv.positional.is_empty() {
            return Err(failure("no item specified"));
        }
        let mut st = lock(&self.state);
        let mut slots = Vec::new();
        for p in &inv.positional {
            slots.extend(self.select_disks(&st, &p.value)?);
        }
        if slots.contains(&self.cfg.mount_point) {
            return Err(failure("disk is in use"));
        }
        self.refuse_busy(&slots)?;
        if slots.is_empty() {
            return Ok(String::new());
        }
        // RouterOS keeps the backing file: the driver must remove it with /file remove.
        st.disks.retain(|d| !slots.contains(&d.slot));
        self.persist(&st);
        Ok(String::new())
    }

    /// A disk a copy is still reading or writing cannot change.
    pub(super) fn refuse_busy(&self, slots: &[String]) -> Result<(), CliError> {
        let bg = lock(&self.background);
        if slots.iter().any(|s| bg.busy(s)) {
            return Err(failure("disk is busy"));
        }
        Ok(())
    }
}

/// `nvme-tcp-server-allow-host-name`: empty, or host NQNs separated by commas.
fn allow_host_arg(inv: &Invocation) -> Result<Option<String>, CliError> {
    let Some(v) = inv.text("nvme-tcp-server-allow-host-name") else {
        return Ok(None);
    };
    let valid = v.split(',').all(|h| {
        h.is_empty()
            || (h.starts_with("nqn.")
                && h.len() <= 223
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b)))
    });
    if !valid {
        return Err(CliError::InvalidValue {
            arg: "nvme-tcp-server-allow-host-name".into(),
        });
    }
    Ok(Some(v.to_string()))
}
