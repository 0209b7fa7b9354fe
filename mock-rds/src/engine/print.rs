//! What `print` shows: the entries of disks, files and the pool as RouterOS lays them out, the
//! `where` and `[find ...]` filters over them, and the disks a command's target selects.

use super::*;

pub(super) const DISK_KEYS: &[&str] = &[
    "type",
    "slot",
    "slot-default",
    "parent",
    "fs",
    "fs-label",
    "model",
    "size",
    "free",
    "use",
    "mount-point",
    "mount-filesystem",
    "mount-read-only",
    "compress",
    "sector-size",
    "raid-type",
    "raid-master",
    "nvme-tcp-export",
    "nvme-tcp-server-port",
    "nvme-tcp-server-nqn",
    "nvme-tcp-server-allow-host-name",
    "iscsi-export",
    "nfs-sharing",
    "smb-sharing",
    "media-sharing",
    "media-interface",
    "swap",
    "file-path",
    "file-size",
    "file-offset",
];

pub(super) const FILE_KEYS: &[&str] = &["name", "type", "size", "last-modified"];

impl Engine {
    pub(super) fn pool_entry(&self, st: &State) -> Entry {
        let total = self.cfg.pool_size;
        let used = st.used(&self.cfg.mount_point).min(total);
        let free = total - used;
        let pct = if total == 0 {
            0
        } else {
            ((used as u128 * 100 + total as u128 / 2) / total as u128) as u64
        };
        let mp = &self.cfg.mount_point;
        Entry {
            flags: flags(&[(2, 'B'), (3, 'M')]),
            groups: vec![
                vec![
                    Prop::new("type", PVal::Plain("raid".into())),
                    Prop::new("slot", PVal::Quoted(mp.clone())),
                    Prop::new("slot-default", PVal::Quoted(String::new())),
                    Prop::new("parent", PVal::Quoted(String::new())),
                    Prop::new("fs", PVal::Plain("btrfs".into())),
                    Prop::new("fs-label", PVal::Quoted(mp.clone())),
                ],
                vec![
                    Prop::new("size", PVal::Bytes(total)),
                    Prop::new("free", PVal::Bytes(free)),
                    Prop::new("use", PVal::Percent(pct)),
                    Prop::new("mount-point", PVal::Quoted(mp.clone())),
                    Prop::new("mount-filesystem", PVal::Bool(true)),
                    Prop::new("mount-read-only", PVal::Bool(false)),
                    Prop::new("compress", PVal::Bool(false)),
                    Prop::new("sector-size", PVal::Int(4096)),
                    Prop::new("raid-type", PVal::Plain("raid5".into())),
                    Prop::new("raid-master", PVal::Plain("none".into())),
                ],
                vec![
                    Prop::new("nvme-tcp-export", PVal::Bool(false)),
                    Prop::new("iscsi-export", PVal::Bool(false)),
                ],
                sharing_group(),
            ],
        }
    }

    pub(super) fn disk_entries(&self, st: &State) -> Vec<Entry> {
        let mut disks: Vec<&Disk> = st.disks.iter().collect();
        disks.sort_by_key(|d| d.id);
        let mut out = vec![self.pool_entry(st)];
        let allow_host = !self.has(Variant::NoAllowHost);
        out.extend(disks.into_iter().map(|d| disk_entry(d, allow_host)));
        out
    }

    pub(super) fn disk_print(&self, inv: &Invocation) -> Result<String, CliError> {
        let terse = self.print_style(inv)?;
        let st = lock(&self.state);
        let entries = self.filter(self.disk_entries(&st), inv.filter.as_deref(), DISK_KEYS)?;
        Ok(format::disk_list(&entries, self.layout(terse)))
    }

    /// Checks the words of a print; true for `terse`, which only some profiles understand.
    pub(super) fn print_style(&self, inv: &Invocation) -> Result<bool, CliError> {
        if let Some(a) = inv.args.first() {
            return Err(CliError::ExpectedEnd { col: a.col });
        }
        let mut terse = false;
        for p in &inv.positional {
            match &p.value {
                Value::Text(w) if p.word && (w == "detail" || w == "without-paging") => {}
                Value::Text(w) if p.word && w == "terse" => {
                    if self.has(Variant::TerseSupported) {
                        terse = true;
                    } else if self.has(Variant::TerseError) {
                        return Err(CliError::Syntax { col: p.col });
                    } else {
                        return Err(CliError::ExpectedEnd { col: p.col });
                    }
                }
                _ => return Err(CliError::ExpectedEnd { col: p.col }),
            }
        }
        Ok(terse)
    }

    /// Keeps the entries matching every condition; under `regex-no-anchors` a `~` pattern with an
    /// anchor matches nothing.
    pub(super) fn filter(
        &self,
        entries: Vec<Entry>,
        conds: Option<&[Cond]>,
        keys: &[&str],
    ) -> Result<Vec<Entry>, CliError> {
        let anchored = conds.is_some_and(|cs| {
            cs.iter()
                .any(|c| c.op == Op::Match && (c.value.contains('^') || c.value.contains('$')))
        });
        let entries = filter(entries, conds, keys)?;
        if anchored && self.has(Variant::RegexNoAnchors) {
            return Ok(Vec::new());
        }
        Ok(entries)
    }

