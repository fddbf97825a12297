//! The upstream connection pool: HTTP/1.1 connections to the upstream, kept open between requests.
//!
//! A request takes the most recently used idle connection (last in, first out, which keeps the set
//! of warm connections small), and its response body hands the connection back when it ends. A
//! connection that is idle longer than `PROXY_UPSTREAM_IDLE_TIMEOUT` is closed (by a reaper task
//! that runs while the pool holds any), so it is never used just as the backend closes it.
//!
//! hyper-util's pooled client did this job with more machinery per request (a pool keyed by
//! scheme and authority, a spawned task per response to wait for the connection to be ready again,
//! a channel per checkout); this pool measured 13 % fewer instructions per proxied request
//! ("Benchmarks" in README.md).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::config::{Limits, Timeouts, Upstream};
use crate::forward::UpstreamBody;

type Sender = SendRequest<UpstreamBody>;

/// Why no connection to the upstream could be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The host name did not resolve.
    Resolve(std::io::Error),
    /// The name resolved to no address.
    NoAddress,
    /// Every address refused or failed.
    Connect(SocketAddr, std::io::Error),
    /// Resolving and connecting took longer than `PROXY_UPSTREAM_CONNECT_TIMEOUT`.
    Timeout(Duration),
    /// The HTTP/1.1 connection could not be set up.
    Handshake(hyper::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Resolve(e) => write!(f, "name resolution failed: {e}"),
            ConnectError::NoAddress => f.write_str("the name resolved to no address"),
            ConnectError::Connect(addr, e) => write!(f, "connecting to {addr} failed: {e}"),
            ConnectError::Timeout(timeout) => {
                write!(
                    f,
                    "no connection within {timeout:?} (PROXY_UPSTREAM_CONNECT_TIMEOUT)"
                )
            }
            ConnectError::Handshake(e) => write!(f, "HTTP/1.1 connection set-up failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Resolve(e) | ConnectError::Connect(_, e) => Some(e),
            ConnectError::Handshake(e) => Some(e),
            ConnectError::NoAddress | ConnectError::Timeout(_) => None,
        }
    }
}

