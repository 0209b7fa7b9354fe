//! The RouterOS command line: a parser of the tokenizer's words into a menu path, arguments and
//! `where` filters, and RouterOS sizes. The tokenizer and its errors are in `token`, the
//! scripting the mock answers in `script`. Errors carry the texts RouterOS prints, with 1-based
//! `(line 1 column N)` positions.

mod script;
mod token;

pub use script::{
    is_script, is_sequence, parse_put, parse_script, script_leaves, Compare, Count, FileGet, Stmt,
};
pub use token::{failure, tokenize, CliError, Tok, TokKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Match,
    NotEq,
}

/// One `key=value`, `key~regex` or `key!=value` condition of `where` or `find`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub key: String,
    pub col: usize,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    /// `[find cond and cond ...]`; empty matches everything.
    Find(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    pub col: usize,
    pub value: Value,
}

/// An unnamed argument: a word like `detail` or `once`, a string, or a `[find ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positional {
    pub value: Value,
    pub col: usize,
    /// True for a bare word (which may be a flag such as `detail`).
    pub word: bool,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// Menu path and command, e.g. `["disk", "print"]`.
    pub path: Vec<String>,
    pub args: Vec<Arg>,
    pub positional: Vec<Positional>,
    /// `where` conditions (print only), joined by `and`.
    pub filter: Option<Vec<Cond>>,
}

impl Invocation {
    pub fn arg(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.name == name)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.arg(name).map(|a| &a.value) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// Rejects named arguments other than `allowed`, the way RouterOS does.
    pub fn only_args(&self, allowed: &[&str]) -> Result<(), CliError> {
        for a in &self.args {
            if !allowed.contains(&a.name.as_str()) {
                return Err(CliError::ExpectedEnd { col: a.col });
            }
        }
        // A repeated argument is also a RouterOS error.
        for (i, a) in self.args.iter().enumerate() {
            if self.args[..i].iter().any(|b| b.name == a.name) {
                return Err(CliError::ExpectedEnd { col: a.col });
            }
        }
        Ok(())
    }
}

/// The menu tree: which words continue a path. Commands are leaves.
fn children(path: &[String]) -> Option<&'static [&'static str]> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    Some(match p.as_slice() {
        [] => &["disk", "file", "system", "mock"],
        ["disk"] => &["add", "set", "remove", "print", "monitor-traffic"],
        ["file"] => &["print", "remove", "add"],
        ["system"] => &["identity", "resource", "clock"],
        ["system", "identity"] | ["system", "resource"] | ["system", "clock"] => &["print"],
        ["mock"] => &[
            "orphan-file",
            "orphan-disk",
            "fault",
            "reset",
            "history",
            "drop-connections",
            "profile",
            "target",
            "copy-short",
            "state",
            "help",
        ],
        _ => return None,
    })
}

struct Cursor {
    toks: Vec<Tok>,
    pos: usize,
    end_col: usize,
}