    /// Slots of the disks a target (`[find ...]` or a name) selects. `find` with no match is
    /// empty; a name that does not exist is `no such item`.
    pub(super) fn select_disks(&self, st: &State, target: &Value) -> Result<Vec<String>, CliError> {
        match target {
            Value::Find(conds) => {
                let entries = self.filter(self.disk_entries(st), Some(conds), DISK_KEYS)?;
                Ok(entries
                    .iter()
                    .filter_map(|e| e.get("slot").map(Prop::raw))
                    .collect())
            }
            Value::Text(names) => names
                .split(',')
                .map(|n| {
                    if st.disk(n).is_some() || n == self.cfg.mount_point {
                        Ok(n.to_string())
                    } else {
                        Err(failure("no such item"))
                    }
                })
                .collect(),
        }
    }
}

pub(super) fn flags(set: &[(usize, char)]) -> String {
    let mut f = vec![' '; DISK_FLAG_SLOTS];
    for &(i, c) in set {
        f[i] = c;
    }
    f.into_iter().collect()
}

pub(super) fn sharing_group() -> Vec<Prop> {
    vec![
        Prop::new("nfs-sharing", PVal::Bool(false)),
        Prop::new("smb-sharing", PVal::Bool(false)),
        Prop::new("media-sharing", PVal::Bool(false)),
        Prop::new("media-interface", PVal::Plain("none".into())),
        Prop::new("swap", PVal::Bool(false)),
    ]
}

/// The full property list of a file disk, grouped the way hardware breaks its lines;
/// `allow_host`: whether this RouterOS has `nvme-tcp-server-allow-host-name` (`no-allow-host`).
pub(super) fn disk_entry(d: &Disk, allow_host: bool) -> Entry {
    let mut nvme = vec![Prop::new("nvme-tcp-export", PVal::Bool(d.nvme_tcp_export))];
    if let Some(p) = d.nvme_tcp_server_port {
        nvme.push(Prop::new("nvme-tcp-server-port", PVal::Int(p.into())));
    }
    if let Some(n) = &d.nvme_tcp_server_nqn {
        nvme.push(Prop::new("nvme-tcp-server-nqn", PVal::Quoted(n.clone())));
    }
    if d.nvme_tcp_export && allow_host {
        nvme.push(Prop::new(
            "nvme-tcp-server-allow-host-name",
            PVal::Quoted(d.nvme_tcp_server_allow_host_name.clone()),
        ));
    }
    nvme.push(Prop::new("iscsi-export", PVal::Bool(false)));
    Entry {
        flags: if d.nvme_tcp_export {
            flags(&[(8, 't')])
        } else {
            flags(&[])
        },
        groups: vec![
            vec![
                Prop::new("type", PVal::Plain("file".into())),
                Prop::new("slot", PVal::Quoted(d.slot.clone())),
                Prop::new("slot-default", PVal::Quoted(String::new())),
                Prop::new("parent", PVal::Quoted(String::new())),
                Prop::new("fs", PVal::Plain("-".into())),
            ],
            vec![Prop::new("model", PVal::Quoted(d.file_path.clone()))],
            vec![
                Prop::new("size", PVal::Bytes(d.file_size)),
                Prop::new("mount-filesystem", PVal::Bool(true)),
                Prop::new("mount-read-only", PVal::Bool(false)),
                Prop::new("compress", PVal::Bool(false)),
                Prop::new("sector-size", PVal::Int(512)),
                Prop::new("raid-master", PVal::Plain("none".into())),
            ],
            nvme,
            sharing_group(),
            // Hardware prints file-path on a line of its own even when file-size would fit.
            vec![Prop::new("file-path", PVal::Plain(d.file_path.clone()))],
            vec![
                Prop::new("file-size", PVal::Human(d.file_size)),
                Prop::new("file-offset", PVal::Int(0)),
            ],
        ],
    }
}

/// A `/file` entry; `local_modified` is its time on the RDS's clock.
pub(super) fn file_entry(f: &FileEntry, local_modified: u64) -> Entry {
    let mut props = vec![
        Prop::new("name", PVal::Plain(f.name().to_string())),
        Prop::new("type", PVal::Plain(f.type_name())),
    ];
    if f.kind == FileKind::File {
        props.push(Prop::new("size", PVal::Human(f.size)));
    }
    props.push(Prop::new(
        "last-modified",
        PVal::Plain(format::timestamp(local_modified)),
    ));
    Entry {
        flags: String::new(),
        groups: vec![props],
    }
}

/// Keeps the entries matching every condition.
pub(super) fn filter(
    entries: Vec<Entry>,
    conds: Option<&[Cond]>,
    keys: &[&str],
) -> Result<Vec<Entry>, CliError> {
    let Some(conds) = conds else {
        return Ok(entries);
    };
    let mut compiled = Vec::new();
    for c in conds {
        if !keys.contains(&c.key.as_str()) {
            return Err(CliError::ExpectedEnd { col: c.col });
        }
        let re = match c.op {
            Op::Match => Some(Regex::new(&c.value).map_err(|_| failure("invalid regex"))?),
            _ => None,
        };
        compiled.push((c, re));
    }
    Ok(entries
        .into_iter()
        .filter(|e| {
            compiled.iter().all(|(c, re)| {
                let prop = e.get(&c.key);
                match (c.op, prop) {
                    (Op::Match, Some(p)) => re.as_ref().is_some_and(|r| r.is_match(&p.raw())),
                    (Op::Match, None) => false,
                    (Op::Eq, p) => p.is_some_and(|p| equal(p, &c.value)),
                    (Op::NotEq, p) => !p.is_some_and(|p| equal(p, &c.value)),
                }
            })
        })
        .collect())
}

pub(super) fn equal(p: &Prop, value: &str) -> bool {
    match (p.number(), parse_size(value)) {
        (Some(a), Some(b)) => a == b,
        _ => p.raw() == value,
    }
}
