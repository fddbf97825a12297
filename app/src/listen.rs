//! Where the app listens: a TCP address, or a UNIX socket on this host (a proxy beside the app
//! then forwards without a TCP hop). Owns the forms `--listen` accepts, binding (the socket's
//! mode, a stale socket file replaced), accepting, and removing the socket file when done.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// Default mode of the app's socket: owner and group may connect (put the proxy's user in the
/// app's group, or share a group id), others may not.
pub const DEFAULT_SOCKET_MODE: &str = "660";

/// The forms `--listen` / `APP_LISTEN` accepts, for error messages.
const LISTEN_FORMS: &str = "use IP:PORT (e.g. 127.0.0.1:8000) or unix:/absolute/path.sock";

/// An address to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// `unix:/path`: a UNIX stream socket at this absolute path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<ListenAddr, String> {
        if let Some(path) = value.strip_prefix("unix:") {
            if !path.starts_with('/') || path.starts_with("//") || path.ends_with('/') {
                return Err(format!(
                    "{value:?}: a socket is unix: followed by the absolute path of the socket \
                     file, e.g. unix:/run/app/app.sock"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        value
            .trim()
            .parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{value:?}: {LISTEN_FORMS}"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Parses a socket mode in octal (`660`, `0660`): permission bits only, and someone must be
/// allowed to write (connecting to a socket needs write permission).
pub fn parse_socket_mode(value: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(value.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{value:?}: use octal permission bits, e.g. 660 or 666"))?;
    if mode & 0o222 == 0 {
        return Err(format!(
            "{value:?}: nobody could connect (connecting needs write permission); e.g. 660"
        ));
    }
    Ok(mode)
}

/// Why the app could not listen (start-up fails with exit code 64).
#[derive(Debug, Error)]
pub enum BindError {
    #[error("--listen / APP_LISTEN: cannot bind {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "--listen / APP_LISTEN: {} exists and is not a socket; it is left alone: remove it or \
         choose another path", path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "--listen / APP_LISTEN: another process is listening on {}; stop it or choose another \
         path", path.display()
    )]
    InUse { path: PathBuf },
    #[error("--listen / APP_LISTEN: cannot create the socket {}: {source}", path.display())]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--socket-mode / APP_SOCKET_MODE: cannot set mode {mode:o} on {}: {source}",
        path.display()
    )]
    Mode {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tcp(listener)
    }
}

/// A connection's byte stream. Boxed: one allocation per connection (not per request), and the
/// server loop stays one code path for both kinds.
pub type Stream = Box<dyn Io>;

/// What hyper needs of a connection.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Who connected, for the connection's log span.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A local process (UNIX-socket peers have no address).
    Local,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Local => f.write_str("local"),
        }
    }
}

impl Listener {
    /// Binds `addr`. A socket is created with `mode`; a socket file already at the path is
    /// replaced when nothing listens on it (left by an app that did not exit cleanly), and
    /// anything else there is an error, never removed.
    pub async fn bind(addr: &ListenAddr, mode: u32) -> Result<Listener, BindError> {
        match addr {
            ListenAddr::Tcp(addr) => {
                TcpListener::bind(addr)
                    .await
                    .map(Listener::Tcp)
                    .map_err(|source| BindError::Tcp {
                        addr: *addr,
                        source,
                    })
            }
            ListenAddr::Unix(path) => bind_unix(path, mode).await,
        }
    }

    /// The address bound (for TCP, with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(_, file) => Ok(ListenAddr::Unix(file.path.clone())),
        }
    }

    /// The next connection.
    pub async fn accept(&self) -> std::io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((Box::new(stream), Peer::Tcp(peer)))
            }
            Listener::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                Ok((Box::new(stream), Peer::Local))
            }
        }
    }
}

async fn bind_unix(path: &Path, mode: u32) -> Result<Listener, BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| BindError::Unix {
                path: path.to_owned(),
                source,
            })?;
            tracing::info!(path = %path.display(), "removed a stale socket file");
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    let unix_error = |source| BindError::Unix {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(unix_error)?;
    let meta = std::fs::metadata(path).map_err(unix_error)?;
    // From here on the file is ours: dropping `file` removes it, also on the errors below.
    let file = SocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        BindError::Mode {
            path: path.to_owned(),
            mode,
            source,
        }
    })?;
    Ok(Listener::Unix(listener, file))
}

/// The socket file this app created; removed when dropped (the listener closes), unless another
/// file has taken its path since (a new instance of the app sharing the directory), which is
/// left alone.
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file created.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.id);
        if ours {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove the socket file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("app-listen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            "0.0.0.0:8000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:8000".parse().unwrap())
        );
        let socket: ListenAddr = "unix:/run/app/app.sock".parse().unwrap();
        assert_eq!(socket, ListenAddr::Unix("/run/app/app.sock".into()));
        assert_eq!(socket.to_string(), "unix:/run/app/app.sock");
        for bad in [
            "localhost",
            "unix:app.sock",
            "unix://run/app.sock",
            "unix:/run/",
            "unix:",
        ] {
            let err = bad.parse::<ListenAddr>().unwrap_err();
            assert!(err.contains("unix:/"), "{bad}: {err}");
        }
    }

    #[test]
    fn socket_modes() {
        assert_eq!(parse_socket_mode(DEFAULT_SOCKET_MODE), Ok(0o660));
        assert_eq!(parse_socket_mode("0666"), Ok(0o666));
        for bad in ["rw", "888", "1777", "444", ""] {
            assert!(parse_socket_mode(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_socket_gets_its_mode_and_is_removed_when_dropped() {
        let path = temp_dir("mode").join("app.sock");
        let listener = Listener::bind(&ListenAddr::Unix(path.clone()), 0o660)
            .await
            .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(
            listener.local_addr().unwrap(),
            ListenAddr::Unix(path.clone())
        );
        drop(listener);
        assert!(
            !path.exists(),
            "the socket file is removed with the listener"
        );
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let dir = temp_dir("stale");
        let path = dir.join("app.sock");
        let addr = ListenAddr::Unix(path.clone());
        // A socket file nobody listens on: what an app killed without cleaning up leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = Listener::bind(&addr, 0o600).await.unwrap();

        // A live socket is not taken over.
        let err = Listener::bind(&addr, 0o600).await.err().unwrap();
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        assert!(path.exists());
        drop(listener);

        // A regular file is never removed.
        std::fs::write(&path, "data").unwrap();
        let err = Listener::bind(&addr, 0o600).await.err().unwrap();
        assert!(matches!(err, BindError::NotASocket { .. }), "{err}");
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }

    #[tokio::test]
    async fn a_socket_that_replaced_ours_is_left_alone() {
        let path = temp_dir("replaced").join("app.sock");
        let listener = Listener::bind(&ListenAddr::Unix(path.clone()), 0o660)
            .await
            .unwrap();
        // Another instance took the path over (removed ours, bound its own).
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(listener);
        assert!(path.exists(), "the other instance's socket stays");
    }
}
