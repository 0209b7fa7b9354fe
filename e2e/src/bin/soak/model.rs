//! What the soak knows about each name, and the violations it has seen.

use std::collections::HashMap;
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
}

#[derive(Default)]
pub struct Model {
    pub objects: Mutex<HashMap<String, Object>>,
    in_flight: Mutex<HashMap<String, Flight>>,
    pub violations: Mutex<Vec<(usize, String)>>,
}

impl Model {
    pub fn get(&self, name: &str) -> Object {
        self.objects
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or(Object {
                known: Known::Absent,
                id: None,
                size: 0,
                content: None,
                staged: false,
                context: None,
            })
    }

    pub fn set(&self, name: &str, f: impl FnOnce(&mut Object)) {
        let mut map = self.objects.lock().unwrap();
        let o = map.entry(name.to_string()).or_insert(Object {
            known: Known::Absent,
            id: None,
            size: 0,
            content: None,
            staged: false,
            context: None,
        });
        f(o);
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
        Started { writer, marks }
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
