//! RouterOS scripting: statements joined by `;`, `:put`, `:if` over a `find` count, and menu
//! commands inside them. Whether real RouterOS runs the driver's scripts over SSH exec, and
//! what it prints, is not known; `scripting-refused` and `script-quiet-print` play the
//! readings in which it does not, or prints only what `:put` prints.

use super::*;
use crate::command::{Count, FileGet, Stmt};

/// What a script has done so far.
struct Run {
    out: String,
    /// Statements completed.
    ran: usize,
    /// A command under a drop fault ran: the connection drops instead of answering.
    drop: bool,
}

/// Why a script stopped before its end.
enum Stop {
    /// A command failed: RouterOS prints the error and runs nothing after it.
    Error(CliError),
    /// An injected [`Fault::Fail`] on a command: its message and exit status.
    Fault { message: String, exit_status: u32 },
    /// An injected [`Fault::Hang`] on a command: the exec is never answered.
    Hang,
}

impl From<CliError> for Stop {
    fn from(e: CliError) -> Self {
        Stop::Error(e)
    }
}

impl Engine {
    /// Runs a script: the output of each statement in turn. A failing statement ends it, its
    /// error printed after what the statements before it printed (they are not undone).
    /// Injected faults apply to each menu command in it as it runs, and each command is
    /// recorded in the history (`Scripted`, or as its fault left it) before the script as a
    /// whole.
    pub(super) fn script(&self, line: &str, conn: Option<u64>) -> Reply {
        if self.has(Variant::ScriptingRefused) {
            return self.error(refusal(line));
        }
        let stmts = match command::parse_script(line) {
            Ok(stmts) => stmts,
            Err(e) => return self.error(e),
        };
        let mut run = Run {
            out: String::new(),
            ran: 0,
            drop: false,
        };
        let stopped = self.run_block(&stmts, conn, &mut run);
        let mut reply = match stopped {
            Ok(()) => Self::ok(run.out),
            Err(stop) => {
                let mut reply = match stop {
                    Stop::Error(e) => self.error(e),
                    Stop::Fault {
                        message,
                        exit_status,
                    } => Reply {
                        output: self.mode().lines(&message),
                        exit_status,
                        ..self.error(CliError::Other(String::new()))
                    },
                    Stop::Hang => Reply {
                        ending: Ending::Hang,
                        ..Self::ok(String::new())
                    },
                };
                reply.output = run.out + &reply.output;
                reply.refused = run.ran == 0;
                reply
            }
        };
        if run.drop && reply.ending == Ending::Answer {
            reply.ending = Ending::Drop;
        }
        reply
    }

    fn run_block(&self, stmts: &[Stmt], conn: Option<u64>, run: &mut Run) -> Result<(), Stop> {
        for stmt in stmts {
            match stmt {
                Stmt::PutText(text) => run.out.push_str(&self.mode().lines(&format!("{text}\n"))),
                Stmt::PutGet(get) => run.out.push_str(&self.put_get(get)?),
                Stmt::If {
                    count,
                    op,
                    value,
                    then,
                    otherwise,
                } => {
                    let branch = if op.holds(self.count(count)?, *value) {
                        then
                    } else {
                        otherwise
                    };
                    self.run_block(branch, conn, run)?;
                }
                Stmt::Command(line) => {
                    let text = self.run_command(line, conn, run)?;
                    if !self.has(Variant::ScriptQuietPrint) {
                        run.out.push_str(&text);
                    }
                }
            }
            run.ran += 1;
        }
        Ok(())
    }

    /// One menu command of a script, under the faults that match it.
    fn run_command(&self, line: &str, conn: Option<u64>, run: &mut Run) -> Result<String, Stop> {
        let mut ran_as = Disposition::Scripted;
        match self.decide(line).0 {
            Action::Run => {}
            Action::DropAfterRun => {
                run.drop = true;
                ran_as = Disposition::Dropped;
            }
            Action::Hang => {
                self.record(line, None, "", Disposition::Hung);
                return Err(Stop::Hang);
            }
            Action::Fail {
                message,
                exit_status,
            } => {
                self.record(line, Some(exit_status), &message, Disposition::Failed);
                // Exit 0 is success to RouterOS: the command did nothing and the script goes on.
                if exit_status == 0 {
                    return Ok(self.mode().lines(&message));
                }
                return Err(Stop::Fault {
                    message,
                    exit_status,
                });
            }
        }
        match self.dispatch(line, conn) {
            Ok((text, _)) => {
                self.record(line, Some(0), &text, ran_as);
                Ok(text)
            }
            Err(e) => {
                let text = e.to_string();
                self.record(
                    line,
                    Some(self.cfg.error_exit_status),
                    &text,
                    Disposition::Refused,
                );
                Err(Stop::Error(e))
            }
        }
    }

    /// `[:len [/<menu> find ...]]`.
    fn count(&self, count: &Count) -> Result<u64, CliError> {
        let mut st = lock(&self.state);
        self.settle(&mut st);
        let find = Value::Find(count.conds.clone());
        let n = match count.menu.as_str() {
            "disk" => self.select_disks(&st, &find)?.len(),
            _ => self
                .filter(self.file_entries(&st), Some(&count.conds), FILE_KEYS)?
                .len(),
        };
        Ok(n as u64)
    }

    /// `:put [/file get <item> <property>]`: a file's size in bytes, as RouterOS scripting is
    /// expected to print it (unverified); `put-human-size` prints the rounded `/file print`
    /// form instead.
    pub(super) fn put_get(&self, get: &FileGet) -> Result<String, CliError> {
        let st = lock(&self.state);
        let paths: Vec<String> = match &get.item {
            Value::Find(conds) => self
                .filter(self.file_entries(&st), Some(conds), FILE_KEYS)?
                .iter()
                .filter_map(|e| e.get("name").map(|n| absolute(&n.raw())))
                .collect(),
            Value::Text(name) => vec![absolute(name)],
        };
        // `get` of an empty `find`, of several items or of a missing name.
        let [path] = paths.as_slice() else {
            return Err(CliError::Other("invalid internal item number".into()));
        };
        let file = st
            .file(path)
            .ok_or_else(|| CliError::Other("invalid internal item number".into()))?;
        let value = match get.property.as_str() {
            "size" if file.kind != FileKind::File => String::new(),
            "size" if self.has(Variant::PutHumanSize) => format::human(file.size),
            "size" => file.size.to_string(),
            "name" => file.name().to_string(),
            "type" => file.type_name(),
            _ => {
                return Err(CliError::NoMatch {
                    arg: "value-name".into(),
                })
            }
        };
        Ok(self.mode().lines(&format!("{value}\n")))
    }
}

/// How `scripting-refused` answers a script: a scripting command is an unknown command, and a
/// `;` after a menu command ends nothing it knows.
fn refusal(line: &str) -> CliError {
    let line = line.trim_start();
    if let Some(rest) = line.strip_prefix(':') {
        return CliError::BadCommand {
            name: rest.split([' ', '[', '(']).next().unwrap_or("").to_string(),
            col: 2,
        };
    }
    CliError::ExpectedEnd {
        col: line.find(';').map_or(line.len(), |i| i + 1),
    }
}
