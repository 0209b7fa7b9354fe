//! What the driver reads from RouterOS, built from parsed `print detail` entries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::parse::{parse_human_size, parse_key_colon_value, parse_separated_bytes, Entry};

/// A `/disk` entry. Slots and paths are kept as printed: the RDS also holds disks the driver did
/// not make, whose names need not follow the driver's grammar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disk {
    pub slot: String,
    pub disk_type: String,
    pub flags: String,
    pub file_path: Option<String>,
    /// Exact bytes from `size=`, else from the human `file-size=`.
    pub size_bytes: Option<u64>,
    /// How far the true size may be from `size_bytes` (0 when read from `size=`).
    pub size_precision: u64,
    pub nvme_export: bool,
    pub nvme_port: Option<u16>,
    pub nqn: Option<String>,
    /// `nvme-tcp-server-allow-host-name`: the host NQN(s) allowed to connect; None: any host.
    pub allowed_host: Option<String>,
    pub mount_point: Option<String>,
    pub free_bytes: Option<u64>,
    /// `model=`, which RouterOS sets to the backing path of a file disk: quoted, so a second,
    /// independent reading of the path.
    pub model: Option<String>,
}

impl Disk {
    pub fn from_entry(entry: &Entry) -> Option<Self> {
        let slot = entry.get("slot")?.to_string();
        let bytes = |key| entry.get(key).and_then(parse_separated_bytes);
        let non_empty = |key| entry.get(key).filter(|v| !v.is_empty()).map(str::to_string);
        Some(Self {
            slot,
            disk_type: entry.get("type").unwrap_or_default().to_string(),
            flags: entry.flags.clone(),
            file_path: non_empty("file-path").map(absolute),
            size_bytes: bytes("size").or_else(|| entry.get("file-size").and_then(parse_human_size)),
            size_precision: match (bytes("size"), entry.get("file-size")) {
                (None, Some(human)) => human_size_precision(human),
                _ => 0,
            },
            nvme_export: entry.get("nvme-tcp-export") == Some("yes"),
            nvme_port: entry
                .get("nvme-tcp-server-port")
                .and_then(|p| p.trim().parse().ok()),
            nqn: non_empty("nvme-tcp-server-nqn"),
            allowed_host: non_empty("nvme-tcp-server-allow-host-name"),
            mount_point: non_empty("mount-point"),
            free_bytes: bytes("free"),
            model: non_empty("model"),
        })
    }

    /// Why this entry cannot be trusted, if it cannot: a file disk whose `model=` is a path that
    /// differs from its `file-path=` was misread.
    pub fn inconsistency(&self) -> Option<String> {
        let model = self.model.as_deref().filter(|m| m.starts_with('/'))?;
        match self.file_path.as_deref() {
            Some(path) if self.is_file_disk() && path != model => Some(format!(
                "disk {}: file-path {path} and model {model} disagree",
                self.slot
            )),
            _ => None,
        }
    }

    pub fn is_file_disk(&self) -> bool {
        self.disk_type == "file"
    }
}

/// A `/file` entry; `path` is absolute (RouterOS prints file names without the leading slash).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileInfo {
    pub path: String,
    pub file_type: String,
    pub size_bytes: Option<u64>,
    /// How far the true size may be from `size_bytes`: RouterOS prints file sizes in a human form
    /// with one decimal (`10.0GiB` is anything within 0.05 GiB of it).
    pub size_precision: u64,
    /// As printed, in the RDS's local time (`2025-11-11 16:47:07`).
    pub last_modified: Option<String>,
}

impl FileInfo {
    pub fn from_entry(entry: &Entry) -> Option<Self> {
        let name = entry.get("name").filter(|n| !n.is_empty())?;
        let size = entry.get("size");
        let exact = size.and_then(parse_separated_bytes);
        Some(Self {
            path: absolute(name.to_string()),
            file_type: entry.get("type").unwrap_or_default().to_string(),
            size_bytes: exact.or_else(|| size.and_then(parse_human_size)),
            size_precision: match (exact, size) {
                (None, Some(s)) => human_size_precision(s),
                _ => 0,
            },
            last_modified: entry
                .get("last-modified")
                .or_else(|| entry.get("creation-time"))
                .map(str::to_string),
        })
    }

    pub fn is_directory(&self) -> bool {
        self.file_type == "directory"
    }
}

