//! The simulated RDS contents (file disks and files) and their persistence: a JSON file written
//! atomically, and optional real sparse backing files under a data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A `type=file` disk. Volumes and snapshots are both disks; a snapshot is a disk made with
/// `copy-from` and no NVMe/TCP export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub slot: String,
    /// Absolute, with the leading `/`, e.g. `/storage-pool/metal-csi/pvc-1.img`.
    pub file_path: String,
    pub file_size: u64,
    pub nvme_tcp_export: bool,
    pub nvme_tcp_server_port: Option<u16>,
    pub nvme_tcp_server_nqn: Option<String>,
    /// `nvme-tcp-server-allow-host-name`: host NQNs (comma-separated) that may connect; empty:
    /// any host.
    #[serde(default)]
    pub nvme_tcp_server_allow_host_name: String,
    /// The source slot when made by `copy-from`. RouterOS does not show this; it is for tests.
    pub copied_from: Option<String>,
    /// Creation order; RouterOS prints items in this order.
    pub id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Directory,
}

/// A `/file` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Absolute, with the leading `/`. RouterOS prints it without the slash (see [`FileEntry::name`]).
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Unix seconds.
    pub last_modified: u64,
    pub id: u64,
}

impl FileEntry {
    /// The RouterOS `/file` name: the path without its leading slash.
    pub fn name(&self) -> &str {
        self.path.trim_start_matches('/')
    }

    /// The RouterOS `type`: `directory`, `.img file` for `x.img`, `file` without an extension.
    pub fn type_name(&self) -> String {
        match self.kind {
            FileKind::Directory => "directory".into(),
            FileKind::File => {
                let base = self.path.rsplit('/').next().unwrap_or("");
                match base.rsplit_once('.') {
                    Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => {
                        format!(".{ext} file")
                    }
                    _ => "file".into(),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub next_id: u64,
    pub disks: Vec<Disk>,
    pub files: Vec<FileEntry>,
}

impl State {
    pub fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn disk(&self, slot: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.slot == slot)
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    pub fn file_mut(&mut self, path: &str) -> Option<&mut FileEntry> {
        self.files.iter_mut().find(|f| f.path == path)
    }

    /// Bytes used under `/<mount_point>/`: the sum of file sizes (sparse files count in full, which
    /// is what the driver's capacity accounting wants).
    pub fn used(&self, mount_point: &str) -> u64 {
        let prefix = format!("/{mount_point}/");
        self.files
            .iter()
            .filter(|f| f.kind == FileKind::File && f.path.starts_with(&prefix))
            .fold(0u64, |acc, f| acc.saturating_add(f.size))
    }

    /// Adds or replaces the file entry at `path` and creates its missing parent directories below
    /// the mount point (RouterOS lists them in `/file print`).
    pub fn put_file(&mut self, path: &str, size: u64, now: u64) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.put_directories(&parts[..parts.len().saturating_sub(1)], now, true);
        match self.file_mut(path) {
            Some(f) => {
                f.size = size;
                f.last_modified = now;
            }
            None => {
                let id = self.take_id();
                self.files.push(FileEntry {
                    path: path.to_string(),
                    kind: FileKind::File,
                    size,
                    last_modified: now,
                    id,
                });
            }
        }
    }

    /// Adds a directory entry (and its missing parents below the mount point).
    pub fn put_dir(&mut self, path: &str, now: u64) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.put_directories(&parts, now, false);
    }

    /// Makes the directories `/<parts[0]>/<parts[1]>`, ... down to all of `parts`, below the
    /// mount point (the first part); existing ones get `now` as their time when `touch`.
    fn put_directories(&mut self, parts: &[&str], now: u64, touch: bool) {
        for depth in 2..=parts.len() {
            let dir = format!("/{}", parts[..depth].join("/"));
            match self.file_mut(&dir) {
                Some(d) if touch => d.last_modified = now,
                Some(_) => {}
                None => {
                    let id = self.take_id();
                    self.files.push(FileEntry {
                        path: dir,
                        kind: FileKind::Directory,
                        size: 0,
                        last_modified: now,
                        id,
                    });
                }
            }
        }
    }

    /// Whether the directory holding `path` exists: the mount point itself, or a directory entry.
    pub fn parent_exists(&self, path: &str) -> bool {
        let Some((dir, _)) = path.rsplit_once('/') else {
            return false;
        };
        dir.matches('/').count() <= 1
            || self
                .file(dir)
                .is_some_and(|f| f.kind == FileKind::Directory)
    }

    /// Removes `path` and, for a directory, everything below it. Returns the removed entries.
    pub fn remove_file(&mut self, path: &str) -> Vec<FileEntry> {
        let below = format!("{path}/");
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|f| f.path == path || f.path.starts_with(&below));
        self.files = kept;
        gone
    }
}

/// Checks a `file-path` (or `/file` name with the slash added) so it is safe to map under the data
/// directory: absolute, no empty, `.` or `..` components, and a conservative character set.
pub fn valid_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && rest.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+:@,".contains(&b))
        })
}

/// Loads the state file; a missing file is an empty state.
pub fn load(path: &Path) -> anyhow::Result<State> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing state file {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
    }
}

