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
//!
//! A new connection has no task of its own: hyper's connection future ([`Conn`]'s driver) is polled
//! by the task of the request that has it checked out, beside that request's response future and
//! then by its response body. The upstream socket wakes the request's task directly, and request
//! and response pass between hyper's two halves without waking a second task. Measured against a
//! task per connection in the same bench rounds: HTTP/2 ≈ ×1.1 requests per busy core (fewer
//! system calls and segments per request, and less user time), HTTP/1.1 even within the rounds'
//! spread. An idle connection is polled by nobody: an upstream's close that arrived meanwhile is
//! read by the next request's first poll, and hyper then hands that request back unsent, for a
//! new connection (`forward::exchange`). A request with a body, or one asking for a WebSocket
//! upgrade, hands its connection to a task of its own for good ([`Conn::detach`] says why).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
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
type Connection = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// One HTTP/1.1 connection to the upstream: the handle requests are sent with, and hyper's
/// connection future that does the work (see the module's overview for who polls it).
pub struct Conn {
    pub sender: Sender,
    driver: Driver,
    /// A task's waker may be registered with the connection (it was driven since it last settled).
    registered: bool,
}

/// hyper's connection future, and who polls it.
enum Driver {
    /// Whoever holds the `Conn`. Boxed: a `Conn` moves with its request's future (into the pool
    /// and out, into the response body), and hyper's connection state is large.
    Inline(Box<Connection>),
    /// A task of its own (see [`Conn::detach`]).
    Detached,
    /// The connection has ended.
    Ended,
}

impl Conn {
    /// Lets the connection do what it can (write the request, read the response) and registers
    /// `cx` for what it waits on. Ready when there is nothing for the caller to drive: the
    /// connection has ended (a request in flight then gets hyper's error through its response
    /// future) or runs in a task of its own (which wakes the caller through hyper's channels).
    pub fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.registered = true;
        self.poll_driver(cx)
    }

    /// Polls the connection without a task to wake. `forward` calls this before it registers a
    /// task's waker: when the connection has the response head, it takes it without handing
    /// hyper a waker (which would wake the request's task once more when the response body is
    /// taken). The pool calls it for a returned connection: it makes an exchange that ended
    /// ready for the next, notices an upstream that closed, and leaves no waker of a task that
    /// no longer uses the connection. Ready as [`Conn::drive`] is.
    pub fn settle(&mut self) -> Poll<()> {
        let poll = self.poll_driver(&mut Context::from_waker(Waker::noop()));
        self.registered = false;
        poll
    }

    fn poll_driver(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Driver::Inline(connection) = &mut self.driver else {
            return Poll::Ready(());
        };
        let Poll::Ready(result) = Pin::new(&mut **connection).poll(cx) else {
            return Poll::Pending;
        };
        if let Err(e) = result {
            debug!(error = %e, "upstream connection ended with an error");
        }
        self.driver = Driver::Ended;
        Poll::Ready(())
    }

    /// Open and free for a request.
    fn is_idle(&self) -> bool {
        !matches!(self.driver, Driver::Ended) && self.sender.is_ready()
    }

    fn has_ended(&self) -> bool {
        matches!(self.driver, Driver::Ended)
    }

    /// Hands the connection to a task of its own, for good, with upgrades enabled. For a request
    /// that asks for a WebSocket upgrade: hyper hands the socket to the tunnel only from a
    /// connection future that runs to its end. For a request with a body: the body must go on
    /// streaming to the upstream while the response body waits for the client (a client that
    /// sends its whole body before reading must not stall), and only a task of its own keeps the
    /// connection going then. Such a connection is pooled as any other; its task sees the
    /// upstream's close, so its `sender` says whether it is idle. (Lending it to a task only until
    /// the body has gone was tried: hyper may drop a body without its end being seen, and may
    /// still hold unflushed request bytes when it has; see "What the performance work changed"
    /// in README.md.)
    pub fn detach(&mut self) {
        match std::mem::replace(&mut self.driver, Driver::Detached) {
            Driver::Inline(connection) => {
                tokio::spawn(async move {
                    if let Err(e) = (*connection).with_upgrades().await {
                        debug!(error = %e, "upstream connection ended with an error");
                    }
                });
            }
            other => self.driver = other,
        }
    }
}

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
    conn: Conn,
    since: Instant,
}