/// Half a unit of the last printed digit of a human size (`10.0GiB`: 0.05 GiB).
fn human_size_precision(s: &str) -> u64 {
    let s = s.trim();
    let num_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let decimals = s[..num_len]
        .split_once('.')
        .map_or(0, |(_, d)| d.len() as u32);
    let unit = parse_human_size(&format!("1{}", &s[num_len..])).unwrap_or(1);
    unit / 10u64.saturating_pow(decimals) / 2
}

/// `2025-11-11 16:47:07` as seconds of a wall clock (as if it were UTC). RouterOS prints times in
/// its own zone: [`RdsClock`] says which.
pub fn wall_clock_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The RDS's clock as `/system clock print` shows it: its own time and its offset from UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdsClock {
    /// Seconds east of UTC (`gmt-offset: -08:00` is -28800).
    pub offset_seconds: i64,
    /// The RDS's wall-clock time when read, as [`wall_clock_seconds`].
    pub now_wall: i64,
}

impl RdsClock {
    pub fn parse(output: &str) -> Result<Self, String> {
        let kv = parse_key_colon_value(output);
        let get = |key: &str| {
            kv.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.trim())
                .ok_or_else(|| format!("`/system clock print` shows no `{key}`"))
        };
        let offset = get("gmt-offset")?;
        let offset_seconds = parse_offset(offset)
            .ok_or_else(|| format!("`gmt-offset: {offset}` is not an offset"))?;
        let (date, time) = (get("date")?, get("time")?);
        let now_wall = wall_clock_seconds(&format!("{date} {time}"))
            .ok_or_else(|| format!("`{date} {time}` is not a RouterOS date and time"))?;
        Ok(Self {
            offset_seconds,
            now_wall,
        })
    }

    /// The clock as it reads `elapsed` after it was read.
    pub fn advanced(self, elapsed: Duration) -> Self {
        Self {
            now_wall: self.now_wall + elapsed.as_secs() as i64,
            ..self
        }
    }

    /// A time the RDS printed, as a real (UTC) time.
    pub fn to_utc(&self, printed: &str) -> Option<SystemTime> {
        let utc = wall_clock_seconds(printed)? - self.offset_seconds;
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(utc).ok()?))
    }

    /// How long ago the RDS's own clock says `printed` was.
    pub fn age(&self, printed: &str) -> Option<Duration> {
        let then = wall_clock_seconds(printed)?;
        u64::try_from(self.now_wall - then)
            .ok()
            .map(Duration::from_secs)
    }
}

/// `+13:00`, `-08:00`, `+05:45`, `+0000`.
fn parse_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => (1, s),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

fn absolute(path: String) -> String {
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

/// Size and free space of the pool disk that holds the volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Counters from `/disk monitor-traffic <slot> once`. Rates are in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Traffic {
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops_per_second: u64,
    pub write_ops_per_second: u64,
    pub read_rate_bytes: f64,
    pub write_rate_bytes: f64,
    pub in_flight_ops: u64,
    pub read_time_ms: u64,
    pub write_time_ms: u64,
    pub wait_time_ms: u64,
    pub active_time_ms: u64,
}

impl Traffic {
    /// Fails rather than reporting zeros when a counter is missing or unreadable.
    pub fn parse(output: &str) -> Result<Self, String> {
        let kv = parse_key_colon_value(output);
        let get = |key: &str| {
            kv.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| format!("monitor-traffic output has no `{key}`"))
        };
        let count = |key: &str| {
            let v = get(key)?;
            parse_separated_bytes(v).ok_or_else(|| format!("`{key}: {v}` is not a count"))
        };
        let millis = |key: &str| {
            let v = get(key)?;
            v.strip_suffix("ms")
                .and_then(parse_separated_bytes)
                .ok_or_else(|| format!("`{key}: {v}` is not a time in ms"))
        };
        let rate = |key: &str| {
            let v = get(key)?;
            parse_rate(v).ok_or_else(|| format!("`{key}: {v}` is not a rate"))
        };
        Ok(Self {
            read_ops: count("read-ops")?,
            write_ops: count("write-ops")?,
            read_bytes: count("read-bytes")?,
            write_bytes: count("write-bytes")?,
            read_ops_per_second: count("read-ops-per-second")?,
            write_ops_per_second: count("write-ops-per-second")?,
            read_rate_bytes: rate("read-rate")?,
            write_rate_bytes: rate("write-rate")?,
            in_flight_ops: count("in-flight-ops")?,
            read_time_ms: millis("read-time")?,
            write_time_ms: millis("write-time")?,
            wait_time_ms: millis("wait-time")?,
            active_time_ms: millis("active-time")?,
        })
    }
}

