//! The upstream connection pool: HTTP/1.1 connections to the upstream, kept open between requests.
//!
//! A request takes the most recently used idle connection (last in, first out, which keeps the set
//! of warm connections small), and its response body ([`PooledBody`]) hands the connection back
//! when it ends. A connection idle longer than `PROXY_UPSTREAM_IDLE_TIMEOUT` is closed (by a
//! reaper task that runs while the pool holds any), so it is never used just as the backend
//! closes it. Who polls a connection, in the pool and out of it, is `exchange`'s rule.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::connect::connect;
use super::exchange::UpstreamConn;
use crate::config::{Limits, Timeouts, Upstream};
use crate::error::ConnectError;
use crate::metrics::{ConnectFailure, Metrics};

/// How long a refused upstream connect is retried before the request gets a 502.
pub const REFUSED_RETRY_WINDOW: Duration = Duration::from_secs(3);
/// The pause between two attempts to connect after a refusal.
pub const REFUSED_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The pool. One per process, shared by all client connections.
pub struct Pool {
    state: Mutex<State>,
    /// One permit per upstream connection open (`PROXY_UPSTREAM_MAX_CONNECTIONS`), held by the
    /// connection until it ends.
    slots: Arc<Semaphore>,
    max_connections: usize,
    connect_timeout: Duration,
    /// How long refused connects are retried (see [`Pool::connect`]).
    refused_retry: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    metrics: Arc<Metrics>,
}

struct State {
    /// Oldest at the front, most recently returned at the back.
    idle: VecDeque<Idle>,
    /// Whether a reaper task is running.
    reaping: bool,
}

struct Idle {
    /// The upstream it goes to: after a reload, connections to the old one are not used.
    upstream: Upstream,
    conn: UpstreamConn,
    since: Instant,
}

/// A connection taken for one request.
pub struct Checkout {
    pub conn: UpstreamConn,
    /// It served an earlier request: a failure before any response may be a connection the
    /// upstream closed meanwhile, which is worth one retry on a fresh connection.
    pub reused: bool,
}