/// The pool. One per process, shared by all client connections.
pub struct Pool {
    state: Mutex<State>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

struct State {
    /// Oldest at the front, most recently returned at the back.
    idle: VecDeque<Idle>,
    /// Whether a reaper task is running.
    reaping: bool,
}

struct Idle {
    authority: Authority,
    sender: Sender,
    since: Instant,
}

/// A connection taken for one request.
pub struct Checkout {
    pub sender: Sender,
    /// It served an earlier request: a failure before any response may be a connection the
    /// upstream closed meanwhile, which is worth one retry on a fresh connection.
    pub reused: bool,
}

impl Pool {
    pub fn new(timeouts: &Timeouts, limits: &Limits) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State {
                idle: VecDeque::new(),
                reaping: false,
            }),
            connect_timeout: timeouts.upstream_connect,
            idle_timeout: timeouts.upstream_idle,
            max_idle: limits.upstream_max_idle,
        })
    }

    /// An idle connection to `upstream`, or a new one.
    pub async fn checkout(&self, upstream: &Upstream) -> Result<Checkout, ConnectError> {
        if let Some(sender) = self.take_idle(&upstream.authority) {
            return Ok(Checkout {
                sender,
                reused: true,
            });
        }
        // Boxed: connecting is the rare path, and its future would otherwise make every
        // request's future larger (which is moved, hence copied, per request).
        Box::pin(self.connect(upstream))
            .await
            .map(|sender| Checkout {
                sender,
                reused: false,
            })
    }

    /// A new connection, never a pooled one.
    pub async fn connect(&self, upstream: &Upstream) -> Result<Sender, ConnectError> {
        let connect = connect_tcp(&upstream.authority, self.connect_timeout);
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "upstream TCP_NODELAY failed");
        }
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn take_idle(&self, authority: &Authority) -> Option<Sender> {
        let mut state = self.state.lock().expect("pool lock");
        let now = Instant::now();
        while let Some(idle) = state.idle.pop_back() {
            if idle.since + self.idle_timeout <= now {
                // Everything older is expired too; the reaper's work, done now.
                state.idle.clear();
                return None;
            }
            // Ready means idle and open (it was ready when returned; not ready now means the
            // upstream closed it). Another authority is a pre-reload upstream.
            if idle.sender.is_ready() && same_authority(&idle.authority, authority) {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete.
    fn checkin(self: &Arc<Self>, authority: Authority, sender: Sender) {
        if self.max_idle == 0 {
            return;
        }
        // Outside the runtime (a body dropped while it shuts down) there is nothing to return to.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !sender.is_ready() {
            // hyper has not yet seen the end of the exchange (e.g. the request body is still being
            // written after an early response): wait for it off the request path.
            if !sender.is_closed() {
                let pool = self.clone();
                let wait = self.idle_timeout;
                runtime.spawn(async move {
                    let mut sender = sender;
                    if let Ok(Ok(())) = tokio::time::timeout(wait, sender.ready()).await {
                        pool.push(authority, sender);
                    }
                });
            }
            return;
        }
        self.push(authority, sender);
    }

    /// Adds an idle connection; starts the reaper if none runs. Called within the runtime.
    fn push(self: &Arc<Self>, authority: Authority, sender: Sender) {
        let mut state = self.state.lock().expect("pool lock");
        if state.idle.len() >= self.max_idle {
            state.idle.pop_front();
        }
        state.idle.push_back(Idle {
            authority,
            sender,
            since: Instant::now(),
        });
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Whether two authorities are the same. Usually they share one buffer (the pool keeps a clone of
/// the live upstream's), which settles it without the case-insensitive comparison.
fn same_authority(a: &Authority, b: &Authority) -> bool {
    std::ptr::eq(a.as_str(), b.as_str()) || a == b
}

/// Closes idle connections as they pass the idle timeout; ends when the pool is empty.
async fn reap(pool: Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut state = pool.state.lock().expect("pool lock");
            let now = Instant::now();
            while state
                .idle
                .front()
                .is_some_and(|idle| idle.since + pool.idle_timeout <= now)
            {
                state.idle.pop_front();
            }
            match state.idle.front() {
                Some(oldest) => oldest.since + pool.idle_timeout,
                None => {
                    state.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
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

/// An upstream response body that returns its connection to the pool once it has been read to the
/// end (a body dropped early takes its connection down with it: hyper closes it).
pub struct PooledBody {
    inner: Incoming,
    checkin: Option<(Arc<Pool>, Authority, Sender)>,
}

impl PooledBody {
    /// Wraps `response`'s body; `checkin` is `None` for a connection that must not be reused
    /// (an upgraded one).
    pub fn wrap(
        response: Response<Incoming>,
        checkin: Option<(Arc<Pool>, Authority, Sender)>,
    ) -> Response<PooledBody> {
        response.map(|inner| PooledBody { inner, checkin })
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some((pool, authority, sender)) = self.checkin.take() {
            if self.inner.is_end_stream() {
                pool.checkin(authority, sender);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            // The end: the connection goes back at once, not when hyper drops the body.
            Poll::Ready(None) => {
                if let Some((pool, authority, sender)) = self.checkin.take() {
                    pool.checkin(authority, sender);
                }
            }
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_compare_by_buffer_then_by_value() {
        let live: Authority = "app:8000".parse().unwrap();
        let pooled = live.clone();
        assert!(same_authority(&pooled, &live));
        // Another buffer with the same name (a reload that kept the upstream), in another case.
        let reparsed: Authority = "APP:8000".parse().unwrap();
        assert!(same_authority(&reparsed, &live));
        let other: Authority = "app:8001".parse().unwrap();
        assert!(!same_authority(&other, &live));
        // A prefix of the same text is not the same authority.
        let shorter: Authority = "app".parse().unwrap();
        assert!(!same_authority(&shorter, &live));
    }
}
