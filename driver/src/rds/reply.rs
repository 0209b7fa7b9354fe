//! Reading one command's reply from its SSH channel, with a bound on how much is kept.

use russh::client;
use russh::ChannelMsg;

use super::error::{ExecOutput, TransportError};

/// The most output (stdout and stderr together) one command may produce; the longest real one,
/// `/disk print detail` of 10,000 volumes, is a few MiB.
pub const MAX_OUTPUT_BYTES: usize = 32 << 20;

/// Collects stdout, stderr and the exit status until the channel closes. Output past
/// [`MAX_OUTPUT_BYTES`] fails the command rather than filling memory; the connection itself
/// is fine, so that is not a connection loss.
pub(super) async fn read_reply(
    channel: &mut russh::Channel<client::Msg>,
) -> Result<ExecOutput, TransportError> {
    let mut out = ExecOutput::default();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut closed = false;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
            ChannelMsg::Close => {
                closed = true;
                break;
            }
            _ => {}
        }
        if stdout.len() + stderr.len() > MAX_OUTPUT_BYTES {
            return Err(TransportError::OutputTooLarge {
                limit: MAX_OUTPUT_BYTES,
            });
        }
    }
    if !closed && out.exit_status.is_none() {
        // The connection went away before the command's reply: whether it ran is unknown.
        return Err(TransportError::ConnectionLost(
            "connection closed before the command's reply".into(),
        ));
    }
    out.stdout = String::from_utf8_lossy(&stdout).into_owned();
    out.stderr = String::from_utf8_lossy(&stderr).into_owned();
    Ok(out)
}
