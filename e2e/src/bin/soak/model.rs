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
}

#[derive(Default)]
pub struct Model {
    pub objects: Mutex<HashMap<String, Object>>,
    /// Per name: calls in flight, and calls started (to tell an overlap).
    in_flight: Mutex<HashMap<String, (usize, u64)>>,
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
        });
        f(o);
    }

    /// Marks a call on `names` started; returns the start counts to compare at the end.
    pub fn begin(&self, names: &[&str]) -> Vec<u64> {
        let mut m = self.in_flight.lock().unwrap();
        names
            .iter()
            .map(|n| {
                let e = m.entry(n.to_string()).or_default();
                e.0 += 1;
                e.1 += 1;
                e.1
            })
            .collect()
    }

    /// Ends a call; true when no other call touched the names meanwhile.
    pub fn end(&self, names: &[&str], started: &[u64]) -> bool {
        let mut m = self.in_flight.lock().unwrap();
        let mut alone = true;
        for (n, s) in names.iter().zip(started) {
            let e = m.get_mut(*n).expect("begun");
            alone &= e.0 == 1 && e.1 == *s;
            e.0 -= 1;
        }
        alone
    }

    pub fn violation(&self, op: usize, what: String) {
        eprintln!("VIOLATION at operation {op}: {what}");
        self.violations.lock().unwrap().push((op, what));
    }
}
