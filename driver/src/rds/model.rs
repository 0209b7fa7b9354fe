//! What the driver reads from RouterOS, built from parsed `print detail` entries.

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
    pub nvme_export: bool,
    pub nvme_port: Option<u16>,
    pub nqn: Option<String>,
    pub mount_point: Option<String>,
    pub free_bytes: Option<u64>,
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
            nvme_export: entry.get("nvme-tcp-export") == Some("yes"),
            nvme_port: entry
                .get("nvme-tcp-server-port")
                .and_then(|p| p.trim().parse().ok()),
            nqn: non_empty("nvme-tcp-server-nqn"),
            mount_point: non_empty("mount-point"),
            free_bytes: bytes("free"),
        })
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
    /// As printed, in the RDS's local time (`2025-11-11 16:47:07`).
    pub last_modified: Option<String>,
}

impl FileInfo {
    pub fn from_entry(entry: &Entry) -> Option<Self> {
        let name = entry.get("name").filter(|n| !n.is_empty())?;
        Some(Self {
            path: absolute(name.to_string()),
            file_type: entry.get("type").unwrap_or_default().to_string(),
            size_bytes: entry
                .get("size")
                .and_then(|s| parse_separated_bytes(s).or_else(|| parse_human_size(s))),
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
        )[0];
        let d = Disk::from_entry(e).unwrap();
        assert_eq!(d.size_bytes, Some(53_687_091_201));
        assert_eq!(d.file_path.as_deref(), Some("/storage/x.img"));
        assert!(d.nvme_export && d.is_file_disk());
        assert_eq!(d.nvme_port, Some(4420));
        assert_eq!(d.nqn.as_deref(), Some("nqn.2000-02.com.mikrotik:pvc-1"));
        let e = &parse_detail(" 0  type=file slot=\"s\" file-size=1024.0MiB\r\n")[0];
        assert_eq!(Disk::from_entry(e).unwrap().size_bytes, Some(1 << 30));
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
