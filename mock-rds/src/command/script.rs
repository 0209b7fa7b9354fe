//! The RouterOS scripting the mock answers: statements joined by `;`, `:put "text"`,
//! `:put [/file get <item> <property>]`, `:if ([:len [/<menu> find ...]] <op> N) do={...}
//! else={...}`, and menu commands run as if sent alone. Columns in errors are 1-based over the
//! whole line, as RouterOS gives them.

use super::{parse_find, segments, Cond, Cursor, Value};
use super::{CliError, Tok, TokKind};

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `:put "text"`.
    PutText(String),
    /// `:put [/file get ...]`.
    PutGet(FileGet),
    /// `:if (COUNT OP N) do={...} else={...}`.
    If {
        count: Count,
        op: Compare,
        value: u64,
        then: Vec<Stmt>,
        otherwise: Vec<Stmt>,
    },
    /// A menu command, run as if sent alone.
    Command(String),
}

/// `[:len [/<menu> find <conds>]]`: how many items of `/disk` or `/file` match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub menu: String,
    pub conds: Vec<Cond>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Eq,
    NotEq,
    Less,
    Greater,
}

impl Compare {
    pub fn holds(self, left: u64, right: u64) -> bool {
        match self {
            Compare::Eq => left == right,
            Compare::NotEq => left != right,
            Compare::Less => left < right,
            Compare::Greater => left > right,
        }
    }
}

/// Whether a line is more than one command or a scripting command: its statements are run
/// by the script interpreter rather than as one menu command.
pub fn is_sequence(line: &str) -> bool {
    is_script(line) || split_top(line, 0).is_ok_and(|parts| parts.len() > 1)
}

/// The commands a script may run, in every branch, as lines a fault pattern can match:
/// menu commands as written, a count as `/<menu> find`, a `get` as `/file get`. A line that
/// does not parse is its own only command.
pub fn script_leaves(line: &str) -> Vec<String> {
    fn walk(stmts: &[Stmt], out: &mut Vec<String>) {
        for stmt in stmts {
            match stmt {
                Stmt::PutText(_) => {}
                Stmt::PutGet(_) => out.push("/file get".into()),
                Stmt::Command(line) => out.push(line.clone()),
                Stmt::If {
                    count,
                    then,
                    otherwise,
                    ..
                } => {
                    out.push(format!("/{} find", count.menu));
                    walk(then, out);
                    walk(otherwise, out);
                }
            }
        }
    }
    match parse_script(line) {
        Ok(stmts) => {
            let mut out = Vec::new();
            walk(&stmts, &mut out);
            out
        }
        Err(_) => vec![line.to_string()],
    }
}

/// Parses a script of statements joined by `;`.
pub fn parse_script(line: &str) -> Result<Vec<Stmt>, CliError> {
    parse_block(line, 0)
}

/// `text` starts at byte `offset` of the whole line.
fn parse_block(text: &str, offset: usize) -> Result<Vec<Stmt>, CliError> {
    let mut stmts = Vec::new();
    for (start, part) in split_top(text, offset)? {
        let trimmed = part.trim_start();
        let at = start + (part.len() - trimmed.len());
        let trimmed = trimmed.trim_end();
        if trimmed.is_empty() {
            continue;
        }
        stmts.push(parse_stmt(trimmed, at)?);
    }
    Ok(stmts)
}

fn parse_stmt(text: &str, at: usize) -> Result<Stmt, CliError> {
    if let Some(rest) = text.strip_prefix(":if") {
        if rest.starts_with(|c: char| c.is_whitespace() || c == '(') {
            return parse_if(rest, at + 3);
        }
    }
    if let Some(rest) = text.strip_prefix(":put") {
        let value = rest.trim_start();
        if value.starts_with('"') {
            let vat = at + 4 + (rest.len() - value.len());
            return match tokenize_one_string(value) {
                Some(s) => Ok(Stmt::PutText(s)),
                None => Err(CliError::Syntax { col: vat + 1 }),
            };
        }
        // Columns of the `get` form count from the statement; shift them to the line.
        return parse_put(text).map(Stmt::PutGet).map_err(|e| shift(e, at));
    }
    if let Some(command) = text.strip_prefix(':') {
        let name: String = command.chars().take_while(|c| !c.is_whitespace()).collect();
        return Err(CliError::BadCommand { name, col: at + 2 });
    }
    Ok(Stmt::Command(text.to_string()))
}

