//! The CSI endpoint: a Unix domain socket that kubelet and the sidecars dial.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::UnixListener;

#[derive(Debug, Error)]
pub enum EndpointError {
    #[error("--endpoint `{0}`: only unix:// endpoints (or a plain socket path) are supported")]
    UnsupportedScheme(String),
    #[error("--endpoint `{0}`: the socket path is empty or not absolute")]
    BadPath(String),
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    #[error("{0} is in use by a live process (another rds-csi?); refusing to start")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Extracts the socket path from `unix:///abs/path`, `unix:/abs/path` or `/abs/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("unix:") {
        rest
    } else if endpoint.contains("://") {
        return Err(EndpointError::UnsupportedScheme(endpoint.to_string()));
    } else {
        endpoint
    };
    if path.is_empty() || !path.starts_with('/') {
        return Err(EndpointError::BadPath(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket, first removing a stale one left by a crashed process. A socket that still
/// accepts connections belongs to a live process, so it is left alone and the start fails.
pub async fn bind(path: &Path) -> Result<UnixListener, EndpointError> {
    let io_err = |source| EndpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(EndpointError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match tokio::net::UnixStream::connect(path).await {
            Ok(_) => return Err(EndpointError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            // A typo in --endpoint should show: a directory appearing silently hides it.
            tracing::info!(dir = %parent.display(), "creating the socket's directory");
        }
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    // Only root (kubelet, the sidecars) and the group may talk to the driver.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_forms() {
        assert_eq!(
            socket_path("unix:///a/b.sock").unwrap(),
            Path::new("/a/b.sock")
        );
        assert_eq!(
            socket_path("unix:/a/b.sock").unwrap(),
            Path::new("/a/b.sock")
        );
        assert_eq!(socket_path("/a/b.sock").unwrap(), Path::new("/a/b.sock"));
        assert!(matches!(
            socket_path("tcp://127.0.0.1:10000"),
            Err(EndpointError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            socket_path("unix://"),
            Err(EndpointError::BadPath(_))
        ));
        assert!(matches!(
            socket_path("rel/csi.sock"),
            Err(EndpointError::BadPath(_))
        ));
    }

    #[tokio::test]
    async fn replaces_stale_socket_but_not_live_one_or_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");

        // A socket whose listener is gone is stale.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&path).await.expect("stale socket is replaced");

        assert!(matches!(bind(&path).await, Err(EndpointError::InUse(_))));
        drop(live);

        let file = dir.path().join("file");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(
            bind(&file).await,
            Err(EndpointError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }
}
