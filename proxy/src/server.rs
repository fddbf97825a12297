//! The server: accept loop, TLS handshake, HTTP/1.1 + HTTP/2 connections, the per-request path
//! (CORS verdict → forward → response headers → access log), graceful shutdown, configuration
//! reload, and the optional plain-HTTP redirect listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::{self, Settings, Timeouts, Upstream};
use crate::cors::{self, Policy, RequestInfo, Verdict};
use crate::error::{ProxyError, ReloadError};
use crate::forward::{self, Peer, ResponseTimer, UpstreamClient};
use crate::http1 as client_http1;
use crate::upstream::PooledBody;

/// Reloads the TLS material (wired to `tls::CertStore::reload` by `main`); on error the old pair
/// must keep serving.
pub type CertReloader =
    Box<dyn Fn() -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// The parts of the configuration that a reload swaps atomically, together.
#[derive(Debug)]
pub struct Live {
    pub upstream: Upstream,
    pub cors: Policy,
}

/// Everything the server shares between connections. Requests read the live configuration
/// through an `ArcSwap` (no lock on the request path).
pub struct Proxy {
    settings: Settings,
    live: ArcSwap<Live>,
    client: UpstreamClient,
    tls: Arc<rustls::ServerConfig>,
    cert_reloader: Option<CertReloader>,
}

impl Proxy {
    /// Builds the shared state. `tls` should resolve certificates through the reloadable store.
    pub fn new(settings: Settings, cors: Policy, tls: Arc<rustls::ServerConfig>) -> Proxy {
        let client = forward::client(&settings.timeouts, &settings.limits);
        let live = ArcSwap::from_pointee(Live {
            upstream: settings.upstream.clone(),
            cors,
        });
        Proxy {
            settings,
            live,
            client,
            tls,
            cert_reloader: None,
        }
    }

    /// Sets what a reload calls to reload the certificates.
    pub fn with_cert_reloader(mut self, reloader: CertReloader) -> Proxy {
        self.cert_reloader = Some(reloader);
        self
    }

    /// The settings the proxy started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The configuration in effect now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Reads the configuration again from the same sources (`argv`, the env file, `env`),
    /// validates all of it, reloads the certificates, and only then swaps upstream and CORS
    /// policy together. Any failure leaves everything as it was.
    ///
    /// Listen addresses, timeouts, limits and certificate paths need a restart; a change to
    /// them is logged and ignored.
    pub fn reload(
        &self,
        argv: &[OsString],
        env: &HashMap<String, String>,
    ) -> Result<(), ReloadError> {
        let cli = config::parse(argv, env)?;
        let settings = Settings::from_args(&cli.proxy)?;
        let (cors, warnings) = Policy::from_args(&cli.cors).map_err(config::ConfigError::from)?;
        if let Some(reload_certs) = &self.cert_reloader {
            reload_certs().map_err(ReloadError::Tls)?;
        }
        for warning in warnings {
            warn!(%warning, "CORS configuration");
        }
        let fixed = &self.settings;
        if settings.listen != fixed.listen
            || settings.redirect_http != fixed.redirect_http
            || settings.redirect_https_port != fixed.redirect_https_port
            || settings.timeouts != fixed.timeouts
            || settings.limits != fixed.limits
            || settings.tls_cert != fixed.tls_cert
            || settings.tls_key != fixed.tls_key
            || settings.trusted_proxies != fixed.trusted_proxies
            || settings.hsts != fixed.hsts
        {
            warn!("only the upstream, the CORS policy and the certificates reload; other changed settings need a restart");
        }
        info!(upstream = %settings.upstream, cors = %cors, "configuration reloaded");
        self.live.store(Arc::new(Live {
            upstream: settings.upstream,
            cors,
        }));
        Ok(())
    }
}