/// `(COUNT OP N) do={...} [else={...}]`, `rest` starting at byte `at` of the line.
fn parse_if(rest: &str, at: usize) -> Result<Stmt, CliError> {
    let syntax = |i: usize| CliError::Syntax { col: at + i + 1 };
    let open = rest.find('(').ok_or_else(|| syntax(0))?;
    if !rest[..open].trim().is_empty() {
        return Err(syntax(0));
    }
    let close = closing(rest, open).ok_or_else(|| syntax(rest.len()))?;
    let (count, op, value) = parse_condition(&rest[open + 1..close], at + open + 1)?;
    let mut pos = close + 1;
    let block = |keyword: &str, pos: &mut usize| -> Result<Option<(usize, usize)>, CliError> {
        let after = &rest[*pos..];
        let skipped = after.len() - after.trim_start().len();
        let start = *pos + skipped;
        if !rest[start..].starts_with(keyword) {
            return Ok(None);
        }
        let brace = start + keyword.len();
        if !rest[brace..].starts_with('{') {
            return Err(syntax(brace));
        }
        let end = closing(rest, brace).ok_or_else(|| syntax(rest.len()))?;
        *pos = end + 1;
        Ok(Some((brace + 1, end)))
    };
    let (then_start, then_end) = block("do=", &mut pos)?.ok_or_else(|| syntax(pos))?;
    let otherwise_range = block("else=", &mut pos)?;
    if !rest[pos..].trim().is_empty() {
        let extra = pos + (rest[pos..].len() - rest[pos..].trim_start().len());
        return Err(CliError::ExpectedEnd {
            col: at + extra + 1,
        });
    }
    let then = parse_block(&rest[then_start..then_end], at + then_start)?;
    let otherwise = match otherwise_range {
        Some((s, e)) => parse_block(&rest[s..e], at + s)?,
        None => Vec::new(),
    };
    Ok(Stmt::If {
        count,
        op,
        value,
        then,
        otherwise,
    })
}

/// `[:len [/<menu> find <conds>]] OP N`.
fn parse_condition(text: &str, at: usize) -> Result<(Count, Compare, u64), CliError> {
    let syntax = |i: usize| CliError::Syntax { col: at + i + 1 };
    let lead = text.len() - text.trim_start().len();
    let body = &text[lead..];
    if !body.starts_with('[') {
        return Err(syntax(lead));
    }
    let end = closing(body, 0).ok_or_else(|| syntax(text.len()))?;
    let inner = body[1..end].trim_start();
    let inner_at = lead + 1 + (body[1..end].len() - inner.len());
    let Some(list) = inner.strip_prefix(":len") else {
        let name: String = inner
            .trim_start_matches(':')
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '[')
            .collect();
        return Err(CliError::BadCommand {
            name,
            col: at + inner_at + 2,
        });
    };
    let list_at = inner_at + 4 + (list.len() - list.trim_start().len());
    let list = list.trim();
    if !(list.starts_with('[') && list.ends_with(']')) {
        return Err(syntax(list_at));
    }
    let count = parse_count(&list[1..list.len() - 1]).map_err(|e| shift(e, at + list_at + 1))?;
    let tail = body[end + 1..].trim();
    let (op, number) = if let Some(n) = tail.strip_prefix("!=") {
        (Compare::NotEq, n)
    } else if let Some(n) = tail.strip_prefix('=') {
        (Compare::Eq, n)
    } else if let Some(n) = tail.strip_prefix('<') {
        (Compare::Less, n)
    } else if let Some(n) = tail.strip_prefix('>') {
        (Compare::Greater, n)
    } else {
        return Err(syntax(lead + end + 1));
    };
    let value = number
        .trim()
        .parse::<u64>()
        .map_err(|_| syntax(lead + end + 1))?;
    Ok((count, op, value))
}

/// `/<menu> find <conds>` (the brackets removed).
fn parse_count(text: &str) -> Result<Count, CliError> {
    let mut cur = Cursor::new(&format!("{text}]"))?;
    let (menu, col) = match cur.next() {
        Some(Tok {
            kind: TokKind::Word(w),
            col,
            ..
        }) => (w, col),
        Some(t) => return Err(CliError::Syntax { col: t.col }),
        None => return Err(CliError::Syntax { col: 1 }),
    };
    let menu = menu.trim_start_matches('/').to_string();
    if menu != "disk" && menu != "file" {
        return Err(CliError::BadCommand { name: menu, col });
    }
    let conds = parse_find(&mut cur)?;
    if let Some(t) = cur.peek() {
        return Err(CliError::ExpectedEnd { col: t.col });
    }
    Ok(Count { menu, conds })
}

/// The characters of `text` outside double-quoted strings (backslash escapes inside them),
/// with their byte indices; and whether a string is left open at the end.
fn outside_strings(text: &str) -> (Vec<(usize, char)>, bool) {
    let mut out = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else {
            out.push((i, c));
        }
    }
    (out, in_string)
}

