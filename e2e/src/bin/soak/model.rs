//! What the soak knows about each name, and the violations it has seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What the soak knows about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Absent,
    Present,
    /// A call failed or overlapped another on the same name: it may or may not exist.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Object {
    pub known: Known,
    /// A snapshot's ID, once CreateSnapshot has returned it.
    pub id: Option<String>,
    /// The least size acknowledged.
    pub size: u64,
    /// The token last written on the volume's filesystem, when known.
    pub content: Option<u64>,
    pub staged: bool,
    /// The volume context CreateVolume returned, which a CO keeps in the PV to stage with.
    pub context: Option<HashMap<String, String>>,
    /// Whether the driver holds the volume for the node, and what its fence may allow.
    pub hold: Hold,
}

impl Default for Object {
    fn default() -> Self {
        Object {
            known: Known::Absent,
            id: None,
            size: 0,
            content: None,
            staged: false,
            context: None,
            hold: Hold::default(),
        }
    }
}

/// What the driver's attachment table holds a volume for (the soak's one node or none), and
/// what the disk's fence may therefore allow. Every call that sets a fence sets it to what the
/// table holds when it runs (under the volume's lock): only publish and unpublish change the
/// table, and a driver restart empties it (no Kubernetes to rebuild it from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Whether the table holds the volume for the node; None: unknown.
    pub table: Option<bool>,
    /// The fence may allow the closed NQN (fenced volumes only).
    pub closed: bool,
    /// The fence may allow the node's NQN.
    pub node: bool,
    /// The disk must be exported: a create, copy, expand or publish succeeded since the last
    /// call that may have unexported it.
    pub exported: bool,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            table: Some(false),
            closed: true,
            node: false,
            exported: false,
        }
    }
}

/// A call, as far as the attachment table and the fence are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Publish,
    Unpublish,
    /// Create, clone, restore or expand: sets the fence to what the table holds, and exports.
    Apply,
    Delete,
}

impl Hold {
    /// Only the fence the table asks for (or either when the table is unknown).
    fn follow_table(&mut self) {
        (self.closed, self.node) = match self.table {
            Some(held) => (!held, held),
            None => (true, true),
        };
    }

    /// After a call on the volume that `ok` or not, `alone` (no other call on the name and no
    /// driver restart while it ran; otherwise nothing is known).
    pub fn after(&mut self, call: Call, ok: bool, alone: bool) {
        if !alone {
            *self = Hold {
                table: None,
                closed: true,
                node: true,
                exported: false,
            };
            return;
        }
        match (call, ok) {
            (Call::Publish, true) => {
                self.table = Some(true);
                self.follow_table();
                self.exported = true;
            }
            // A failure undoes only what the call added, so a node that held the volume still
            // does; otherwise the attachment may have been left (a call cancelled at its
            // deadline), and the fence may be the node's (set, then the call failed).
            (Call::Publish, false) => {
                if self.table != Some(true) {
                    self.table = None;
                }
                self.node = true;
            }
            (Call::Unpublish, true) => {
                self.table = Some(false);
                self.follow_table();
            }
            // Detached (or not) before the fence was set (or not).
            (Call::Unpublish, false) => {
                self.table = None;
                self.closed = true;
            }
            (Call::Apply, true) => {
                self.follow_table();
                self.exported = true;
            }
            (Call::Apply, false) => {
                match self.table {
                    Some(true) => self.node = true,
                    Some(false) => self.closed = true,
                    None => (self.closed, self.node) = (true, true),
                }
                self.exported = false;
            }
            // Refused while published: the table held it. The next disk gets the table's fence.
            (Call::Delete, true) => {
                self.table = Some(false);
                self.follow_table();
                self.exported = false;
            }
            (Call::Delete, false) => self.exported = false,
        }
    }
}

/// Per name: calls in flight and started, all and those that may change the content (writers),
/// to tell an overlap.
#[derive(Default)]
struct Flight {
    calls: usize,
    started: u64,
    writers: usize,
    writes_started: u64,
}

