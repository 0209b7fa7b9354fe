//! The console: what `ssh -p PORT admin@127.0.0.1` without a command gets. A line-based shell
//! with a RouterOS-like prompt that runs each line exactly as an exec would (faults, profile and
//! history included). With a terminal it echoes, edits (backspace, Ctrl-C, Ctrl-D) and ends
//! lines with CR LF; without one (`ssh -T host < commands`) it only answers.

use std::sync::Arc;

use russh::server::Handle;
use russh::ChannelId;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::server::{answer, apply_effect, Shared};

/// Words that leave the console, besides Ctrl-D on an empty line.
const QUIT: [&str; 3] = ["/quit", "quit", "exit"];

/// `\n` line ends as a terminal in raw mode needs them: `\r\n`.
pub(crate) fn terminal_lines(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// What a run of keystrokes amounts to.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    /// Bytes to echo back to a terminal.
    Echo(Vec<u8>),
    /// A whole line was entered.
    Line(String),
    /// Ctrl-C: the line is dropped.
    Interrupt,
    /// Ctrl-D on an empty line.
    EndOfInput,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Started,
    /// Inside `ESC [ ...` until its final byte.
    Csi,
    /// After `ESC O`: one more byte.
    Ss3,
}

/// Assembles lines from keystrokes. Cursor keys and other escape sequences are swallowed: the
/// console keeps no history and no cursor.
#[derive(Debug, Default)]
struct LineEditor {
    line: Vec<u8>,
    escape: Escape,
    /// The last byte ended a line with CR, so an LF right after it is the same line end.
    after_cr: bool,
}

impl LineEditor {
    fn feed(&mut self, byte: u8) -> Option<Key> {
        let after_cr = std::mem::take(&mut self.after_cr);
        match self.escape {
            Escape::Started => {
                self.escape = match byte {
                    b'[' => Escape::Csi,
                    b'O' => Escape::Ss3,
                    _ => Escape::None,
                };
                return None;
            }
            Escape::Csi => {
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                }
                return None;
            }
            Escape::Ss3 => {
                self.escape = Escape::None;
                return None;
            }
            Escape::None => {}
        }
        match byte {
            0x1b => {
                self.escape = Escape::Started;
                None
            }
            b'\n' if after_cr => None,
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                Some(Key::Line(line))
            }
            0x7f | 0x08 => {
                // Drop the last character, UTF-8 continuation bytes included.
                let mut erased = false;
                while let Some(b) = self.line.pop() {
                    erased = true;
                    if b & 0xc0 != 0x80 {
                        break;
                    }
                }
                erased.then(|| Key::Echo(b"\x08 \x08".to_vec()))
            }
            0x03 => {
                self.line.clear();
                Some(Key::Interrupt)
            }
            0x04 if self.line.is_empty() => Some(Key::EndOfInput),
            b if b >= 0x20 || b == b'\t' => {
                let b = if b == b'\t' { b' ' } else { b };
                self.line.push(b);
                Some(Key::Echo(vec![b]))
            }
            _ => None,
        }
    }

    /// What is left when the input ends: a last line without its line end.
    fn rest(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.line);
        (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned())
    }
}

/// One console session on one channel.
pub(crate) struct Console {
    shared: Arc<Shared>,
    conn: u64,
    handle: Handle,
    channel: ChannelId,
    /// A terminal was asked for: echo, prompt, CR LF.
    pty: bool,
    prompt: String,
}

impl Console {
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn: u64,
        handle: Handle,
        channel: ChannelId,
        pty: bool,
        user: &str,
    ) -> Self {
        Console {
            shared,
            conn,
            handle,
            channel,
            pty,
            prompt: format!("[{user}@mock-rds] > "),
        }
    }

    async fn send(&self, bytes: impl Into<Vec<u8>>) {
        let _ = self.handle.data(self.channel, bytes.into()).await;
    }

    async fn prompt(&self) {
        if self.pty {
            self.send(self.prompt.clone()).await;
        }
    }

    /// Runs one line; false when it asks to leave.
    async fn line(&self, line: &str) -> bool {
        let line = line.trim();
        if QUIT.contains(&line) {
            return false;
        }
        if line.is_empty() {
            self.prompt().await;
            return true;
        }
        // A hung command answers nothing, as on a hung RouterOS: Ctrl-C gives the prompt back.
        if let Some(answer) = answer(&self.shared, self.conn, line).await {
            if !answer.output.is_empty() {
                let output = if self.pty {
                    terminal_lines(&answer.output)
                } else {
                    answer.output
                };
                self.send(output).await;
            }
            apply_effect(&self.shared, self.conn, &self.handle, answer.effect).await;
            self.prompt().await;
        }
        true
    }

    async fn close(&self) {
        let _ = self.handle.exit_status_request(self.channel, 0).await;
        let _ = self.handle.eof(self.channel).await;
        let _ = self.handle.close(self.channel).await;
    }
}

