//! Durations as operators write them in flags: `90s`, `5m`, `1h30m`, `2d`, as Go (and so the
//! earlier Go driver and kubectl) writes them, minus the sub-second units.

use std::time::Duration;

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

fn refused(s: &str) -> String {
    format!("`{s}` is not a duration such as 30s, 5m, 1h30m or 2d (a unit is required)")
}

/// Parses `0` or numbers each followed by a unit, largest first: `90s`, `5m`, `1h30m`, `2d`.
/// A bare number other than 0 is refused: `5` could mean seconds or minutes.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut secs: u64 = 0;
    // Units must come largest first, each once: `5m1h` is a typo, not 65 minutes.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().map_err(|_| refused(text))?;
        let unit = rest[digits..].chars().next().ok_or_else(|| refused(text))?;
        let at = UNITS[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(|| refused(text))?;
        let (_, scale) = UNITS[next_unit + at];
        next_unit += at + 1;
        secs = n
            .checked_mul(scale)
            .and_then(|v| v.checked_add(secs))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    if next_unit == 0 {
        return Err(refused(text));
    }
    Ok(Duration::from_secs(secs))
}

/// For the flags that have always counted seconds: a bare number is seconds, anything else a
/// duration (`10`, `10s`, `2m`).
pub fn parse_seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => parse_duration(s),
    }
}

/// A duration that must not be zero (how often something runs).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

/// A duration as people read it: `250ms`, `1.5s`, `30s`, `2m30s`, `1h`.
pub fn display(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 10_000 && ms % 1_000 >= 100 {
        // Tenths of a second, rounded down: a 1.99 s timeout is not "2s".
        return format!("{}.{}s", ms / 1_000, ms % 1_000 / 100);
    }
    let secs = d.as_secs();
    let parts = [
        (secs / 86_400, 'd'),
        (secs % 86_400 / 3_600, 'h'),
        (secs % 3_600 / 60, 'm'),
        (secs % 60, 's'),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_duration("0s").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("0").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5_400);
        assert_eq!(parse_duration("2d1h1m1s").unwrap().as_secs(), 176_461);
        for bad in [
            "90", "5", "5x", "m", "", "5m1h", "1m1m", "1h 30m", "-5s", "1.5h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("a unit is required"), "{bad}: {e}");
        }
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration(&format!("{}d", u64::MAX / 1000)).is_err());
    }

    #[test]
    fn seconds_flags_take_a_bare_number_or_a_duration() {
        assert_eq!(parse_seconds_or_duration("10").unwrap().as_secs(), 10);
        assert_eq!(parse_seconds_or_duration("10s").unwrap().as_secs(), 10);
        assert_eq!(parse_seconds_or_duration("2m").unwrap().as_secs(), 120);
        assert!(parse_seconds_or_duration("2x").is_err());
    }

    #[test]
    fn durations_display_as_written() {
        assert_eq!(display(Duration::from_millis(250)), "250ms");
        assert_eq!(display(Duration::from_millis(1_999)), "1.9s");
        assert_eq!(display(Duration::from_millis(1_050)), "1s");
        assert_eq!(display(Duration::from_micros(30_000_512)), "30s");
        assert_eq!(display(Duration::from_secs(150)), "2m30s");
        assert_eq!(display(Duration::from_secs(3_600)), "1h");
        assert_eq!(display(Duration::from_secs(90_061)), "1d1h1m1s");
        // What it prints, the flags take back.
        assert_eq!(
            parse_duration(&display(Duration::from_secs(150)))
                .unwrap()
                .as_secs(),
            150
        );
    }

    #[test]
    fn intervals_are_longer_than_zero() {
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("0").is_err());
        assert_eq!(parse_positive_duration("1s").unwrap().as_secs(), 1);
    }
}
