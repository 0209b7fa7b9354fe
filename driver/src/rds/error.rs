//! Errors of RDS commands, classified from the exit status and the output text together:
//! RouterOS prints its failures on stdout and its exit status is not known to be reliable.

use std::time::Duration;

use thiserror::Error;

use super::command::InvalidValue;

#[derive(Debug, Clone, Error)]
pub enum RdsError {
    // The inner error is in the message, so it is no `source`: `{:#}` would print it twice.
    #[error("invalid request: {0}")]
    Invalid(InvalidValue),
    #[error("RDS: not found: {0}")]
    NotFound(String),
    #[error("RDS: already exists: {0}")]
    AlreadyExists(String),
    #[error("RDS: out of space: {0}")]
    OutOfSpace(String),
    #[error("RDS rejected the command as invalid: {0}")]
    InvalidArgument(String),
    #[error("RDS command failed (exit status {exit_status:?}): {text}")]
    Failed {
        exit_status: Option<u32>,
        text: String,
    },
    #[error("{what}: {0}", what = .0.what_failed())]
    Transport(TransportError),
    #[error("RDS output could not be understood: {0}")]
    Parse(String),
    /// The RDS is working on the object (a copy into or out of it); try again later.
    #[error("RDS: busy: {0}")]
    Busy(String),
    /// A copy stopped short of its size; what it made has been removed.
    #[error("RDS: copy interrupted: {0}")]
    Interrupted(String),
}

impl From<InvalidValue> for RdsError {
    fn from(e: InvalidValue) -> Self {
        RdsError::Invalid(e)
    }
}

impl From<TransportError> for RdsError {
    fn from(e: TransportError) -> Self {
        RdsError::Transport(e)
    }
}

impl RdsError {
    /// A `/disk add` that answered success while its disk does not show: unknown output after
    /// a mutation, so a failure.
    pub fn missing_after_add(slot: &impl std::fmt::Display) -> RdsError {
        RdsError::Failed {
            exit_status: Some(0),
            text: format!("disk {slot} is not there after `/disk add` reported success"),
        }
    }

    /// Only transport failures are worth repeating: the RDS never saw the command, or its reply
    /// was lost. A RouterOS failure would only fail again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RdsError::Transport(t) if t.is_retryable())
    }
}

#[derive(Debug, Clone, Error)]
pub enum TransportError {
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("SSH host key of {addr} does not match: expected {expected}, got {actual}")]
    HostKeyMismatch {
        addr: String,
        expected: String,
        actual: String,
    },
    #[error("SSH host key of {addr} ({actual}) is not in {source_name}")]
    HostKeyUnknown {
        addr: String,
        actual: String,
        source_name: String,
    },
    #[error("SSH authentication as `{user}` at {addr} was refused (is the public key of the key file authorised for this user?)")]
    AuthRejected { user: String, addr: String },
    #[error("SSH connection lost: {0}")]
    ConnectionLost(String),
    #[error("timed out after {} waiting for: {what}", crate::duration::display(*after))]
    Timeout { what: String, after: Duration },
    #[error("SSH client setup: {0}")]
    Config(String),
    #[error("the command's output exceeds {limit} bytes; it was not read further")]
    OutputTooLarge { limit: usize },
}

impl TransportError {
    /// What the failure means for reaching the RDS: a wrong host key or a refused login is not
    /// the RDS being down.
    pub fn what_failed(&self) -> &'static str {
        match self {
            TransportError::HostKeyMismatch { .. } | TransportError::HostKeyUnknown { .. } => {
                "RDS host key not trusted"
            }
            TransportError::AuthRejected { .. } => "RDS login refused",
            TransportError::Config(_) => "RDS connection not set up",
            TransportError::OutputTooLarge { .. } => "RDS reply refused",
            TransportError::Connect { .. } => "RDS unreachable",
            TransportError::ConnectionLost(_) => "RDS connection lost",
            // Reached, or at least not refused, but silent: a hung RouterOS or a port that is
            // not its SSH service, not a network that is down.
            TransportError::Timeout { .. } => "RDS not answering",
        }
    }

    /// A wrong host key, refused credentials or a bad configuration will not fix themselves.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::ConnectionLost(_)
                | TransportError::Timeout { .. }
        )
    }
}

/// What one SSH exec produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_status: Option<u32>,
}

/// Line starts RouterOS uses for a failed command, lowercased. Matched only at the start of a
/// line, so data such as a disk model that happens to contain these words is not a failure.
const FAILURE_STARTS: &[&str] = &[
    "failure:",
    "bad command name",
    "syntax error",
    "expected end of command",
    "no such item",
    "invalid value",
    "input does not match",
    "ambiguous value",
    "expected ",
    "invalid parameter",
    "missing value",
];

/// Whether a line starts the way a RouterOS failure the driver knows does.
pub fn is_known_failure_text(line: &str) -> bool {
    let lower = line.trim().to_ascii_lowercase();
    FAILURE_STARTS.iter().any(|p| lower.starts_with(p))
}