/// Serves HTTPS (HTTP/1.1 and HTTP/2) on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish within the shutdown grace period, and returns.
pub async fn run(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let settings = &proxy.settings;
    let builders = Arc::new(Builders::new(settings));
    let acceptor = tokio_rustls::TlsAcceptor::from(proxy.tls.clone());
    let max_connections = settings.limits.max_connections;
    let connections = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let addr = listener.local_addr()?;
    info!(%addr, upstream = %proxy.live().upstream, "listening (https)");

    tokio::pin!(shutdown);
    loop {
        // Waiting for a permit before accepting keeps surplus clients in the kernel's backlog.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let span =
            info_span!("conn", %peer, tls = tracing::field::Empty, alpn = tracing::field::Empty);
        let connection = serve_connection(
            tcp,
            peer,
            proxy.clone(),
            acceptor.clone(),
            builders.clone(),
            stop_rx.clone(),
            permit,
        );
        tokio::spawn(connection.instrument(span));
    }

    drop(listener);
    let grace = settings.timeouts.shutdown_grace;
    let open = max_connections - connections.available_permits();
    info!(open_connections = open, grace = ?grace, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, connections.acquire_many(all)).await {
        Ok(_) => info!("shutdown complete: all connections drained"),
        Err(_) => warn!(
            cut = max_connections - connections.available_permits(),
            "shutdown grace period over: closing remaining connections"
        ),
    }
    Ok(())
}

/// The connection builders, one per protocol; ALPN names the protocol in the handshake.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(settings: &Settings) -> Builders {
        let limits = &settings.limits;
        let header_list_size = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
        let mut http1 = http1::Builder::new();
        // No header-read timer from hyper: it boxes and registers a new timer for every request
        // (≈ 1,400 instructions, 3 % of a proxied request). `Connection` keeps that deadline
        // instead, checked by the connection's idle timer (see `http1`).
        http1
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(header_list_size);
        Builders { http1, http2 }
    }
}

/// How long an HTTP/1.1 keep-alive connection is idle before it is parked (its hyper buffers
/// freed, see [`crate::http1`]). Parking at once, as nginx does, would rebuild hyper's connection
/// for every request under keep-alive load: +17 % instructions per request (callgrind); after a
/// quarter second, a busy connection is never parked and an idle one soon is.
const PARK_AFTER: Duration = Duration::from_millis(250);

/// The idle time after which a connection is parked: [`PARK_AFTER`], or less when the client idle
/// timeout is shorter (a connection is parked before it is closed as idle).
fn park_after(timeouts: &Timeouts) -> Duration {
    PARK_AFTER.min(timeouts.client_idle / 2)
}

/// `Connection::head_since_ms` when no request head is being read.
const NO_HEAD: u64 = u64::MAX;

/// Per-connection state shared by its requests.
pub(crate) struct Connection {
    pub(crate) proxy: Arc<Proxy>,
    peer_addr: SocketAddr,
    peer: Peer,
    /// Requests whose response has not finished; the idle timer runs only at zero.
    in_flight: AtomicUsize,
    /// Requests whose response has finished.
    pub(crate) finished: AtomicU64,
    /// Whether any request arrived yet: until one does, the header-read timeout bounds the wait
    /// (HTTP/2 has no header-read timer of its own).
    started: AtomicBool,
    /// When the last request finished, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
    /// HTTP/1.1: when the first byte of the request head being read came, in milliseconds since
    /// `opened`, or [`NO_HEAD`]. The header-read timeout runs from it.
    head_since_ms: AtomicU64,
    opened: Instant,
    /// Whether bytes were written to the client since the last completed flush (HTTP/1.1).
    pub(crate) unflushed: AtomicBool,
    /// The upstream side of an accepted upgrade, joined to the client once hyper has written
    /// the `101` (HTTP/1.1).
    pub(crate) tunnel: Mutex<Option<OnUpgrade>>,
}

