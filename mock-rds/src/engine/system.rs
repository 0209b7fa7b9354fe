//! `/disk monitor-traffic` and the `/system` menu: canned or clock-derived answers.

use super::*;

impl Engine {
    pub(super) fn monitor_traffic(&self, inv: &Invocation) -> Result<String, CliError> {
        no_named(inv)?;
        let mut once = false;
        let mut target = None;
        for p in &inv.positional {
            match &p.value {
                Value::Text(w) if p.word && w == "once" => once = true,
                v if target.is_none() => target = Some(v),
                _ => return Err(CliError::ExpectedEnd { col: p.col }),
            }
        }
        let target = target.ok_or_else(|| failure("no item specified"))?;
        let slot = {
            let st = lock(&self.state);
            self.select_disks(&st, target)?
                .into_iter()
                .next()
                .ok_or_else(|| failure("no such item"))?
        };
        if !once {
            return Err(failure(
                "monitor-traffic streams until interrupted; add \"once\"",
            ));
        }
        let pairs: Vec<(&str, String)> = vec![
            ("slot", slot),
            ("read-ops", "243 401".into()),
            ("read-ops-per-second", "0".into()),
            ("read-bytes", "33 131 503 616".into()),
            ("read-rate", "0bps".into()),
            ("read-merges", "0".into()),
            ("read-time", "0ms".into()),
            ("write-ops", "17 667 231".into()),
            ("write-ops-per-second", "76".into()),
            ("write-bytes", "515 659 673 600".into()),
            ("write-rate", "12.8Mbps".into()),
            ("write-merges", "0".into()),
            ("write-time", "0ms".into()),
            ("in-flight-ops", "0".into()),
            ("active-time", "0ms".into()),
            ("wait-time", "0ms".into()),
            ("discard-ops", "0".into()),
            ("discard-bytes", "0".into()),
            ("discard-merges", "0".into()),
            ("discard-time", "0ms".into()),
            ("flush-ops", "0".into()),
            ("flush-time", "0ms".into()),
        ];
        Ok(self.mode().lines(&format::key_values(&pairs, 22, 15)))
    }

    pub(super) fn identity(&self, inv: &Invocation) -> Result<String, CliError> {
        no_args(inv)?;
        Ok(self.mode().lines(&format!("  name: {}", self.cfg.identity)))
    }

    /// `/system clock print` as RouterOS 7 shows it, in the profile's time zone.
    pub(super) fn clock(&self, inv: &Invocation) -> Result<String, CliError> {
        no_args(inv)?;
        let (offset, zone) = self.profile().clock();
        let local = format::timestamp(self.local(self.now()));
        let (date, time) = local.split_once(' ').unwrap_or_default();
        let sign = if offset < 0 { '-' } else { '+' };
        let pairs = [
            ("time", time.to_string()),
            ("date", date.to_string()),
            ("time-zone-autodetect", "no".to_string()),
            ("time-zone-name", zone.to_string()),
            (
                "gmt-offset",
                format!(
                    "{sign}{:02}:{:02}",
                    offset.abs() / 3600,
                    offset.abs() / 60 % 60
                ),
            ),
            ("dst-active", "no".to_string()),
        ];
        Ok(self.mode().lines(&format::key_values(&pairs, 20, 0)))
    }

    pub(super) fn resource(&self, inv: &Invocation) -> Result<String, CliError> {
        no_args(inv)?;
        let up = self.started.elapsed().as_secs();
        let uptime = {
            let (d, h, m, s) = (up / 86_400, up / 3600 % 24, up / 60 % 60, up % 60);
            let mut t = String::new();
            if d > 0 {
                t.push_str(&format!("{d}d"));
            }
            if d > 0 || h > 0 {
                t.push_str(&format!("{h}h"));
            }
            if d > 0 || h > 0 || m > 0 {
                t.push_str(&format!("{m}m"));
            }
            t.push_str(&format!("{s}s"));
            t
        };
        let pairs = [
            ("uptime", uptime),
            ("version", "7.16 (stable)".into()),
            ("build-time", "2024-09-20 13:00:27".into()),
            ("factory-software", "7.16".into()),
            ("free-memory", "28.1GiB".into()),
            ("total-memory", "32.0GiB".into()),
            ("cpu", "ARM64".into()),
            ("cpu-count", "16".into()),
            ("cpu-frequency", "2000MHz".into()),
            ("cpu-load", "1%".into()),
            ("free-hdd-space", "96.2MiB".into()),
            ("total-hdd-space", "128.0MiB".into()),
            ("architecture-name", "arm64".into()),
            ("board-name", "RDS2216".into()),
            ("platform", "MikroTik".into()),
        ];
        let text: String = pairs
            .iter()
            .map(|(k, v)| format!("{k:>25}: {v}\n"))
            .collect();
        Ok(self.mode().lines(&text))
    }
}