/// Turns an exec result into success (stdout) or a classified error that keeps the text. A
/// `mutating` command succeeds only on the output RouterOS prints on success, which is nothing:
/// any text after `/disk add|set|remove` or `/file remove` is a failure, whatever the exit status.
pub fn classify(output: ExecOutput, mutating: bool) -> Result<String, RdsError> {
    let failure_line = output
        .stdout
        .lines()
        .chain(output.stderr.lines())
        .map(|l| l.trim())
        .find(|l| is_known_failure_text(l));
    let unexpected_text = mutating && !output.stdout.trim().is_empty();
    let failed = output.exit_status != Some(0) || failure_line.is_some() || unexpected_text;
    if !failed {
        return Ok(output.stdout);
    }
    let text = match failure_line {
        Some(line) => line.to_string(),
        None => {
            let both = format!("{} {}", output.stdout.trim(), output.stderr.trim());
            let both = both.trim();
            if both.is_empty() {
                "no output".to_string()
            } else {
                both.to_string()
            }
        }
    };
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    Err(if has("no such item") || has("not found") {
        RdsError::NotFound(text)
    } else if has("already exist") || has("already have") || has("exists") {
        RdsError::AlreadyExists(text)
    } else if has("not enough space") || has("no space") || has("disk full") {
        RdsError::OutOfSpace(text)
    } else if has("bad command name")
        || has("syntax error")
        || has("expected end of command")
        || has("invalid value")
        || has("input does not match")
        || has("ambiguous value")
        || has("invalid parameter")
        || has("missing value")
    {
        RdsError::InvalidArgument(text)
    } else if has("disk is busy") {
        RdsError::Busy(text)
    } else {
        RdsError::Failed {
            exit_status: output.exit_status,
            text,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_read(o: ExecOutput) -> Result<String, RdsError> {
        classify(o, false)
    }

    #[test]
    fn any_text_after_a_mutation_is_a_failure() {
        let odd = out("something nobody has seen\r\n", Some(0));
        assert!(classify(odd.clone(), false).is_ok());
        assert!(matches!(
            classify(odd, true),
            Err(RdsError::Failed { exit_status: Some(0), text }) if text == "something nobody has seen"
        ));
        assert!(classify(out("\r\n", Some(0)), true).is_ok());
        assert!(matches!(
            classify(out("disk is busy\r\n", Some(0)), true),
            Err(RdsError::Busy(_))
        ));
        assert!(matches!(
            classify(out("file already exists\r\n", Some(0)), true),
            Err(RdsError::AlreadyExists(_))
        ));
        assert!(matches!(
            classify(out("command rejected: not enough space\r\n", Some(0)), true),
            Err(RdsError::OutOfSpace(_))
        ));
    }

    fn out(stdout: &str, exit: Option<u32>) -> ExecOutput {
        ExecOutput {
            stdout: stdout.into(),
            stderr: String::new(),
            exit_status: exit,
        }
    }

    #[test]
    fn success_needs_exit_zero_and_no_failure_line() {
        assert_eq!(classify_read(out("x\r\n", Some(0))).unwrap(), "x\r\n");
        assert!(matches!(
            classify_read(out("failure: not enough space\r\n", Some(0))),
            Err(RdsError::OutOfSpace(t)) if t == "failure: not enough space"
        ));
        assert!(matches!(
            classify_read(out("", Some(1))),
            Err(RdsError::Failed { exit_status: Some(1), text }) if text == "no output"
        ));
        assert!(matches!(
            classify_read(out("", None)),
            Err(RdsError::Failed { .. })
        ));
    }

    #[test]
    fn classifies_routeros_texts() {
        let kind = |s: &str| match classify_read(out(s, Some(1))).unwrap_err() {
            RdsError::NotFound(_) => "not-found",
            RdsError::AlreadyExists(_) => "exists",
            RdsError::OutOfSpace(_) => "space",
            RdsError::InvalidArgument(_) => "invalid",
            RdsError::Failed { .. } => "failed",
            _ => "other",
        };
        assert_eq!(kind("failure: no such item"), "not-found");
        assert_eq!(kind("no such item (4)"), "not-found");
        assert_eq!(
            kind("failure: item with such name already exists"),
            "exists"
        );
        assert_eq!(kind("failure: not enough space"), "space");
        assert_eq!(kind("bad command name foo (line 1 column 2)"), "invalid");
        assert_eq!(
            kind("expected end of command (line 1 column 12)"),
            "invalid"
        );
        assert_eq!(kind("syntax error (line 1 column 5)"), "invalid");
        assert_eq!(kind("input does not match any value of type"), "invalid");
        assert_eq!(kind("invalid value for argument file-size"), "invalid");
        assert_eq!(kind("ambiguous value of slot"), "invalid");
        assert_eq!(kind("failure: execution error"), "failed");
    }

    #[test]
    fn failure_words_inside_data_are_not_failures() {
        let data = " 0  type=file model=\"no such item failure: x\"\r\n";
        assert!(classify_read(out(data, Some(0))).is_ok());
    }

    #[test]
    fn only_transport_errors_retry() {
        assert!(RdsError::Transport(TransportError::ConnectionLost("x".into())).is_retryable());
        assert!(!RdsError::Transport(TransportError::AuthRejected {
            user: "a".into(),
            addr: "b".into()
        })
        .is_retryable());
        assert!(!RdsError::NotFound("x".into()).is_retryable());
    }
}