impl Connection {
    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Relaxed);
        }
    }

    /// `bytes` came from the client (HTTP/1.1). With no request in flight they are the start of a
    /// request head, and the header-read timeout runs from the first of them; empty lines before
    /// a request (the CRLF some clients send after a body) are not. (Body bytes that come after
    /// the response has ended, to an upstream that answered early, count as well: the rest of
    /// such an upload is bounded by the header-read timeout.)
    pub(crate) fn bytes_arrived(&self, bytes: &[u8]) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since_ms.load(Ordering::Relaxed) == NO_HEAD
            && !bytes.iter().all(|b| matches!(b, b'\r' | b'\n'))
        {
            let ms = self.opened.elapsed().as_millis() as u64;
            self.head_since_ms
                .store(ms.min(NO_HEAD - 1), Ordering::Relaxed);
        }
    }

    /// Nothing of a request head is pending (the connection is parked with nothing read ahead).
    pub(crate) fn no_head(&self) {
        self.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
    }

    /// Whether part of a request head has come and the rest is awaited.
    pub(crate) fn head_started(&self) -> bool {
        self.head_since_ms.load(Ordering::Relaxed) != NO_HEAD
    }

    /// When the request head being read must be complete.
    fn head_deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        match self.head_since_ms.load(Ordering::Relaxed) {
            NO_HEAD => None,
            ms => Some(self.opened + Duration::from_millis(ms) + timeouts.header_read),
        }
    }

    fn request_finished(&self) {
        self.idle_since_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Release);
    }

    /// When the last request finished.
    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
    }

    /// When this connection is to be closed as idle (or for a request head that did not arrive
    /// within the header-read timeout), or `None` while a request is in flight.
    pub(crate) fn idle_deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        if !self.started.load(Ordering::Relaxed) {
            return Some(self.opened + timeouts.header_read.min(timeouts.client_idle));
        }
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return None;
        }
        let idle = self.idle_since() + timeouts.client_idle;
        // While hyper still has an earlier response to write, the "head" may be a pipelined
        // request waiting for it (hyper starts no request while its output is queued), and the
        // client that does not read is bounded by the idle timeout.
        if self.unflushed.load(Ordering::Relaxed) {
            return Some(idle);
        }
        Some(match self.head_deadline(timeouts) {
            Some(head) => head.min(idle),
            None => idle,
        })
    }

    /// Whether an HTTP/1.1 connection can be parked (see [`crate::http1`]): it served a request
    /// since it was (re)started (`finished_before` is the count then), none is in flight,
    /// everything written is flushed, and it has been idle for [`park_after`].
    pub(crate) fn parkable(&self, finished_before: u64, timeouts: &Timeouts) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.finished.load(Ordering::Relaxed) != finished_before
            && !self.unflushed.load(Ordering::Relaxed)
            && self.idle_since() + park_after(timeouts) <= Instant::now()
    }

    /// When to look at an HTTP/1.1 connection's timers next, and whether that is within
    /// [`park_after`] of now: when it may be parked, or when it is to be closed as idle; while a
    /// request is in flight, after [`park_after`] (a timer that ticks a few times a second on a
    /// busy connection, instead of one reset per request). That tick also polls the request in
    /// flight again, which its deferred response timer relies on
    /// ([`forward::ResponseTimer::Deferred`]).
    pub(crate) fn next_check(&self, timeouts: &Timeouts) -> (Instant, bool) {
        let now = Instant::now();
        let park_after = park_after(timeouts);
        let at = match self.idle_deadline(timeouts) {
            None => now + park_after,
            Some(deadline) => {
                let park = self.idle_since() + park_after;
                if self.started.load(Ordering::Relaxed) && park > now {
                    park.min(deadline)
                } else {
                    deadline
                }
            }
        };
        (at, at <= now + park_after)
    }

    /// Requests started on this connection (finished or in flight).
    pub(crate) fn requests_started(&self) -> u64 {
        self.finished.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed) as u64
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    proxy: Arc<Proxy>,
    acceptor: tokio_rustls::TlsAcceptor,
    builders: Arc<Builders>,
    stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "TCP_NODELAY failed");
    }
    let timeouts = proxy.settings.timeouts;
    let tls = match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(phase = "tls_handshake", error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(phase = "tls_handshake", timeout = ?timeouts.tls_handshake, "TLS handshake timed out");
            return;
        }
    };
    let alpn = {
        let (_, session) = tls.get_ref();
        let span = tracing::Span::current();
        if let Some(version) = session.protocol_version() {
            span.record("tls", tracing::field::debug(version));
        }
        if let Some(alpn) = session.alpn_protocol() {
            span.record("alpn", String::from_utf8_lossy(alpn).as_ref());
        }
        match session.alpn_protocol() {
            Some(b"h2") => Alpn::Http2,
            _ => Alpn::Http1,
        }
    };

    let opened = Instant::now();
    let conn = Arc::new(Connection {
        peer: Peer::new(peer_addr.ip(), &proxy.settings.trusted_proxies),
        proxy,
        peer_addr,
        in_flight: AtomicUsize::new(0),
        finished: AtomicU64::new(0),
        started: AtomicBool::new(false),
        idle_since_ms: AtomicU64::new(0),
        head_since_ms: AtomicU64::new(NO_HEAD),
        opened,
        unflushed: AtomicBool::new(false),
        tunnel: Mutex::new(None),
    });
    match alpn {
        Alpn::Http2 => {
            let service = {
                let conn = conn.clone();
                // Boxed: hyper spawns a task per stream around this future and moves it several
                // times on the way; a pointer moves cheaper than the ~3 KB state (callgrind).
                service_fn(move |req| Box::pin(handle(conn.clone(), req)))
            };
            // Boxed: HTTP/2's connection state is large (and an idle HTTP/1.1 connection's task
            // would otherwise keep room for it).
            let connection = Box::pin(builders.http2.serve_connection(TokioIo::new(tls), service));
            drive(
                connection,
                |c| c.get_mut().as_mut().graceful_shutdown(),
                &conn,
                stop,
            )
            .await;
        }
        Alpn::Http1 => {
            let io = client_http1::ClientIo::new(tls, conn.clone());
            client_http1::serve(io, conn, &builders.http1, stop).await;
        }
    }
    // Held to here: the slot is free once the connection (or its tunnel) is gone.
    drop(permit);
}