/// Serves the console until `/quit`, Ctrl-D or the end of its input.
pub(crate) async fn run(console: Console, mut typed: UnboundedReceiver<Vec<u8>>) {
    if console.pty {
        console
            .send(terminal_lines(
                "mock-rds: a RouterOS-like console for /disk, /file and /system commands, run as \
                 over exec.\n/mock help lists the test controls; /quit or Ctrl-D leaves.\n\n",
            ))
            .await;
        console.prompt().await;
    }
    let mut editor = LineEditor::default();
    'input: while let Some(chunk) = typed.recv().await {
        let mut echo = Vec::new();
        for byte in chunk {
            let Some(key) = editor.feed(byte) else {
                continue;
            };
            match key {
                Key::Echo(bytes) => echo.extend(bytes),
                Key::Line(line) => {
                    if console.pty {
                        echo.extend(b"\r\n");
                        console.send(std::mem::take(&mut echo)).await;
                    }
                    if !console.line(&line).await {
                        break 'input;
                    }
                }
                Key::Interrupt => {
                    if console.pty {
                        echo.extend(b"^C\r\n");
                        console.send(std::mem::take(&mut echo)).await;
                        console.prompt().await;
                    }
                }
                Key::EndOfInput => {
                    if console.pty {
                        echo.extend(b"\r\n");
                        console.send(std::mem::take(&mut echo)).await;
                    }
                    break 'input;
                }
            }
        }
        if console.pty && !echo.is_empty() {
            console.send(echo).await;
        }
    }
    // Input ended (EOF) or the person left: a last unterminated line still runs.
    if typed.is_closed() {
        if let Some(rest) = editor.rest() {
            console.line(&rest).await;
        }
    }
    console.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(input: &[u8]) -> (Vec<Key>, LineEditor) {
        let mut editor = LineEditor::default();
        let keys = input.iter().filter_map(|b| editor.feed(*b)).collect();
        (keys, editor)
    }

    fn lines(input: &[u8]) -> Vec<String> {
        keys(input)
            .0
            .into_iter()
            .filter_map(|k| match k {
                Key::Line(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lines_end_with_cr_lf_or_either_alone() {
        assert_eq!(lines(b"a\r\nb\nc\rd\r\n"), ["a", "b", "c", "d"]);
        // An empty line between two line ends is still a line.
        assert_eq!(lines(b"a\n\nb\n"), ["a", "", "b"]);
        assert_eq!(lines(b"a\r\r\n"), ["a", ""]);
    }

    #[test]
    fn backspace_erases_one_character_and_echoes_the_erase() {
        let (k, _) = keys(b"ab\x7f\x7fc\n");
        assert_eq!(k.last(), Some(&Key::Line("c".into())));
        assert_eq!(
            k.iter()
                .filter(|k| **k == Key::Echo(b"\x08 \x08".to_vec()))
                .count(),
            2
        );
        // Nothing to erase: nothing echoed.
        assert_eq!(keys(b"\x7f").0, []);
        // A multi-byte character goes whole.
        assert_eq!(lines("xé\x7f\n".as_bytes()), ["x"]);
    }

    #[test]
    fn cursor_keys_are_swallowed() {
        assert_eq!(lines(b"/di\x1b[Ask\x1bOB print\n"), ["/disk print"]);
        assert_eq!(lines(b"a\x1b[1;5Cb\n"), ["ab"]);
    }

    #[test]
    fn ctrl_c_drops_the_line_and_ctrl_d_leaves_only_on_an_empty_one() {
        let (k, _) = keys(b"oops\x03ok\n");
        assert!(k.contains(&Key::Interrupt));
        assert_eq!(k.last(), Some(&Key::Line("ok".into())));
        assert_eq!(keys(b"x\x04").0.last(), Some(&Key::Echo(b"x".to_vec())));
        assert_eq!(keys(b"\x04").0, [Key::EndOfInput]);
    }

    #[test]
    fn an_unterminated_last_line_is_kept() {
        let (_, mut editor) = keys(b"/disk print\n/file print");
        assert_eq!(editor.rest().as_deref(), Some("/file print"));
        assert_eq!(editor.rest(), None);
    }

    #[test]
    fn terminal_output_ends_lines_with_cr_lf() {
        assert_eq!(terminal_lines("a\nb\r\nc"), "a\r\nb\r\nc");
    }
}