/// Writes the state so a crash leaves either the old or the new file: temp file, fsync, rename,
/// fsync of the directory.
pub fn save(path: &Path, state: &State) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Real backing files for disks, under `--data-dir`.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    /// `file_path` must have passed [`valid_path`], so the join cannot escape `root`.
    pub fn host_path(&self, file_path: &str) -> PathBuf {
        self.root.join(file_path.trim_start_matches('/'))
    }

    /// Creates (or truncates) a sparse file of `size` bytes.
    pub fn create(&self, file_path: &str, size: u64) -> io::Result<()> {
        let p = self.host_path(file_path);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir)?;
        }
        let f = File::create(&p)?;
        f.set_len(size)
    }

    /// Grows (or creates) the file to `size` bytes; never shrinks.
    pub fn grow(&self, file_path: &str, size: u64) -> io::Result<()> {
        let p = self.host_path(file_path);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)?;
        if f.metadata()?.len() < size {
            f.set_len(size)?;
        }
        Ok(())
    }

    /// Copies the bytes of `src` into a new `dst` of `size` bytes. Only the data extents of a
    /// sparse source are read (SEEK_DATA/SEEK_HOLE), and all-zero blocks are not written, so a
    /// copy of a mostly empty 10 GiB image is instant and stays sparse. A missing source gives an
    /// all-zero copy.
    pub fn copy(&self, src: &str, dst: &str, size: u64) -> io::Result<()> {
        self.create(dst, size)?;
        let mut input = match File::open(self.host_path(src)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut output = OpenOptions::new().write(true).open(self.host_path(dst))?;
        let end = input.metadata()?.len().min(size);
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        while pos < end {
            let (start, stop) = match data_extent(&input, pos) {
                Some((s, e)) => (s, e.min(end)),
                None => break,
            };
            let mut off = start;
            input.seek(SeekFrom::Start(off))?;
            while off < stop {
                let want = buf.len().min((stop - off) as usize);
                let n = input.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                if buf[..n].iter().any(|&b| b != 0) {
                    output.seek(SeekFrom::Start(off))?;
                    output.write_all(&buf[..n])?;
                }
                off += n as u64;
            }
            pos = stop.max(pos + 1);
        }
        output.sync_all()
    }

    /// Cuts the file to `size` bytes (an interrupted copy).
    pub fn truncate(&self, file_path: &str, size: u64) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.host_path(file_path))?
            .set_len(size)
    }

    /// Creates a directory (and its parents).
    pub fn create_dir(&self, dir_path: &str) -> io::Result<()> {
        fs::create_dir_all(self.host_path(dir_path))
    }

    pub fn remove(&self, file_path: &str) -> io::Result<()> {
        let p = self.host_path(file_path);
        let res = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        match res {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The next data extent at or after `pos`, as `(start, end)`; `None` when only a hole remains.
/// Filesystems without SEEK_DATA support report the whole rest of the file as data.
fn data_extent(f: &File, pos: u64) -> Option<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let len = f.metadata().ok()?.len();
    let start = match lseek(f, pos as i64, Whence::SeekData) {
        Ok(s) => s as u64,
        Err(nix::errno::Errno::ENXIO) => return None,
        Err(_) => return (pos < len).then_some((pos, len)),
    };
    let end = lseek(f, start as i64, Whence::SeekHole).map_or(len, |e| e as u64);
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated() {
        assert!(valid_path("/storage-pool/metal-csi/pvc-1.img"));
        assert!(!valid_path("storage-pool/x.img"));
        assert!(!valid_path("/storage-pool/../etc/passwd"));
        assert!(!valid_path("/storage-pool//x"));
        assert!(!valid_path("/storage-pool/a b"));
        assert!(!valid_path("/"));
    }

    #[test]
    fn put_file_creates_parent_directories_below_the_mount_point() {
        let mut s = State::default();
        s.put_file("/storage-pool/a/b/x.img", 10, 5);
        let names: Vec<&str> = s.files.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            vec![
                "storage-pool/a",
                "storage-pool/a/b",
                "storage-pool/a/b/x.img"
            ]
        );
        assert_eq!(s.used("storage-pool"), 10);
        assert_eq!(s.files[2].type_name(), ".img file");
        assert_eq!(s.files[0].type_name(), "directory");
        let gone = s.remove_file("/storage-pool/a/b");
        assert_eq!(gone.len(), 2);
        assert_eq!(s.used("storage-pool"), 0);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        assert_eq!(load(&p).unwrap(), State::default());
        let mut s = State::default();
        s.put_file("/storage-pool/x.img", 1, 2);
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), s);
    }

    #[test]
    fn data_dir_copy_keeps_bytes_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir {
            root: dir.path().to_path_buf(),
        };
        d.create("/p/a.img", 4 << 20).unwrap();
        {
            let mut f = OpenOptions::new()
                .write(true)
                .open(d.host_path("/p/a.img"))
                .unwrap();
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            f.write_all(b"hello").unwrap();
        }
        d.copy("/p/a.img", "/p/b.img", 8 << 20).unwrap();
        // A big sparse source gives a sparse copy (only data extents are read and written).
        d.create("/p/big.img", 16 << 30).unwrap();
        d.copy("/p/big.img", "/p/big2.img", 16 << 30).unwrap();
        let meta = fs::metadata(d.host_path("/p/big2.img")).unwrap();
        assert_eq!(meta.len(), 16 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 1 << 20, "copy is not sparse");
        let bytes = fs::read(d.host_path("/p/b.img")).unwrap();
        assert_eq!(bytes.len(), 8 << 20);
        assert_eq!(&bytes[3 << 20..(3 << 20) + 5], b"hello");
        d.grow("/p/b.img", 9 << 20).unwrap();
        assert_eq!(
            fs::metadata(d.host_path("/p/b.img")).unwrap().len(),
            9 << 20
        );
    }
}
