//! The `scripting` step: whether the RDS runs the driver's scripts (one exec per change) and
//! prints what they print. The read-only probe the driver sends at start comes first; when it
//! passes, the real create and remove scripts run on a scratch disk, so what the driver would
//! do on this RDS is what was tried.

use super::{exit_of, text, Handled, Run, MIB};
use crate::rds::command::{AllocSize, DiskAdd, NvmeExport, Port};
use crate::rds::script::{probe_answered, read_removed, Created, Parts, Script};

impl Run<'_> {
    pub(super) async fn scripting(&mut self) -> anyhow::Result<()> {
        let probe = self
            .exec(Script::probe().line(), Some("script-probe.txt"))
            .await?;
        let (observed, variants, handled) = if probe_answered(&probe.stdout) {
            self.scripts_on_a_scratch_disk().await?
        } else {
            let parts = Parts::split(&probe.stdout);
            let shown = text(&probe);
            if shown.to_ascii_lowercase().contains("bad command name")
                || shown
                    .to_ascii_lowercase()
                    .contains("expected end of command")
            {
                (
                    format!(
                        "refused: {shown} ({}); the driver sends one command at a time",
                        exit_of(&probe)
                    ),
                    vec!["scripting-refused"],
                    Handled::Yes,
                )
            } else if parts.names() == ["probe", "none", "identity"] {
                (
                    format!(
                        "runs, but `print` inside a script shows nothing ({shown}); the driver \
                         sends one command at a time"
                    ),
                    vec!["script-quiet-print"],
                    Handled::Yes,
                )
            } else {
                (
                    format!(
                        "printed something else: {shown} ({}); the driver sends one command at \
                         a time",
                        exit_of(&probe)
                    ),
                    vec![],
                    Handled::Yes,
                )
            }
        };
        self.find(
            "scripting",
            "the driver's scripts run in one exec and print what they `:put` and `print`",
            observed,
            variants,
            handled,
        );
        Ok(())
    }

    /// Creates and removes a scratch disk with the driver's own scripts.
    async fn scripts_on_a_scratch_disk(
        &mut self,
    ) -> anyhow::Result<(String, Vec<&'static str>, Handled)> {
        let slot = self.slot("script")?;
        let path = self.scratch.join(&format!("{slot}.img"))?;
        let add = DiskAdd {
            slot: slot.clone(),
            file_path: path.clone(),
            size: Some(AllocSize::round_up(MIB)?),
            copy_from: None,
            export: Some(NvmeExport {
                port: Port::new(4420)?,
                nqn: slot.nqn(),
            }),
        };
        self.adding(&slot, &path);
        let created = self
            .exec(Script::create(&add).line(), Some("script-create.txt"))
            .await?;
        match Created::read(&created.stdout, &slot) {
            Ok(Created::Made(Some(disk))) if disk.file_path.as_deref() == Some(path.as_str()) => {}
            other => {
                return Ok((
                    format!(
                        "the probe passes but the create script gave {} ({}: {}); run the \
                         controller with --rds-scripting=off",
                        text(&created),
                        exit_of(&created),
                        match other {
                            Ok(c) => format!("{c:?}"),
                            Err(e) => e.to_string(),
                        }
                    ),
                    vec![],
                    Handled::No,
                ))
            }
        }
        let removed = self
            .exec(
                Script::remove(&slot, &path).line(),
                Some("script-remove.txt"),
            )
            .await?;
        if let Err(e) = read_removed(&removed.stdout, &slot, &path) {
            return Ok((
                format!(
                    "the create script works but the remove script gave {} ({}: {e}); run \
                     the controller with --rds-scripting=off",
                    text(&removed),
                    exit_of(&removed)
                ),
                vec![],
                Handled::No,
            ));
        }
        Ok((
            "runs: a disk was created and removed in one exec each, read back in the same \
             exec"
                .to_string(),
            vec![],
            Handled::Yes,
        ))
    }
}