/// What a call saw of its names when it started.
struct Mark {
    /// No other call was in flight.
    idle: bool,
    /// No writer was in flight.
    unwritten: bool,
    started: u64,
    writes_started: u64,
}

pub struct Started {
    writer: bool,
    marks: Vec<Mark>,
    /// [`Model::restarts`] when the call started.
    restarts: u64,
}

#[derive(Default)]
pub struct Model {
    pub objects: Mutex<HashMap<String, Object>>,
    in_flight: Mutex<HashMap<String, Flight>>,
    pub violations: Mutex<Vec<(usize, String)>>,
    /// Driver restarts begun and ended (odd: one is under way), to tell a call that a restart
    /// overlapped.
    restarts: AtomicU64,
}

impl Model {
    pub fn get(&self, name: &str) -> Object {
        self.objects
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    pub fn set(&self, name: &str, f: impl FnOnce(&mut Object)) {
        let mut map = self.objects.lock().unwrap();
        f(map.entry(name.to_string()).or_default());
    }

    /// Marks a call that may change the names' content (or existence) started.
    pub fn begin(&self, names: &[&str]) -> Started {
        self.begin_as(names, true)
    }

    /// Marks a call that changes neither the names' content nor their existence started.
    pub fn begin_read(&self, names: &[&str]) -> Started {
        self.begin_as(names, false)
    }

    fn begin_as(&self, names: &[&str], writer: bool) -> Started {
        let mut m = self.in_flight.lock().unwrap();
        let marks = names
            .iter()
            .map(|n| {
                let e = m.entry(n.to_string()).or_default();
                let mark = Mark {
                    idle: e.calls == 0,
                    unwritten: e.writers == 0,
                    started: e.started + 1,
                    writes_started: e.writes_started + u64::from(writer),
                };
                e.calls += 1;
                e.started += 1;
                if writer {
                    e.writers += 1;
                    e.writes_started += 1;
                }
                mark
            })
            .collect();
        Started {
            writer,
            marks,
            restarts: self.restarts.load(Ordering::SeqCst),
        }
    }

    /// Whether a driver restart began or ended while the call ran.
    pub fn restarted_since(&self, started: &Started) -> bool {
        let now = self.restarts.load(Ordering::SeqCst);
        now != started.restarts || now % 2 == 1
    }

    /// A driver restart begins: what calls in flight now do to the attachment table is unknown.
    pub fn driver_stopping(&self) {
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// The driver restarted (`started`) or may not have: its attachment table is empty (nothing
    /// rebuilds it without Kubernetes), while every fence stays as it was on the RDS.
    pub fn driver_restarted(&self, started: bool) {
        for o in self.objects.lock().unwrap().values_mut() {
            o.hold.table = started.then_some(false);
        }
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// Records a call's effect on the attachment table and the fence of `name`; `alone` as
    /// [`Model::end`] said. A call a driver restart overlapped is not alone.
    pub fn hold_after(&self, name: &str, call: Call, ok: bool, alone: bool, started: &Started) {
        let alone = alone && !self.restarted_since(started);
        self.set(name, |o| o.hold.after(call, ok, alone));
    }

    /// Ends a call; true when no other call touched the names meanwhile.
    pub fn end(&self, names: &[&str], started: &Started) -> bool {
        self.end_both(names, started).0
    }

    /// Ends a call: whether no other call touched the names meanwhile, and whether none that
    /// may change their content did.
    pub fn end_both(&self, names: &[&str], started: &Started) -> (bool, bool) {
        let mut m = self.in_flight.lock().unwrap();
        let (mut alone, mut unwritten) = (true, true);
        let own = usize::from(started.writer);
        for (n, s) in names.iter().zip(&started.marks) {
            let e = m.get_mut(*n).expect("begun");
            alone &= s.idle && e.calls == 1 && e.started == s.started;
            unwritten &= s.unwritten && e.writers == own && e.writes_started == s.writes_started;
            e.calls -= 1;
            e.writers -= own;
        }
        (alone, unwritten)
    }

    pub fn violation(&self, op: usize, what: String) {
        eprintln!("VIOLATION at operation {op}: {what}");
        self.violations.lock().unwrap().push((op, what));
    }
}
