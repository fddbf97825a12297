//! Opening a connection to the upstream: resolving its name (or finding its UNIX socket),
//! connecting within the connect timeout, and setting up hyper's HTTP/1.1 client connection on it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use super::exchange::UpstreamConn;
use super::stream::UpstreamStream;
use crate::config::Upstream;
use crate::error::ConnectError;

/// A new connection to `upstream`, within `timeout` for resolving and connecting.
pub async fn connect(upstream: &Upstream, timeout: Duration) -> Result<UpstreamConn, ConnectError> {
    let stream = match upstream {
        Upstream::Tcp(authority) => {
            let tcp = tokio::time::timeout(timeout, connect_tcp(authority, timeout))
                .await
                .map_err(|_| ConnectError::Timeout(timeout))??;
            if let Err(e) = tcp.set_nodelay(true) {
                debug!(error = %e, "upstream TCP_NODELAY failed");
            }
            UpstreamStream::Tcp(tcp)
        }
        Upstream::Unix(path) => UpstreamStream::Unix(
            tokio::time::timeout(timeout, connect_unix(path))
                .await
                .map_err(|_| ConnectError::Timeout(timeout))??,
        ),
    };
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    Ok(UpstreamConn::new(sender, connection))
}

/// Resolves the authority (again for every new connection, so a replaced container behind the
/// same name is found) and connects to the first address that accepts. With several addresses,
/// each but the last gets an equal share of `timeout`, so one that drops packets (an IPv6 address
/// without a route) cannot use up the whole of it; the caller bounds the total.
async fn connect_tcp(authority: &Authority, timeout: Duration) -> Result<TcpStream, ConnectError> {
    // `[::1]` is bracketed in a URL, not for the resolver.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(ConnectError::Resolve)?
        .collect();
    let share = timeout / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
    let mut last = None;
    for (i, &addr) in addrs.iter().enumerate() {
        let attempt = TcpStream::connect(addr);
        let result = if i + 1 < addrs.len() {
            match tokio::time::timeout(share, attempt).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {share:?}; trying the next address"),
                )),
            }
        } else {
            attempt.await
        };
        match result {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(ConnectError::Connect(addr, e)),
        }
    }
    Err(last.unwrap_or(ConnectError::NoAddress))
}

/// Connects to the socket at `path`. A missing socket (the app not started, or the volume holding
/// it not shared) and a refused connect (nothing listening on a stale socket file) fail at once,
/// as a refused TCP connect does; a full listen backlog waits, within the caller's timeout.
async fn connect_unix(path: &Path) -> Result<UnixStream, ConnectError> {
    UnixStream::connect(path)
        .await
        .map_err(|e| ConnectError::Socket(path.to_path_buf(), e))
}
