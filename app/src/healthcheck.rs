//! `app healthcheck`: a container health check that needs no shell or curl. It sends one
//! `GET /auth/login` to the app's own listener and reports whether an HTTP response came back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::listen::ListenAddr;

use thiserror::Error;

/// Why the app is not healthy.
#[derive(Debug, Error)]
pub enum HealthError {
    /// Nothing accepted the connection in time.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: ListenAddr,
        source: std::io::Error,
    },
    /// The connection was accepted but the exchange failed.
    #[error("no HTTP response from {addr}: {source}")]
    Exchange {
        addr: ListenAddr,
        source: std::io::Error,
    },
    /// Something answered, but not with an HTTP status line, or with a server error.
    #[error("unhealthy answer from {addr}: {status_line:?}")]
    BadStatus {
        addr: ListenAddr,
        status_line: String,
    },
}

/// Checks the app at `addr` (an unspecified IP such as `0.0.0.0` means this host's loopback) and
/// returns the HTTP status it answered with. Any status below 500 counts as healthy.
/// A socket (`unix:/path`) is connected to directly.
pub fn check(addr: &ListenAddr, timeout: Duration) -> Result<u16, HealthError> {
    let addr = match addr {
        ListenAddr::Tcp(tcp) => ListenAddr::Tcp(loopback_for_unspecified(*tcp)),
        ListenAddr::Unix(_) => addr.clone(),
    };
    let connected = match &addr {
        ListenAddr::Tcp(tcp) => TcpStream::connect_timeout(tcp, timeout).map(Conn::Tcp),
        ListenAddr::Unix(path) => UnixStream::connect(path).map(Conn::Unix),
    };
    let mut stream = connected.map_err(|source| HealthError::Connect {
        addr: addr.clone(),
        source,
    })?;
    let exchange = |stream: &mut Conn| -> std::io::Result<String> {
        stream.set_timeouts(timeout)?;
        stream.write_all(
            b"GET /auth/login HTTP/1.1\r\nHost: localhost\r\nUser-Agent: app-healthcheck\r\nConnection: close\r\n\r\n",
        )?;
        // The status line is all we need; it arrives in the first segment.
        let mut head = [0u8; 64];
        let n = stream.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    };
    let status_line = exchange(&mut stream).map_err(|source| HealthError::Exchange {
        addr: addr.clone(),
        source,
    })?;
    match status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
    {
        Some(status) if status < 500 => Ok(status),
        _ => Err(HealthError::BadStatus { addr, status_line }),
    }
}

/// A connection to the app, over TCP or its socket.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// A listener bound to `0.0.0.0`/`::` is reached through loopback.
fn loopback_for_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_become_loopback() {
        assert_eq!(
            loopback_for_unspecified("0.0.0.0:8000".parse().unwrap()),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(
            loopback_for_unspecified("[::]:8000".parse().unwrap()),
            "[::1]:8000".parse().unwrap()
        );
        assert_eq!(
            loopback_for_unspecified("127.0.0.2:1".parse().unwrap()),
            "127.0.0.2:1".parse().unwrap()
        );
    }

    #[test]
    fn a_closed_port_is_unhealthy() {
        // Bind then drop: the port is free and nothing listens on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = check(&ListenAddr::Tcp(addr), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, HealthError::Connect { .. }), "{err}");
        let missing = std::env::temp_dir().join(format!("app-health-{}.sock", std::process::id()));
        let err = check(&ListenAddr::Unix(missing), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, HealthError::Connect { .. }), "{err}");
    }

    #[test]
    fn a_non_http_answer_is_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf);
            conn.write_all(b"SSH-2.0-OpenSSH\r\n").unwrap();
        });
        let err = check(&ListenAddr::Tcp(addr), Duration::from_secs(2)).unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, HealthError::BadStatus { .. }), "{err}");
    }
}