/// A connection taken for one request.
pub struct Checkout {
    pub conn: Conn,
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
        if let Some(conn) = self.take_idle(&upstream.authority) {
            return Ok(Checkout { conn, reused: true });
        }
        // Boxed: connecting is the rare path, and its future would otherwise make every
        // request's future larger (which is moved, hence copied, per request).
        Box::pin(self.connect(upstream)).await.map(|conn| Checkout {
            conn,
            reused: false,
        })
    }

    /// A new connection, never a pooled one.
    pub async fn connect(&self, upstream: &Upstream) -> Result<Conn, ConnectError> {
        let connect = connect_tcp(&upstream.authority, self.connect_timeout);
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "upstream TCP_NODELAY failed");
        }
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(ConnectError::Handshake)?;
        Ok(Conn {
            sender,
            driver: Driver::Inline(Box::new(driver)),
            registered: false,
        })
    }

    fn take_idle(&self, authority: &Authority) -> Option<Conn> {
        let mut state = self.state.lock().expect("pool lock");
        let now = Instant::now();
        while let Some(idle) = state.idle.pop_back() {
            if idle.since + self.idle_timeout <= now {
                // Everything older is expired too; the reaper's work, done now.
                state.idle.clear();
                return None;
            }
            // Nobody polls a pooled connection without a task of its own, so this is what it was
            // when returned (a close seen then ended it); a detached one's task keeps it current.
            // A close that arrived since is read by the request's first poll, which hands the
            // request back unsent for a new connection (`forward::exchange`).
            // Another authority is a pre-reload upstream.
            if idle.conn.is_idle() && same_authority(&idle.authority, authority) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete.
    fn checkin(self: &Arc<Self>, authority: Authority, mut conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        // Outside the runtime (a body dropped while it shuts down) there is nothing to return to.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if conn.registered || !conn.is_idle() {
            let _ = conn.settle();
        }
        if !conn.is_idle() {
            // hyper has not yet seen the end of the exchange (e.g. the request body is still being
            // written after an early response): let it finish off the request path.
            if !conn.has_ended() {
                let pool = self.clone();
                let wait = self.idle_timeout;
                runtime.spawn(async move {
                    let finish = std::future::poll_fn(|cx| {
                        if conn.drive(cx).is_ready() && conn.has_ended() {
                            return Poll::Ready(false);
                        }
                        conn.sender.poll_ready(cx).map(|ready| ready.is_ok())
                    });
                    if let Ok(true) = tokio::time::timeout(wait, finish).await {
                        let _ = conn.settle();
                        if conn.is_idle() {
                            pool.push(authority, conn);
                        }
                    }
                });
            }
            return;
        }
        self.push(authority, conn);
    }

    /// Adds an idle connection; starts the reaper if none runs. Called within the runtime.
    fn push(self: &Arc<Self>, authority: Authority, conn: Conn) {
        let mut state = self.state.lock().expect("pool lock");
        if state.idle.len() >= self.max_idle {
            state.idle.pop_front();
        }
        state.idle.push_back(Idle {
            authority,
            conn,
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

/// An upstream response body. It drives its connection while it is read (the connection has no
/// task of its own), and returns it to the pool once read to the end (a body dropped early takes
/// its connection down with it).
pub struct PooledBody {
    inner: Incoming,
    checkin: Option<(Arc<Pool>, Authority, Conn)>,
}

impl PooledBody {
    /// Wraps `response`'s body; `checkin` is `None` for a connection that must not be reused
    /// (an upgraded one, which has a task of its own).
    pub fn wrap(
        response: Response<Incoming>,
        checkin: Option<(Arc<Pool>, Authority, Conn)>,
    ) -> Response<PooledBody> {
        response.map(|inner| PooledBody { inner, checkin })
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some((pool, authority, conn)) = self.checkin.take() {
            if self.inner.is_end_stream() {
                pool.checkin(authority, conn);
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
        let mut poll = Pin::new(&mut self.inner).poll_frame(cx);
        if poll.is_pending() {
            // Nothing buffered: let the connection read more (a small body came with the head,
            // and then the connection needs no poll here).
            if let Some((_, _, conn)) = &mut self.checkin {
                let _ = conn.drive(cx);
                poll = Pin::new(&mut self.inner).poll_frame(cx);
            }
        }
        match &poll {
            // The end: the connection goes back at once, not when hyper drops the body.
            Poll::Ready(None) => {
                if let Some((pool, authority, conn)) = self.checkin.take() {
                    pool.checkin(authority, conn);
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