impl Cursor {
    fn new(line: &str) -> Result<Cursor, CliError> {
        Ok(Cursor {
            toks: tokenize(line)?,
            pos: 0,
            end_col: line.chars().count() + 1,
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn col(&self) -> usize {
        self.peek().map_or(self.end_col, |t| t.col)
    }
}

/// Parses one command line. An empty line gives an empty path.
pub fn parse(line: &str) -> Result<Invocation, CliError> {
    let mut cur = Cursor::new(line)?;
    let mut inv = Invocation::default();

    // The path: `/disk print`, `/disk/print`, or relative `disk print` (exec runs at the root).
    match cur.peek().cloned() {
        None => return Ok(inv),
        Some(Tok {
            kind: TokKind::Word(w),
            col,
            ..
        }) => {
            cur.next();
            for (seg, seg_col) in segments(&w, col) {
                descend(&mut inv.path, seg, seg_col)?;
            }
        }
        Some(t) => return Err(CliError::Syntax { col: t.col }),
    }
    // Further bare words extend the path while they name a child menu or command.
    while let Some(Tok {
        kind: TokKind::Word(w),
        col,
        ..
    }) = cur.peek().cloned()
    {
        let Some(kids) = children(&inv.path) else {
            break;
        };
        let next_is_op = cur.peek_at(1).is_some_and(|t| {
            !t.space_before && matches!(t.kind, TokKind::Eq | TokKind::Tilde | TokKind::NotEq)
        });
        if next_is_op {
            if kids.is_empty() {
                break;
            }
            return Err(CliError::BadCommand { name: w, col });
        }
        if kids.contains(&w.as_str()) {
            inv.path.push(w);
            cur.next();
        } else {
            return Err(CliError::BadCommand { name: w, col });
        }
    }

    // Arguments.
    while let Some(t) = cur.peek().cloned() {
        match &t.kind {
            TokKind::Word(w) if w == "where" && inv.path.last().is_some_and(|c| c == "print") => {
                cur.next();
                if inv.filter.is_some() {
                    return Err(CliError::ExpectedEnd { col: t.col });
                }
                inv.filter = Some(parse_conds(&mut cur, false)?);
            }
            TokKind::Word(w) => {
                cur.next();
                let is_named = cur
                    .peek()
                    .is_some_and(|n| !n.space_before && n.kind == TokKind::Eq);
                if is_named {
                    cur.next();
                    let value = parse_value(&mut cur)?;
                    inv.args.push(Arg {
                        name: w.clone(),
                        col: t.col,
                        value,
                    });
                } else if cur.peek().is_some_and(|n| !n.space_before) {
                    // `word~x` or `word"x"` outside a `where`.
                    return Err(CliError::ExpectedEnd { col: cur.col() });
                } else {
                    inv.positional.push(Positional {
                        value: Value::Text(w.clone()),
                        col: t.col,
                        word: true,
                    });
                }
            }
            TokKind::Str(s) => {
                cur.next();
                inv.positional.push(Positional {
                    value: Value::Text(s.clone()),
                    col: t.col,
                    word: false,
                });
            }
            TokKind::LBracket => {
                cur.next();
                let conds = parse_find(&mut cur)?;
                inv.positional.push(Positional {
                    value: Value::Find(conds),
                    col: t.col,
                    word: false,
                });
            }
            _ => return Err(CliError::Syntax { col: t.col }),
        }
    }
    Ok(inv)
}

/// The non-empty `/`-separated segments of a word starting at column `col`, with their columns.
fn segments(word: &str, col: usize) -> impl Iterator<Item = (&str, usize)> {
    word.split('/')
        .scan(col, |next_col, seg| {
            let seg_col = *next_col;
            *next_col += seg.chars().count() + 1;
            Some((seg, seg_col))
        })
        .filter(|(seg, _)| !seg.is_empty())
}

fn descend(path: &mut Vec<String>, seg: &str, col: usize) -> Result<(), CliError> {
    match children(path) {
        Some(kids) if kids.contains(&seg) => {
            path.push(seg.to_string());
            Ok(())
        }
        _ => Err(CliError::BadCommand {
            name: seg.to_string(),
            col,
        }),
    }
}

/// The value after `name=`: a string, a word, a `[find ...]`, or nothing (an empty value).
fn parse_value(cur: &mut Cursor) -> Result<Value, CliError> {
    match cur.peek().cloned() {
        Some(t) if !t.space_before => match t.kind {
            TokKind::Str(s) | TokKind::Word(s) => {
                cur.next();
                Ok(Value::Text(s))
            }
            TokKind::LBracket => {
                cur.next();
                Ok(Value::Find(parse_find(cur)?))
            }
            _ => Err(CliError::Syntax { col: t.col }),
        },
        _ => Ok(Value::Text(String::new())),
    }
}

/// After `[`: `find [where] conds ]`.
fn parse_find(cur: &mut Cursor) -> Result<Vec<Cond>, CliError> {
    match cur.next() {
        Some(Tok {
            kind: TokKind::Word(w),
            ..
        }) if w == "find" => {}
        Some(Tok {
            kind: TokKind::Word(w),
            col,
            ..
        }) => return Err(CliError::BadCommand { name: w, col }),
        Some(t) => return Err(CliError::Syntax { col: t.col }),
        None => return Err(CliError::Syntax { col: cur.end_col }),
    }
    if matches!(cur.peek(), Some(Tok { kind: TokKind::Word(w), .. }) if w == "where") {
        cur.next();
    }
    let conds = parse_conds(cur, true)?;
    match cur.next() {
        Some(Tok {
            kind: TokKind::RBracket,
            ..
        }) => Ok(conds),
        _ => Err(CliError::Syntax { col: cur.end_col }),
    }
}

/// `key op value [and] key op value ...` until the end (or `]` when `in_find`).
fn parse_conds(cur: &mut Cursor, in_find: bool) -> Result<Vec<Cond>, CliError> {
    let mut conds = Vec::new();
    loop {
        let Some(t) = cur.peek().cloned() else {
            if in_find {
                return Err(CliError::Syntax { col: cur.end_col });
            }
            break;
        };
        match t.kind {
            TokKind::RBracket if in_find => break,
            TokKind::Word(ref w) if w == "and" && !conds.is_empty() => {
                cur.next();
            }
            TokKind::Word(key) => {
                cur.next();
                let op = match cur.next() {
                    Some(Tok {
                        kind: TokKind::Eq,
                        space_before: false,
                        ..
                    }) => Op::Eq,
                    Some(Tok {
                        kind: TokKind::Tilde,
                        space_before: false,
                        ..
                    }) => Op::Match,
                    Some(Tok {
                        kind: TokKind::NotEq,
                        space_before: false,
                        ..
                    }) => Op::NotEq,
                    Some(o) => return Err(CliError::Syntax { col: o.col }),
                    None => return Err(CliError::Syntax { col: cur.end_col }),
                };
                let value = match cur.peek().cloned() {
                    Some(Tok {
                        kind: TokKind::Str(s) | TokKind::Word(s),
                        space_before: false,
                        ..
                    }) => {
                        cur.next();
                        s
                    }
                    _ => String::new(),
                };
                conds.push(Cond {
                    key,
                    col: t.col,
                    op,
                    value,
                });
            }
            _ => return Err(CliError::Syntax { col: t.col }),
        }
    }
    Ok(conds)
}

/// Parses a RouterOS size: digits with an optional binary `K`/`M`/`G`/`T` suffix.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        't' | 'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<TokKind> {
        tokenize(line)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn tokenizes_quotes_brackets_and_operators() {
        assert_eq!(
            words(r#"/disk remove [find slot="a b\"c"]"#),
            vec![
                TokKind::Word("/disk".into()),
                TokKind::Word("remove".into()),
                TokKind::LBracket,
                TokKind::Word("find".into()),
                TokKind::Word("slot".into()),
                TokKind::Eq,
                TokKind::Str("a b\"c".into()),
                TokKind::RBracket,
            ]
        );
        assert_eq!(
            words("slot~\"pvc\" size!=5"),
            vec![
                TokKind::Word("slot".into()),
                TokKind::Tilde,
                TokKind::Str("pvc".into()),
                TokKind::Word("size".into()),
                TokKind::NotEq,
                TokKind::Word("5".into()),
            ]
        );
        assert_eq!(words(r#""\41\_\$""#), vec![TokKind::Str("A $".into())]);
    }

    #[test]
    fn bad_strings_are_syntax_errors() {
        assert_eq!(tokenize("a=\"abc"), Err(CliError::Syntax { col: 3 }));
        assert_eq!(tokenize(r#"a="\q""#), Err(CliError::Syntax { col: 4 }));
        assert_eq!(tokenize(r#"a="\"#), Err(CliError::Syntax { col: 4 }));
    }

    #[test]
    fn parses_add_with_quoted_values_and_copy_from() {
        let inv = parse(
            r#"/disk add type=file copy-from=[find slot="snap-1"] file-path="/storage-pool/x.img" slot=pvc-1"#,
        )
        .unwrap();
        assert_eq!(inv.path, vec!["disk", "add"]);
        assert_eq!(inv.text("type"), Some("file"));
        assert_eq!(inv.text("file-path"), Some("/storage-pool/x.img"));
        assert_eq!(inv.text("slot"), Some("pvc-1"));
        assert_eq!(
            inv.arg("copy-from").unwrap().value,
            Value::Find(vec![Cond {
                key: "slot".into(),
                col: 37,
                op: Op::Eq,
                value: "snap-1".into()
            }])
        );
    }

    #[test]
    fn parses_print_where_with_and() {
        let inv = parse(r#"/disk/print detail where slot~"pvc" and nvme-tcp-export=yes"#).unwrap();
        assert_eq!(inv.path, vec!["disk", "print"]);
        assert_eq!(inv.positional.len(), 1);
        let f = inv.filter.unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].op, Op::Match);
        assert_eq!(f[1].value, "yes");
    }

    #[test]
    fn unknown_commands_report_columns() {
        assert_eq!(
            parse("/foo").unwrap_err().to_string(),
            "bad command name foo (line 1 column 2)"
        );
        assert_eq!(
            parse("/disk prin detail").unwrap_err().to_string(),
            "bad command name prin (line 1 column 7)"
        );
        assert_eq!(
            parse("/disk remove [fnd slot=x]").unwrap_err().to_string(),
            "bad command name fnd (line 1 column 15)"
        );
        assert_eq!(
            parse("/disk remove [find slot=x").unwrap_err(),
            CliError::Syntax { col: 26 }
        );
    }

    #[test]
    fn only_args_rejects_unknown_names() {
        let inv = parse("/disk add type=file bogus=1").unwrap();
        assert_eq!(
            inv.only_args(&["type"]).unwrap_err().to_string(),
            "expected end of command (line 1 column 21)"
        );
    }

    #[test]
    fn parses_put_of_a_file_property() {
        let get = parse_put(r#":put [/file get [find name="storage-pool/x.img"] size]"#).unwrap();
        assert_eq!(get.property, "size");
        assert_eq!(
            get.item,
            Value::Find(vec![Cond {
                key: "name".into(),
                col: 23,
                op: Op::Eq,
                value: "storage-pool/x.img".into()
            }])
        );
        let plain = parse_put(r#":put [/file/get "storage-pool/x.img" size]"#).unwrap();
        assert_eq!(plain.item, Value::Text("storage-pool/x.img".into()));
        assert_eq!(
            parse_put(":log info x").unwrap_err().to_string(),
            "bad command name log (line 1 column 2)"
        );
        assert_eq!(
            parse_put(":put [/disk get x size]")
                .unwrap_err()
                .to_string(),
            "bad command name disk (line 1 column 8)"
        );
        assert_eq!(
            parse_put(":put [/file get x size").unwrap_err(),
            CliError::Syntax { col: 23 }
        );
        assert!(is_script(" :put 1") && !is_script("/file print"));
    }

    #[test]
    fn parses_scripts_into_statements() {
        let script = parse_script(
            r#":if ([:len [/file find name="a b;c"]] = 0) do={/disk add slot=x; :put "m;"} else={:put "e"}; /disk print"#,
        )
        .unwrap();
        let [Stmt::If {
            count,
            op,
            value,
            then,
            otherwise,
        }, Stmt::Command(print)] = script.as_slice()
        else {
            panic!("{script:?}");
        };
        assert_eq!(count.menu, "file");
        assert_eq!(
            count.conds[0].value, "a b;c",
            "a ; in a string splits nothing"
        );
        assert_eq!((*op, *value), (Compare::Eq, 0));
        assert_eq!(
            then,
            &vec![
                Stmt::Command("/disk add slot=x".into()),
                Stmt::PutText("m;".into())
            ]
        );
        assert_eq!(otherwise, &vec![Stmt::PutText("e".into())]);
        assert_eq!(print, "/disk print");
        assert!(is_sequence("/disk print; /file print") && !is_sequence("/disk print"));
        assert!(
            !is_sequence("/file print where name=\"a;b\""),
            "a ; inside a string is no separator"
        );
        assert_eq!(
            script_leaves(
                r#":if ([:len [/disk find]] > 1) do={/disk remove [find]} else={:put "x"}; :put [/file get a size]"#
            ),
            vec!["/disk find", "/disk remove [find]", "/file get"]
        );
    }

    #[test]
    fn script_errors_name_the_column_in_the_whole_line() {
        let err = |line: &str| parse_script(line).unwrap_err().to_string();
        assert_eq!(
            err(":put \"a\"; :log x"),
            "bad command name log (line 1 column 12)"
        );
        assert_eq!(
            err(":if ([:len [/system find]] = 0) do={}"),
            "bad command name system (line 1 column 13)"
        );
        assert_eq!(
            err(":if ([:len [/disk find]] = 0) do={} x"),
            "expected end of command (line 1 column 37)"
        );
        assert_eq!(
            err(":if ([:len [/disk find]] = 0)"),
            "syntax error (line 1 column 30)"
        );
        assert_eq!(err(":put \"a\"}"), "syntax error (line 1 column 9)");
        assert_eq!(err(":put (\"a\""), "syntax error (line 1 column 10)");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("1073741824"), Some(1 << 30));
        assert_eq!(parse_size("5k"), Some(5 << 10));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
