//! The one RouterOS script the mock answers: `:put [/file get <item> <property>]`.

use super::{parse_find, segments, Cursor, Value};
use super::{CliError, Tok, TokKind};

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