/// The protocol the TLS handshake agreed on. Without ALPN it is HTTP/1.1: HTTP/2 over TLS must
/// be negotiated with ALPN (RFC 9113 §3.2).
enum Alpn {
    Http1,
    Http2,
}

/// Runs a client connection to its end: asks it to finish (`graceful_shutdown`) when the server
/// stops or when it has been idle for the client idle timeout.
async fn drive<C, E>(
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    conn: &Connection,
    mut stop: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let timeouts = conn.proxy.settings.timeouts;
    let mut stopping = *stop.borrow();
    if stopping {
        graceful_shutdown(connection.as_mut());
    }
    let idle = timeouts.client_idle;
    let mut idle_check = conn.opened + timeouts.header_read.min(idle);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            changed = stop.changed(), if !stopping => {
                // A closed channel means the server is gone: stop as well.
                let _ = changed;
                stopping = true;
                graceful_shutdown(connection.as_mut());
            }
            () = tokio::time::sleep_until(idle_check), if !stopping => {
                match conn.idle_deadline(&timeouts) {
                    Some(deadline) if deadline <= Instant::now() => {
                        debug!(phase = "client_idle", "closing idle connection");
                        stopping = true;
                        graceful_shutdown(connection.as_mut());
                    }
                    Some(deadline) => idle_check = deadline,
                    None => idle_check = Instant::now() + idle,
                }
            }
        }
    }
}

/// The body of every response the proxy sends: the upstream's stream or a proxy-made body,
/// counting bytes and writing the access-log line when it ends or is dropped.
pub struct ProxyBody {
    inner: Either<PooledBody, Full<Bytes>>,
    log: AccessLog,
}

