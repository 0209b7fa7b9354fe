//! Structured logs through `tracing`, as text for people or JSON for log pipelines.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr (stdout stays free for command output).
/// Colour only when stderr is a terminal and `NO_COLOR` is unset (or empty).
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(normalize_filter(filter)?)
        .map_err(|e| format!("--log-level `{filter}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// ANSI colour: on a terminal, unless `NO_COLOR` is set to anything but the empty string
/// (no-color.org).
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter with `warning` read as `warn`, and a bare word that is no level refused: `tracing`
/// would take it for a target and log nothing else.
fn normalize_filter(filter: &str) -> Result<String, String> {
    let directives: Vec<String> = filter
        .split(',')
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
        .map(|directive| {
            let (target, level) = match directive.rsplit_once('=') {
                Some((target, level)) => (Some(target), level),
                None => (None, directive),
            };
            let level = match level.to_ascii_lowercase().as_str() {
                "warning" => "warn".to_string(),
                l if LEVELS.contains(&l) => l.to_string(),
                // `target` alone or `target[span]` is tracing's own syntax: all levels there.
                _ if target.is_none() && (level.contains("::") || level.contains('[')) => {
                    return Ok(directive.to_string())
                }
                other => {
                    return Err(format!(
                        "--log-level `{filter}`: unknown level `{other}` (use one of {}, or \
                         TARGET=LEVEL)",
                        LEVELS.join(", ")
                    ))
                }
            };
            Ok(match target {
                Some(target) => format!("{target}={level}"),
                None => level,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(directives.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn warning_is_warn_and_unknown_levels_are_refused() {
        assert_eq!(normalize_filter("warning").unwrap(), "warn");
        assert_eq!(
            normalize_filter("rds_csi=WARNING, info").unwrap(),
            "rds_csi=warn,info"
        );
        assert_eq!(
            normalize_filter("rds_csi::rds=debug").unwrap(),
            "rds_csi::rds=debug"
        );
        assert_eq!(normalize_filter("rds_csi::rds").unwrap(), "rds_csi::rds");
        let e = normalize_filter("warnin").unwrap_err();
        assert!(e.contains("unknown level `warnin`"), "{e}");
        assert!(normalize_filter("rds_csi=loud").is_err());
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