impl Pool {
    pub fn new(timeouts: &Timeouts, limits: &Limits, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State {
                idle: VecDeque::new(),
                reaping: false,
            }),
            slots: Arc::new(Semaphore::new(limits.upstream_max_connections)),
            max_connections: limits.upstream_max_connections,
            connect_timeout: timeouts.upstream_connect,
            // Within half the response timeout too, so that a backend that stays down is
            // answered as unreachable (502), not as slow (504).
            refused_retry: REFUSED_RETRY_WINDOW
                .min(timeouts.upstream_connect)
                .min(timeouts.upstream_response / 2),
            idle_timeout: timeouts.upstream_idle,
            max_idle: limits.upstream_max_idle,
            metrics,
        })
    }

    /// The counters the pool and its users add to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Idle connections held now.
    pub fn idle_len(&self) -> usize {
        self.state().idle.len()
    }
    /// An idle connection to `upstream`, or a new one.
    pub async fn checkout(&self, upstream: &Upstream) -> Result<Checkout, ConnectError> {
        if let Some(conn) = self.take_idle(upstream) {
            self.metrics.upstream_reused();
            return Ok(Checkout { conn, reused: true });
        }
        // Boxed: connecting is the rare path, and its future would otherwise make every
        // request's future larger (which is moved, hence copied, per request).
        Box::pin(self.connect(upstream)).await.map(|conn| Checkout {
            conn,
            reused: false,
        })
    }

    /// A new connection, never a pooled one. With `PROXY_UPSTREAM_MAX_CONNECTIONS` open, it waits
    /// for one to end, up to the connect timeout (one HTTP/2 client could otherwise open an
    /// upstream connection per stream, thousands of them). A full pool is not a failing upstream:
    /// it is not counted as a connect failure (which readiness reads).
    ///
    /// A refused connect is tried again, every [`REFUSED_RETRY_PAUSE`], for up to
    /// [`REFUSED_RETRY_WINDOW`] (at most the connect timeout and half the response timeout):
    /// nothing was sent, so this is safe for any request, and it covers a backend restarting in
    /// place, whose old process has closed its listening socket before the new one opens it.
    pub async fn connect(&self, upstream: &Upstream) -> Result<UpstreamConn, ConnectError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = self.connect_timeout;
                match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        return Err(ConnectError::Saturated {
                            limit: self.max_connections,
                            waited: wait,
                        })
                    }
                }
            }
        };
        let give_up = Instant::now() + self.refused_retry;
        let result = loop {
            let result = connect(upstream, self.connect_timeout).await;
            match &result {
                Err(e) if is_refused(e) && Instant::now() + REFUSED_RETRY_PAUSE < give_up => {
                    tokio::time::sleep(REFUSED_RETRY_PAUSE).await;
                }
                _ => break result,
            }
        };
        // Counted once per connection wanted, whatever the number of attempts.
        match &result {
            Ok(_) => self.metrics.upstream_opened(),
            Err(e) => self.metrics.upstream_failed(failure_cause(e)),
        }
        result.map(|conn| conn.holding(permit))
    }

    /// The pool's state. A panic elsewhere while the lock was held cannot leave it inconsistent
    /// (each change is one push or pop), so a poisoned lock is used as it is.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_idle(&self, upstream: &Upstream) -> Option<UpstreamConn> {
        let mut state = self.state();
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
            // request back unsent for a new connection (see `forward`).
            // Another upstream is a pre-reload one (another host, or a socket instead of TCP).
            if idle.conn.is_idle() && idle.upstream.same(upstream) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete.
    fn checkin(self: &Arc<Self>, upstream: Upstream, mut conn: UpstreamConn) {
        if self.max_idle == 0 {
            return;
        }
        // Outside the runtime (a body dropped while it shuts down) there is nothing to return to.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if conn.is_registered() || !conn.is_idle() {
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
                        if conn.poll_io(cx).is_ready() && conn.has_ended() {
                            return Poll::Ready(false);
                        }
                        conn.sender.poll_ready(cx).map(|ready| ready.is_ok())
                    });
                    if let Ok(true) = tokio::time::timeout(wait, finish).await {
                        let _ = conn.settle();
                        if conn.is_idle() {
                            pool.push(upstream, conn);
                        }
                    }
                });
            }
            return;
        }
        self.push(upstream, conn);
    }

    /// Adds an idle connection; starts the reaper if none runs. Called within the runtime.
    fn push(self: &Arc<Self>, upstream: Upstream, conn: UpstreamConn) {
        let mut state = self.state();
        if state.idle.len() >= self.max_idle {
            state.idle.pop_front();
        }
        state.idle.push_back(Idle {
            upstream,
            conn,
            since: Instant::now(),
        });
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// The metrics' cause of a failed connect.
/// Whether nothing listens where the upstream should be: a refused TCP connect, or a UNIX socket
/// that is missing (its server removes it on exit) or that nobody accepts on.
fn is_refused(error: &ConnectError) -> bool {
    match error {
        ConnectError::Connect(_, e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        ConnectError::Socket(_, e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
        ),
        _ => false,
    }
}

fn failure_cause(error: &ConnectError) -> ConnectFailure {
    match error {
        ConnectError::Resolve(_) | ConnectError::NoAddress => ConnectFailure::Dns,
        ConnectError::Connect(_, e) | ConnectError::Socket(_, e) => ConnectFailure::of_io(e),
        ConnectError::Timeout(_) => ConnectFailure::Timeout,
        ConnectError::Handshake(_) | ConnectError::Saturated { .. } => ConnectFailure::Other,
    }
}

/// Closes idle connections as they pass the idle timeout; ends when the pool is empty.
async fn reap(pool: Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut state = pool.state();
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

/// An upstream response body. It polls its connection while it is read (the connection has no
/// task of its own), and returns it to the pool once read to the end (a body dropped early takes
/// its connection down with it).
pub struct PooledBody {
    inner: Incoming,
    checkin: Option<(Arc<Pool>, Upstream, UpstreamConn)>,
}

impl PooledBody {
    /// Wraps `response`'s body; `checkin` is `None` for a connection that must not be reused
    /// (an upgraded one, which has a task of its own).
    pub fn wrap(
        response: Response<Incoming>,
        checkin: Option<(Arc<Pool>, Upstream, UpstreamConn)>,
    ) -> Response<PooledBody> {
        response.map(|inner| PooledBody { inner, checkin })
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some((pool, upstream, conn)) = self.checkin.take() {
            if self.inner.is_end_stream() {
                pool.checkin(upstream, conn);
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
                let _ = conn.poll_io(cx);
                poll = Pin::new(&mut self.inner).poll_frame(cx);
            }
        }
        match &poll {
            // The end: the connection goes back at once, not when hyper drops the body.
            Poll::Ready(None) => {
                if let Some((pool, upstream, conn)) = self.checkin.take() {
                    pool.checkin(upstream, conn);
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
    use std::path::{Path, PathBuf};

    use super::*;

    fn pool(connect_timeout: Duration) -> Arc<Pool> {
        let timeouts = Timeouts {
            tls_handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            upstream_connect: connect_timeout,
            upstream_response: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(8),
            cert_watch_interval: Duration::from_secs(1),
            body_read: Duration::from_secs(30),
            send: Duration::from_secs(60),
        };
        let limits = Limits {
            max_connections: 16,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            upstream_max_idle: 4,
            upstream_max_connections: 16,
        };
        Pool::new(&timeouts, &limits, Arc::new(Metrics::new()))
    }

    /// A socket path in a fresh folder of its own (removed on drop).
    struct SocketDir(PathBuf);
    impl SocketDir {
        fn new(name: &str) -> SocketDir {
            let dir = std::env::temp_dir().join(format!("pool-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            SocketDir(dir)
        }
        fn socket(&self) -> PathBuf {
            self.0.join("app.sock")
        }
    }
    impl Drop for SocketDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn unix(path: &Path) -> Upstream {
        Upstream::Unix(Arc::from(path))
    }

    /// The connect failures counted, whatever their cause (a missing socket is `other`).
    fn failures(pool: &Pool) -> u64 {
        let text = pool.metrics().encode().unwrap();
        text.lines()
            .filter(|l| l.starts_with("proxy_upstream_connect_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_comes_up_within_the_window_gets_the_connection() {
        let dir = SocketDir::new("late");
        let path = dir.socket();
        let pool = pool(Duration::from_secs(5));
        let started = Instant::now();
        let late = tokio::spawn({
            let path = path.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tokio::net::UnixListener::bind(&path).unwrap()
            }
        });
        let conn = pool.connect(&unix(&path)).await;
        assert!(conn.is_ok(), "connected once the socket appeared");
        assert!(started.elapsed() >= Duration::from_secs(1));
        let _listener = late.await.unwrap();
        assert_eq!(failures(&pool), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_past_the_window_fails_once_and_within_the_connect_timeout() {
        let dir = SocketDir::new("never");
        let pool = pool(Duration::from_secs(5));
        let started = Instant::now();
        assert!(pool.connect(&unix(&dir.socket())).await.is_err());
        let waited = started.elapsed();
        assert!(
            waited >= REFUSED_RETRY_WINDOW - REFUSED_RETRY_PAUSE,
            "{waited:?}"
        );
        assert!(waited <= REFUSED_RETRY_WINDOW, "{waited:?}");
        assert_eq!(failures(&pool), 1, "counted once, not per attempt");

        // A shorter connect timeout bounds the retries too.
        let pool = self::pool(Duration::from_millis(500));
        let started = Instant::now();
        assert!(pool.connect(&unix(&dir.socket())).await.is_err());
        assert!(started.elapsed() <= Duration::from_millis(500));
    }
}