struct AccessLog {
    conn: Arc<Connection>,
    method: Method,
    uri: Uri,
    status: StatusCode,
    bytes: u64,
    start: Instant,
    upstream_time: Option<Duration>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.conn.request_finished();
        info!(
            target: "access",
            peer = %self.conn.peer_addr,
            method = %self.method,
            path = self.uri.path(),
            status = self.status.as_u16(),
            bytes = self.bytes,
            upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            total_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.log.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) async fn handle(
    conn: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    conn.request_started();
    let mut log = AccessLog {
        conn: conn.clone(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        // Logged as is when the client goes away before a response exists (nginx's 499).
        status: StatusCode::from_u16(499).expect("499 is in range"),
        bytes: 0,
        start,
        upstream_time: None,
    };
    let proxy = &conn.proxy;
    let json = crate::error::wants_json(req.headers());

    let limit = proxy.settings.limits.max_headers;
    let (verdict, upstream) = {
        let live = proxy.live.load();
        let info = RequestInfo {
            method: req.method(),
            headers: req.headers(),
            path: req.uri().path(),
            authority: req.uri().authority().map(|a| a.as_str()).or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            }),
        };
        (cors::evaluate(&live.cors, &info), live.upstream.clone())
    };

    let (mut response, cors) = match verdict {
        Verdict::Respond(response) => (response.map(|b| Either::Right(Full::new(b))), None),
        Verdict::Forward(cors) => {
            let result = if req.headers().len() > limit {
                // HTTP/1.1 is held to the limit by hyper; HTTP/2 only by the header list size.
                Err(ProxyError::TooManyHeaders {
                    count: req.headers().len(),
                    limit,
                })
            } else {
                // An HTTP/1.1 connection's timer ticks while a request is in flight (see
                // `Connection::next_check`), which lets the response timer wait; an HTTP/2 stream
                // runs in a task of its own.
                let timer = if req.version() == Version::HTTP_2 {
                    ResponseTimer::Armed
                } else {
                    ResponseTimer::Deferred
                };
                forward::forward(
                    &proxy.client,
                    &upstream,
                    &proxy.settings.timeouts,
                    &conn.peer,
                    req,
                    timer,
                )
                .await
            };
            let response = match result {
                Ok(forwarded) => {
                    log.upstream_time = Some(forwarded.upstream_time);
                    if let Some(upgrade) = forwarded.upgrade {
                        *conn.tunnel.lock().expect("tunnel slot") = Some(upgrade);
                    }
                    forwarded.response.map(Either::Left)
                }
                Err(e) => {
                    warn!(upstream = %upstream, cause = e.cause(), error = %e, "request failed");
                    e.to_response(json).map(Either::Right)
                }
            };
            (response, Some(cors))
        }
    };
    if let Some(cors) = cors {
        cors.apply(response.headers_mut());
    }
    if let Some(hsts) = &proxy.settings.hsts {
        response
            .headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
    log.status = response.status();
    Ok(response.map(|inner| ProxyBody { inner, log }))
}

/// Answers every plain-HTTP request with `308 Permanent Redirect` to the same host and path on
/// https at `https_port`, until `shutdown` resolves.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, https_port, "listening (http redirect)");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed (redirect listener)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let service =
            service_fn(move |req| async move { Ok::<_, Infallible>(redirect(&req, https_port)) });
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "redirect connection failed");
            }
        });
    }
}

/// The redirect for one plain-HTTP request (400 without a usable `Host`).
pub fn redirect<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        let mut response =
            Response::new(Full::new(Bytes::from_static(b"400 Bad Request: no Host\n")));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{}{path}", host.host())
    } else {
        format!("https://{}:{https_port}{path}", host.host())
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Err(e) => {
            error!(error = %e, "unusable redirect location");
            *response.status_mut() = StatusCode::BAD_REQUEST;
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations() {
        let cases = [
            (
                "example.com",
                "/a?b=1",
                8443,
                Some("https://example.com:8443/a?b=1"),
            ),
            ("example.com:80", "/", 443, Some("https://example.com/")),
            ("[::1]:8080", "/x", 8443, Some("https://[::1]:8443/x")),
            ("", "/", 443, None),
        ];
        for (host, path, port, expected) in cases {
            let mut req = Request::builder().uri(path);
            if !host.is_empty() {
                req = req.header(header::HOST, host);
            }
            let response = redirect(&req.body(()).unwrap(), port);
            match expected {
                Some(location) => {
                    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
                    assert_eq!(response.headers()[header::LOCATION], location);
                }
                None => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
            }
        }
    }
}
