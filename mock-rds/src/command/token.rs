//! The RouterOS command line's words: a tokenizer (quoted strings with backslash escapes, `[ ]`
//! sub-expressions, `=`, `~`, `!=`) and the errors with the texts RouterOS prints.

use std::fmt;

/// A RouterOS CLI error; `Display` gives the exact text printed to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    BadCommand {
        name: String,
        col: usize,
    },
    ExpectedEnd {
        col: usize,
    },
    Syntax {
        col: usize,
    },
    InvalidValue {
        arg: String,
    },
    NoMatch {
        arg: String,
    },
    /// Printed as `failure: <text>`.
    Failure(String),
    /// Printed verbatim (mock-only messages).
    Other(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::BadCommand { name, col } => {
                write!(f, "bad command name {name} (line 1 column {col})")
            }
            CliError::ExpectedEnd { col } => {
                write!(f, "expected end of command (line 1 column {col})")
            }
            CliError::Syntax { col } => write!(f, "syntax error (line 1 column {col})"),
            CliError::InvalidValue { arg } => write!(f, "invalid value for argument {arg}"),
            CliError::NoMatch { arg } => write!(f, "input does not match any value of {arg}"),
            CliError::Failure(t) => write!(f, "failure: {t}"),
            CliError::Other(t) => f.write_str(t),
        }
    }
}

pub fn failure(text: impl Into<String>) -> CliError {
    CliError::Failure(text.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokKind {
    Word(String),
    Str(String),
    Eq,
    Tilde,
    NotEq,
    LBracket,
    RBracket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tok {
    pub kind: TokKind,
    /// 1-based column of the token's first character.
    pub col: usize,
    /// Whether whitespace separates this token from the previous one.
    pub space_before: bool,
}

fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '"' | '[' | ']' | '=' | '~'))
}

/// Splits one command line into tokens.
pub fn tokenize(line: &str) -> Result<Vec<Tok>, CliError> {
    let chars: Vec<char> = line.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let mut space = true;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        let kind = match c {
            '[' => {
                i += 1;
                TokKind::LBracket
            }
            ']' => {
                i += 1;
                TokKind::RBracket
            }
            '=' => {
                i += 1;
                TokKind::Eq
            }
            '~' => {
                i += 1;
                TokKind::Tilde
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 2;
                TokKind::NotEq
            }
            '"' => {
                let (s, next) = read_string(&chars, i)?;
                i = next;
                TokKind::Str(s)
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && is_word_char(chars[i])
                    && !(chars[i] == '!' && chars.get(i + 1) == Some(&'='))
                {
                    i += 1;
                }
                TokKind::Word(chars[start..i].iter().collect())
            }
        };
        toks.push(Tok {
            kind,
            col,
            space_before: space,
        });
        space = false;
    }
    Ok(toks)
}

/// Reads a `"..."` literal starting at `start` (the quote); returns the value and the index after
/// the closing quote. Escapes follow RouterOS: `\" \\ \n \r \t \$ \? \_` (space) and `\XX` hex.
fn read_string(chars: &[char], start: usize) -> Result<(String, usize), CliError> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(CliError::Syntax { col: start + 1 });
        };
        match c {
            '"' => return Ok((String::from_utf8_lossy(&bytes).into_owned(), i + 1)),
            '\\' => {
                let Some(&e) = chars.get(i + 1) else {
                    return Err(CliError::Syntax { col: i + 1 });
                };
                let simple = match e {
                    '"' => Some(b'"'),
                    '\\' => Some(b'\\'),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'a' => Some(0x07),
                    'b' => Some(0x08),
                    'f' => Some(0x0c),
                    'v' => Some(0x0b),
                    '$' => Some(b'$'),
                    '?' => Some(b'?'),
                    '_' => Some(b' '),
                    _ => None,
                };
                if let Some(b) = simple {
                    bytes.push(b);
                    i += 2;
                } else {
                    let hex: String = chars.iter().skip(i + 1).take(2).collect();
                    match u8::from_str_radix(&hex, 16) {
                        Ok(b) if hex.len() == 2 && hex.chars().all(|h| h.is_ascii_hexdigit()) => {
                            bytes.push(b);
                            i += 3;
                        }
                        _ => return Err(CliError::Syntax { col: i + 1 }),
                    }
                }
            }
            _ => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 1;
            }
        }
    }
}
