//! `--nvmet`: serves every exported disk through the Linux kernel's NVMe/TCP target, so hosts
//! really `nvme connect` to the mock. The kernel target is driven through configfs
//! (`/sys/kernel/config/nvmet`): one subsystem per exported disk, named by its
//! `nvme-tcp-server-nqn`, namespace 1 backed by the disk's file, one TCP port per
//! `nvme-tcp-server-port` on the listen address, and the allowed hosts from
//! `nvme-tcp-server-allow-host-name` (empty: any host).
//!
//! The target is reconciled with the disks after every change, never patched command by
//! command, so `/disk add`, `set`, `remove`, a restart and a fault all take the same path. What
//! the mock created is recorded (`nvmet.json` beside the state); anything else in configfs
//! belongs to someone else and is never touched, even when it has a name the mock wants.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where configfs shows the kernel target.
pub const DEFAULT_CONFIGFS: &str = "/sys/kernel/config/nvmet";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmetConfig {
    /// The `nvmet` directory of configfs.
    pub configfs: PathBuf,
    /// Address every port listens on (`--nvme-listen`).
    pub listen: IpAddr,
    /// Where the record of what the mock created is kept; in memory only when `None`.
    pub record: Option<PathBuf>,
}

/// One disk as the target should serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub nqn: String,
    pub port: u16,
    /// The backing file on this host.
    pub device: PathBuf,
    /// Host NQNs allowed to connect; empty: any host.
    pub hosts: BTreeSet<String>,
}

/// What the mock made in configfs, so that it removes only its own entries.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Record {
    /// TCP port -> configfs port ID.
    ports: BTreeMap<u16, u32>,
    /// Subsystem NQN -> how it is served, with the backing file's size at the last look.
    subsystems: BTreeMap<String, Served>,
    /// `hosts/<nqn>` entries the mock created.
    hosts: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Served {
    export: Export,
    size: u64,
}

struct Inner {
    cfg: NvmetConfig,
    record: Record,
    /// The exports of the last reconcile: what comes back when a timed outage ends.
    wanted: Vec<Export>,
    /// Ports are withdrawn (the `target-down` fault); subsystems stay.
    down: bool,
    /// Bumped by every `set_down`, so an outage's timer does not end a later one.
    outage: u64,
}

/// The kernel target, shared by the engine and the timers of outage faults.
#[derive(Clone)]
pub struct Target {
    inner: Arc<Mutex<Inner>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes a configfs attribute. configfs may report a rejected value only when the file is
/// closed, so the close is checked too.
fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    let written = nix::unistd::write(&f, value.as_bytes()).map_err(io::Error::from);
    let closed = nix::unistd::close(f).map_err(io::Error::from);
    written.and(closed).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

fn read_attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))
}

/// Removes a symlink or an empty configfs directory; gone already is fine.
fn remove(path: &Path) -> io::Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(path),
        Ok(_) => std::fs::remove_dir(path),
    };
    ctx(r, || format!("removing {}", path.display()))
}

fn make_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => ctx(r, || format!("creating {}", path.display())),
    }
}

fn link(target: &Path, at: &Path) -> io::Result<()> {
    match std::os::unix::fs::symlink(target, at) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => ctx(r, || format!("linking {}", at.display())),
    }
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

impl Inner {
    fn root(&self) -> &Path {
        &self.cfg.configfs
    }

    fn subsys_dir(&self, nqn: &str) -> PathBuf {
        self.root().join("subsystems").join(nqn)
    }

    fn port_dir(&self, id: u32) -> PathBuf {
        self.root().join("ports").join(id.to_string())
    }