/// Splits `text` at the `;` outside strings, brackets, braces and parentheses; each part
/// with its byte offset in the line (`text` starts at `offset`).
fn split_top(text: &str, offset: usize) -> Result<Vec<(usize, &str)>, CliError> {
    let mut parts = Vec::new();
    let mut depth: Vec<char> = Vec::new();
    let mut start = 0;
    let (chars, open_string) = outside_strings(text);
    for (i, c) in chars {
        match c {
            '[' | '{' | '(' => depth.push(c),
            ']' | '}' | ')' => {
                let want = match c {
                    ']' => '[',
                    '}' => '{',
                    _ => '(',
                };
                if depth.pop() != Some(want) {
                    return Err(CliError::Syntax {
                        col: offset + i + 1,
                    });
                }
            }
            ';' if depth.is_empty() => {
                parts.push((offset + start, &text[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if open_string || !depth.is_empty() {
        return Err(CliError::Syntax {
            col: offset + text.len() + 1,
        });
    }
    parts.push((offset + start, &text[start..]));
    Ok(parts)
}

/// The byte index of the bracket closing the one at `open`, outside strings.
fn closing(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in outside_strings(&text[open..]).0 {
        match c {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// A line made of exactly one quoted string: its value.
fn tokenize_one_string(text: &str) -> Option<String> {
    match super::tokenize(text).ok()?.as_slice() {
        [Tok {
            kind: TokKind::Str(s),
            ..
        }] => Some(s.clone()),
        _ => None,
    }
}

/// Moves an error's column from a part of the line to the whole line.
fn shift(e: CliError, by: usize) -> CliError {
    match e {
        CliError::BadCommand { name, col } => CliError::BadCommand {
            name,
            col: col + by,
        },
        CliError::ExpectedEnd { col } => CliError::ExpectedEnd { col: col + by },
        CliError::Syntax { col } => CliError::Syntax { col: col + by },
        other => other,
    }
}

/// `:put [/file get <item> <property>]`: the one RouterOS script the mock answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGet {
    /// `[find ...]` or a file name.
    pub item: Value,
    pub property: String,
    /// Column of the property name.
    pub property_col: usize,
}

/// Whether a line is a script (`:put ...`) rather than a menu command.
pub fn is_script(line: &str) -> bool {
    line.trim_start().starts_with(':')
}

/// Parses `:put [/file get [find name="..."] size]` (also `/file/get` and a plain name as the
/// item). Another script command is `bad command name`, as RouterOS says for any unknown one.
pub fn parse_put(line: &str) -> Result<FileGet, CliError> {
    let mut cur = Cursor::new(line)?;
    match cur.next() {
        Some(Tok {
            kind: TokKind::Word(w),
            ..
        }) if w == ":put" => {}
        Some(Tok {
            kind: TokKind::Word(w),
            col,
            ..
        }) => {
            return Err(CliError::BadCommand {
                name: w.trim_start_matches(':').to_string(),
                col: col + 1,
            })
        }
        Some(t) => return Err(CliError::Syntax { col: t.col }),
        None => return Err(CliError::Syntax { col: cur.end_col }),
    }
    expect(&mut cur, TokKind::LBracket)?;
    let mut path = Vec::new();
    while let Some(Tok {
        kind: TokKind::Word(w),
        col,
        ..
    }) = cur.peek().cloned()
    {
        if path.len() == 2 {
            break;
        }
        cur.next();
        for (seg, seg_col) in segments(&w, col) {
            let next = match path.len() {
                0 => "file",
                _ => "get",
            };
            if seg != next || path.len() == 2 {
                return Err(CliError::BadCommand {
                    name: seg.to_string(),
                    col: seg_col,
                });
            }
            path.push(seg.to_string());
        }
    }
    if path.len() != 2 {
        return Err(CliError::Syntax { col: cur.col() });
    }
    let item = match cur.next() {
        Some(Tok {
            kind: TokKind::LBracket,
            ..
        }) => Value::Find(parse_find(&mut cur)?),
        Some(Tok {
            kind: TokKind::Str(s) | TokKind::Word(s),
            ..
        }) => Value::Text(s),
        Some(t) => return Err(CliError::Syntax { col: t.col }),
        None => return Err(CliError::Syntax { col: cur.end_col }),
    };
    let (property, property_col) = match cur.next() {
        Some(Tok {
            kind: TokKind::Word(w),
            col,
            ..
        }) => (w, col),
        Some(t) => return Err(CliError::Syntax { col: t.col }),
        None => return Err(CliError::Syntax { col: cur.end_col }),
    };
    expect(&mut cur, TokKind::RBracket)?;
    if let Some(t) = cur.peek() {
        return Err(CliError::ExpectedEnd { col: t.col });
    }
    Ok(FileGet {
        item,
        property,
        property_col,
    })
}

fn expect(cur: &mut Cursor, kind: TokKind) -> Result<(), CliError> {
    match cur.next() {
        Some(t) if t.kind == kind => Ok(()),
        Some(t) => Err(CliError::Syntax { col: t.col }),
        None => Err(CliError::Syntax { col: cur.end_col }),
    }
}