/// `12.8Mbps` → bytes per second; units in any case.
fn parse_rate(s: &str) -> Option<f64> {
    let s = s.trim();
    let num_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b' ')
        .count();
    let number: f64 = s[..num_len].replace(' ', "").parse().ok()?;
    let bits_per_unit = match s[num_len..].to_ascii_lowercase().as_str() {
        "bps" => 1.0,
        "kbps" => 1e3,
        "mbps" => 1e6,
        "gbps" => 1e9,
        "tbps" => 1e12,
        _ => return None,
    };
    Some(number * bits_per_unit / 8.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rds::parse::parse_detail;

    #[test]
    fn disk_prefers_exact_size() {
        let e = &parse_detail(
            " 0   t type=file slot=\"pvc-1\" size=53 687 091 201 file-path=storage/x.img \
             file-size=50.0GiB nvme-tcp-export=yes nvme-tcp-server-port=4420 \
             nvme-tcp-server-nqn=\"nqn.2000-02.com.mikrotik:pvc-1\"\r\n",
        )
        .unwrap()[0];
        let d = Disk::from_entry(e).unwrap();
        assert_eq!(d.size_bytes, Some(53_687_091_201));
        assert_eq!(d.file_path.as_deref(), Some("/storage/x.img"));
        assert!(d.nvme_export && d.is_file_disk());
        assert_eq!(d.nvme_port, Some(4420));
        assert_eq!(d.nqn.as_deref(), Some("nqn.2000-02.com.mikrotik:pvc-1"));
        let e = &parse_detail(" 0  type=file slot=\"s\" file-size=1024.0MiB\r\n").unwrap()[0];
        assert_eq!(Disk::from_entry(e).unwrap().size_bytes, Some(1 << 30));
    }

    #[test]
    fn clock_offsets_and_ages() {
        let west = RdsClock::parse(
            "                  time: 08:47:07\r\n                  date: 2025-11-11\r\n\
                     gmt-offset: -08:00\r\n",
        )
        .unwrap();
        assert_eq!(west.offset_seconds, -8 * 3600);
        // 08:47:07 at UTC-8 is 16:47:07 UTC.
        assert_eq!(
            west.to_utc("2025-11-11 08:47:07"),
            Some(UNIX_EPOCH + Duration::from_secs(1_762_879_627))
        );
        assert_eq!(
            west.age("2025-11-11 07:47:07"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(west.age("2025-11-11 09:47:07"), None, "in the RDS's future");
        assert_eq!(parse_offset("+13:00"), Some(13 * 3600));
        assert_eq!(parse_offset("+05:45"), Some(5 * 3600 + 45 * 60));
        assert_eq!(parse_offset("13"), None);
        assert!(RdsClock::parse("time: 1\r\n").is_err());
    }

    #[test]
    fn human_sizes_carry_their_precision() {
        assert_eq!(human_size_precision("10.0GiB"), (1 << 30) / 20);
        assert_eq!(human_size_precision("1024.0MiB"), (1 << 20) / 20);
        assert_eq!(human_size_precision("512"), 0);
    }

    #[test]
    fn traffic_counts_keep_thousands_and_units() {
        let t = Traffic::parse(
            "read-ops: 1 500\nwrite-ops: 2\nread-bytes: 0\nwrite-bytes: 515 659 673 600\n\
             read-ops-per-second: 0\nwrite-ops-per-second: 1 076\nread-rate: 0bps\n\
             write-rate: 12.8MBPS\nin-flight-ops: 0\nread-time: 1 000ms\nwrite-time: 0ms\n\
             wait-time: 0ms\nactive-time: 0ms\n",
        )
        .unwrap();
        assert_eq!(t.read_ops, 1500);
        assert_eq!(t.write_ops_per_second, 1076);
        assert_eq!(t.write_bytes, 515_659_673_600);
        assert_eq!(t.write_rate_bytes, 1_600_000.0);
        assert_eq!(t.read_time_ms, 1000);
        assert!(Traffic::parse("read-ops: x\n").is_err());
    }
}