    fn save(&self) {
        let Some(p) = &self.cfg.record else { return };
        let tmp = p.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(&self.record)
            .map_err(io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, p));
        if let Err(e) = res {
            tracing::error!(path = %p.display(), error = %e, "could not save the nvmet record");
        }
    }

    /// Drops recorded entries that configfs no longer has (a reboot of the machine, say).
    fn forget_vanished(&mut self) {
        let root = self.root().to_path_buf();
        self.record
            .ports
            .retain(|_, id| root.join("ports").join(id.to_string()).is_dir());
        self.record
            .subsystems
            .retain(|nqn, _| root.join("subsystems").join(nqn).is_dir());
        self.record
            .hosts
            .retain(|h| root.join("hosts").join(h).is_dir());
    }

    fn unlink_from_ports(&self, nqn: &str) -> io::Result<()> {
        for id in self.record.ports.values() {
            remove(&self.port_dir(*id).join("subsystems").join(nqn))?;
        }
        Ok(())
    }

    fn remove_subsystem(&mut self, nqn: &str) -> io::Result<()> {
        self.unlink_from_ports(nqn)?;
        let dir = self.subsys_dir(nqn);
        for h in dir_names(&dir.join("allowed_hosts")) {
            remove(&dir.join("allowed_hosts").join(h))?;
        }
        let ns = dir.join("namespaces/1");
        if ns.is_dir() {
            write_attr(&ns.join("enable"), "0")?;
            remove(&ns)?;
        }
        remove(&dir)?;
        self.record.subsystems.remove(nqn);
        tracing::info!(nqn, "nvmet: subsystem removed");
        Ok(())
    }

    fn create_subsystem(&mut self, e: &Export) -> io::Result<()> {
        let dir = self.subsys_dir(&e.nqn);
        make_dir(&dir)?;
        // Recorded before it is complete, so a failure part-way is still cleaned up.
        let size = file_len(&e.device).unwrap_or(0);
        self.record.subsystems.insert(
            e.nqn.clone(),
            Served {
                export: e.clone(),
                size,
            },
        );
        let ns = dir.join("namespaces/1");
        make_dir(&ns)?;
        write_attr(&ns.join("device_path"), &e.device.display().to_string())?;
        // Backing files may sit on tmpfs, which has no O_DIRECT.
        write_attr(&ns.join("buffered_io"), "1")?;
        write_attr(&ns.join("enable"), "1")?;
        self.set_hosts(e)?;
        tracing::info!(nqn = %e.nqn, device = %e.device.display(), "nvmet: subsystem created");
        Ok(())
    }

    fn set_hosts(&mut self, e: &Export) -> io::Result<()> {
        let dir = self.subsys_dir(&e.nqn);
        let allowed = dir.join("allowed_hosts");
        let any_host = dir.join("attr_allow_any_host");
        for h in dir_names(&allowed) {
            if !e.hosts.contains(&h) {
                remove(&allowed.join(&h))?;
            }
        }
        // The kernel takes allowed hosts only while "any host" is off, and turns it on only
        // once the list is empty.
        let any = if e.hosts.is_empty() { "1" } else { "0" };
        if read_attr(&any_host).as_deref() != Some(any) {
            write_attr(&any_host, any)?;
        }
        for h in &e.hosts {
            let host = self.root().join("hosts").join(h);
            if !host.is_dir() {
                make_dir(&host)?;
                self.record.hosts.insert(h.clone());
            }
            link(&host, &allowed.join(h))?;
        }
        if let Some(s) = self.record.subsystems.get_mut(&e.nqn) {
            s.export.hosts = e.hosts.clone();
        }
        Ok(())
    }

    fn port_id(&mut self, port: u16) -> io::Result<u32> {
        if let Some(id) = self.record.ports.get(&port) {
            return Ok(*id);
        }
        let taken: BTreeSet<u32> = dir_names(&self.root().join("ports"))
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        let id = (1..).find(|i| !taken.contains(i)).unwrap_or(u32::MAX);
        let dir = self.port_dir(id);
        make_dir(&dir)?;
        self.record.ports.insert(port, id);
        let family = if self.cfg.listen.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        write_attr(&dir.join("addr_trtype"), "tcp")?;
        write_attr(&dir.join("addr_adrfam"), family)?;
        write_attr(&dir.join("addr_traddr"), &self.cfg.listen.to_string())?;
        write_attr(&dir.join("addr_trsvcid"), &port.to_string())?;
        tracing::info!(port, id, "nvmet: port created");
        Ok(id)
    }

    /// Makes configfs serve `wanted` (or, while down, hold the subsystems on no port).
    fn reconcile(&mut self, wanted: &[Export]) -> io::Result<()> {
        self.wanted = wanted.to_vec();
        let by_nqn: BTreeMap<&str, &Export> = wanted.iter().map(|e| (e.nqn.as_str(), e)).collect();
        let mut first_error = None;
        let mut note = |r: io::Result<()>| {
            if let Err(e) = r {
                tracing::error!(error = %e, "nvmet");
                first_error.get_or_insert(e);
            }
        };
        // Gone, or served from another file or port: removed (and made again below).
        let stale: Vec<String> = self
            .record
            .subsystems
            .iter()
            .filter(|(nqn, s)| {
                by_nqn
                    .get(nqn.as_str())
                    .is_none_or(|e| e.device != s.export.device || e.port != s.export.port)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for nqn in stale {
            note(self.remove_subsystem(&nqn));
        }
        for e in wanted {
            if let Some(s) = self.record.subsystems.get(&e.nqn).cloned() {
                if s.export.hosts != e.hosts {
                    note(self.set_hosts(e));
                }
                // A grown file: the namespace learns its new size.
                let size = file_len(&e.device).unwrap_or(0);
                if size != s.size {
                    let ns = self.subsys_dir(&e.nqn).join("namespaces/1");
                    note(write_attr(&ns.join("revalidate_size"), "1"));
                    if let Some(s) = self.record.subsystems.get_mut(&e.nqn) {
                        s.size = size;
                    }
                }
            } else if self.subsys_dir(&e.nqn).exists() {
                tracing::warn!(nqn = %e.nqn, "nvmet: a subsystem of this NQN exists and is not the mock's; not serving it");
            } else if !e.device.is_file() {
                tracing::warn!(nqn = %e.nqn, device = %e.device.display(), "nvmet: no backing file; not serving it");
            } else {
                let r = self.create_subsystem(e);
                if r.is_err() {
                    let _ = self.remove_subsystem(&e.nqn);
                }
                note(r);
            }
        }
        // Ports: one per TCP port in use, none while down.
        let mut needed: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        if !self.down {
            for (nqn, s) in &self.record.subsystems {
                needed.entry(s.export.port).or_default().push(nqn.clone());
            }
        }
        let unused: Vec<(u16, u32)> = self
            .record
            .ports
            .iter()
            .filter(|(p, _)| !needed.contains_key(p))
            .map(|(p, id)| (*p, *id))
            .collect();
        for (port, id) in unused {
            let dir = self.port_dir(id);
            for nqn in dir_names(&dir.join("subsystems")) {
                if self.record.subsystems.contains_key(&nqn) {
                    note(remove(&dir.join("subsystems").join(&nqn)));
                }
            }
            let r = remove(&dir);
            if r.is_ok() {
                self.record.ports.remove(&port);
                tracing::info!(port, id, "nvmet: port removed");
            }
            note(r);
        }
        for (port, nqns) in needed {
            let id = match self.port_id(port) {
                Ok(id) => id,
                Err(e) => {
                    note(Err(e));
                    continue;
                }
            };
            let dir = self.port_dir(id).join("subsystems");
            for nqn in dir_names(&dir) {
                if self.record.subsystems.contains_key(&nqn) && !nqns.contains(&nqn) {
                    note(remove(&dir.join(&nqn)));
                }
            }
            for nqn in nqns {
                note(link(&self.subsys_dir(&nqn), &dir.join(&nqn)));
            }
        }
        // Hosts the mock made that none of its subsystems allows any more.
        let used: BTreeSet<String> = self
            .record
            .subsystems
            .values()
            .flat_map(|s| s.export.hosts.iter().cloned())
            .collect();
        let idle: Vec<String> = self.record.hosts.difference(&used).cloned().collect();
        for h in idle {
            // Another tool's subsystem may still allow it: then it stays.
            if remove(&self.root().join("hosts").join(&h)).is_ok() {
                self.record.hosts.remove(&h);
            }
        }
        self.save();
        first_error.map_or(Ok(()), Err)
    }
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Target {
    /// Opens the kernel target: configfs must show it (`modprobe nvmet-tcp`, configfs mounted).
    /// What an earlier run recorded and configfs still holds is taken over.
    pub fn open(cfg: NvmetConfig) -> anyhow::Result<Target> {
        if !cfg.configfs.join("subsystems").is_dir() || !cfg.configfs.join("ports").is_dir() {
            anyhow::bail!(
                "--nvmet: {} is not the kernel NVMe target's configfs (run `modprobe nvmet-tcp` \
                 as root and mount configfs on /sys/kernel/config)",
                cfg.configfs.display()
            );
        }
        let record = match &cfg.record {
            Some(p) if p.exists() => serde_json::from_slice(&std::fs::read(p)?)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            _ => Record::default(),
        };
        let mut inner = Inner {
            cfg,
            record,
            wanted: Vec::new(),
            down: false,
            outage: 0,
        };
        inner.forget_vanished();
        Ok(Target {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Serves exactly `wanted`. Errors are logged; the first is returned.
    pub fn reconcile(&self, wanted: &[Export]) -> io::Result<()> {
        lock(&self.inner).reconcile(wanted)
    }

    /// Withdraws every port (hosts see the target vanish) or brings them back. With `for_`,
    /// the ports come back by themselves after that long, unless another outage began since.
    pub fn set_down(&self, down: bool, for_: Option<Duration>) -> io::Result<()> {
        let (outage, result) = {
            let mut g = lock(&self.inner);
            g.down = down;
            g.outage += 1;
            let wanted = g.wanted.clone();
            (g.outage, g.reconcile(&wanted))
        };
        if let (true, Some(d)) = (down, for_) {
            let me = self.clone();
            std::thread::spawn(move || {
                std::thread::sleep(d);
                let mut g = lock(&me.inner);
                if g.outage == outage {
                    g.down = false;
                    let wanted = g.wanted.clone();
                    let _ = g.reconcile(&wanted);
                }
            });
        }
        result
    }

    pub fn is_down(&self) -> bool {
        lock(&self.inner).down
    }

    /// One line per served subsystem, for `/mock target print`.
    pub fn describe(&self) -> Vec<String> {
        let g = lock(&self.inner);
        let mut out = vec![format!(
            "target: {} on {}",
            if g.down { "down" } else { "up" },
            g.cfg.listen
        )];
        for (nqn, s) in &g.record.subsystems {
            let hosts = if s.export.hosts.is_empty() {
                "any".to_string()
            } else {
                s.export.hosts.iter().cloned().collect::<Vec<_>>().join(",")
            };
            out.push(format!(
                "{nqn} port={} hosts={hosts} file={}",
                s.export.port,
                s.export.device.display()
            ));
        }
        out
    }

    /// Removes everything the mock created (at shutdown); the record is emptied.
    pub fn teardown(&self) {
        let mut g = lock(&self.inner);
        g.down = true;
        if let Err(e) = g.reconcile(&[]) {
            tracing::error!(error = %e, "nvmet: teardown left entries behind");
        }
    }
}
