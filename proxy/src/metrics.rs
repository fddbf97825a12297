//! The proxy's metrics: plain atomic counters owned by [`Metrics`] (one per proxy),
//! counted on the request path, and encoded in the Prometheus/OpenMetrics text format by
//! `prometheus-client` only when `/metrics` is scraped (`encode`).
//!
//! Every label set is known in advance (protocol, method class, status class, causes), so each
//! one has its counter in an array indexed by an enum: counting is one relaxed atomic add, with no
//! lock, no map lookup and no allocation. (`prometheus-client`'s `Family` would take a lock and
//! look the label set up in a map per increment.) Modules that count depend on this one, never
//! the other way round; values it cannot see itself (the pool's idle size) are handed in by the
//! admin listener at scrape time.

mod encode;
mod histogram;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

pub use histogram::Histogram;

/// The client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Request method classes: the standard methods by name, everything else as `OTHER`, so a client
/// cannot create label values.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
/// Response status classes.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Why a new upstream connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Reset,
    Dns,
    Other,
}

impl ConnectFailure {
    const LABELS: [&'static str; 5] = ["refused", "timeout", "reset", "dns", "other"];

    /// The cause of a failed connect from its I/O error.
    pub fn of_io(error: &std::io::Error) -> ConnectFailure {
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            ErrorKind::TimedOut => ConnectFailure::Timeout,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => ConnectFailure::Reset,
            _ => ConnectFailure::Other,
        }
    }
}

/// The TLS version a client's handshake agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
    Other,
}

/// Why a client's TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not complete within `PROXY_TLS_HANDSHAKE_TIMEOUT`.
    Timeout,
    /// The client closed or reset the connection.
    ClientClosed,
    /// A TLS error: no shared version or cipher, a bad message, an alert from the client.
    Protocol,
}

impl HandshakeFailure {
    const LABELS: [&'static str; 3] = ["timeout", "client_closed", "protocol"];

    /// The reason from the handshake's I/O error (rustls reports its own errors as `InvalidData`).
    pub fn of_io(error: &std::io::Error) -> HandshakeFailure {
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::InvalidData => HandshakeFailure::Protocol,
            _ => HandshakeFailure::ClientClosed,
        }
    }
}

/// The client-side deadline that closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    /// A request head did not arrive in full within `PROXY_HEADER_READ_TIMEOUT`.
    HeaderRead,
    /// No request within `PROXY_CLIENT_IDLE_TIMEOUT`.
    Idle,
    /// No request body bytes within `PROXY_BODY_READ_TIMEOUT` (408).
    BodyRead,
    /// No progress writing to the client within `PROXY_SEND_TIMEOUT`.
    Send,
}

impl ClientTimeout {
    const LABELS: [&'static str; 4] = ["header_read", "idle", "body_read", "send"];
}

/// Why the proxy refused a request itself, before or while forwarding it (the status each gets
/// is decided where errors map to statuses, `error.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `Host` (HTTP/1.1), or neither `Host` nor `:authority` (HTTP/2).
    MissingHost,
    /// More than one `Host` field.
    DuplicateHost,
    /// A `Host` (or target authority) that is not a valid `host[:port]`.
    InvalidHost,
    /// HTTP/2: `Host` names another authority than `:authority`.
    HostMismatch,
    /// `CONNECT` or `TRACE`.
    Method,
    /// The asterisk-form target (`*`) with a method other than `OPTIONS`.
    AsteriskForm,
    /// A transfer coding other than `chunked` alone.
    TransferCoding,
    /// A request body over `PROXY_MAX_BODY_BYTES`.
    BodyTooLarge,
    /// A request body whose framing broke (a malformed chunk).
    MalformedBody,
}

impl Refused {
    pub(crate) const LABELS: [&'static str; 9] = [
        "missing_host",
        "duplicate_host",
        "invalid_host",
        "host_mismatch",
        "method",
        "asterisk_form",
        "transfer_coding",
        "body_too_large",
        "malformed_body",
    ];

    /// The short name logs, metrics and JSON bodies use.
    pub fn label(self) -> &'static str {
        Refused::LABELS[self as usize]
    }
}

/// What the CORS policy did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsOutcome {
    /// Forwarded (same-origin, allowed cross-origin, or not a CORS request).
    Forwarded,
    /// A preflight the proxy answered itself.
    PreflightAllowed,
    /// Refused with 403 (preflight or actual request).
    Refused,
    /// A disallowed origin forwarded without CORS headers (`CORS_MODE=browser`).
    ForwardedWithoutCors,
    /// Would have been refused, forwarded anyway (`CORS_MODE=shadow`).
    ShadowDenied,
}

impl CorsOutcome {
    const LABELS: [&'static str; 5] = [
        "forwarded",
        "preflight_allowed",
        "refused",
        "forwarded_without_cors",
        "shadow_denied",
    ];
}

/// The part of a request a CORS refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsRefusal {
    Origin,
    Method,
    Headers,
    PrivateNetwork,
}

impl CorsRefusal {
    const LABELS: [&'static str; 4] = ["origin", "method", "headers", "private_network"];
}

/// What was reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Upstream and CORS policy (SIGHUP).
    Config,
    /// The certificate pair (SIGHUP or a file change).
    Certificate,
}

/// Counters for one process's proxy; see the module's overview.
#[derive(Debug)]
pub struct Metrics {
    epoch: Instant,
    requests: [[[AtomicU64; 5]; 8]; 2],
    request_duration: Histogram,
    upstream_duration: Histogram,
    request_body_bytes: AtomicU64,
    response_body_bytes: AtomicU64,
    upstream_opened: AtomicU64,
    upstream_reused: AtomicU64,
    upstream_failed: [AtomicU64; 5],
    /// 502 and 504 answered for the upstream.
    gateway_errors: [AtomicU64; 2],
    upstream_retries: AtomicU64,
    upstream_idle: AtomicU64,
    /// When a new upstream connection last succeeded, in milliseconds since `epoch` plus one
    /// (zero: never).
    upstream_ok_ms: AtomicU64,
    /// Whether the last attempt at a new upstream connection failed.
    upstream_last_failed: AtomicBool,
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    handshakes: [AtomicU64; 3],
    handshake_failures: [AtomicU64; 3],
    slot_waits: AtomicU64,
    client_timeouts: [AtomicU64; 4],
    refused: [AtomicU64; 9],
    cors: [AtomicU64; 5],
    cors_refusals: [AtomicU64; 4],
    reloads: [[AtomicU64; 2]; 2],
    /// The served certificate's `notAfter` in Unix seconds, once one is loaded.
    cert_not_after: AtomicI64,
    cert_loaded: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// All counters at zero, no certificate known.
    pub fn new() -> Metrics {
        Metrics {
            epoch: Instant::now(),
            requests: Default::default(),
            request_duration: Histogram::default(),
            upstream_duration: Histogram::default(),
            request_body_bytes: AtomicU64::new(0),
            response_body_bytes: AtomicU64::new(0),
            upstream_opened: AtomicU64::new(0),
            upstream_reused: AtomicU64::new(0),
            upstream_failed: Default::default(),
            gateway_errors: Default::default(),
            upstream_retries: AtomicU64::new(0),
            upstream_idle: AtomicU64::new(0),
            upstream_ok_ms: AtomicU64::new(0),
            upstream_last_failed: AtomicBool::new(false),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            handshakes: Default::default(),
            handshake_failures: Default::default(),
            slot_waits: AtomicU64::new(0),
            client_timeouts: Default::default(),
            refused: Default::default(),
            cors: Default::default(),
            cors_refusals: Default::default(),
            reloads: Default::default(),
            cert_not_after: AtomicI64::new(0),
            cert_loaded: AtomicBool::new(false),
        }
    }

    /// A request whose response has ended (or whose client went away): its protocol, method,
    /// status, time from its head to the end, time to the upstream's response head (when
    /// forwarded) and response body bytes sent.
    pub fn request(
        &self,
        protocol: Protocol,
        method: &Method,
        status: StatusCode,
        total: Duration,
        upstream: Option<Duration>,
        response_bytes: u64,
    ) {
        let p = match protocol {
            Protocol::Http1 => 0,
            Protocol::Http2 => 1,
        };
        add(&self.requests[p][method_index(method)][status_index(status)]);
        self.request_duration.observe(total);
        if let Some(upstream) = upstream {
            self.upstream_duration.observe(upstream);
        }
        self.response_body_bytes
            .fetch_add(response_bytes, Ordering::Relaxed);
    }

    /// Request body bytes that came from a client and went upstream.
    pub fn request_body_bytes(&self, n: u64) {
        self.request_body_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The proxy answered 502 (`true`: 504) for the upstream.
    pub fn gateway_error(&self, timeout: bool) {
        add(&self.gateway_errors[usize::from(timeout)]);
    }

    /// A new upstream connection was set up.
    pub fn upstream_opened(&self) {
        add(&self.upstream_opened);
        self.upstream_ok_ms.store(self.now_ms(), Ordering::Relaxed);
        self.upstream_last_failed.store(false, Ordering::Relaxed);
    }

    /// A pooled upstream connection was taken for a request.
    pub fn upstream_reused(&self) {
        add(&self.upstream_reused);
    }

    /// A new upstream connection could not be made.
    pub fn upstream_failed(&self, cause: ConnectFailure) {
        add(&self.upstream_failed[cause as usize]);
        self.upstream_last_failed.store(true, Ordering::Relaxed);
    }

    /// An idempotent request was sent again on a fresh connection.
    pub fn upstream_retry(&self) {
        add(&self.upstream_retries);
    }

    /// The pool's idle connections now (set at scrape time).
    pub fn set_upstream_idle(&self, n: usize) {
        self.upstream_idle.store(n as u64, Ordering::Relaxed);
    }

    /// Whether the last new upstream connection succeeded, and that was within `recent`.
    pub fn upstream_recently_ok(&self, recent: Duration) -> bool {
        let ok = self.upstream_ok_ms.load(Ordering::Relaxed);
        ok != 0
            && !self.upstream_last_failed.load(Ordering::Relaxed)
            && self.now_ms().saturating_sub(ok) <= recent.as_millis() as u64
    }

    /// A client connection was accepted; the returned guard counts it as open until dropped.
    pub fn client_connection(&self) -> OpenConnection<'_> {
        add(&self.connections_total);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// A client's TLS handshake completed.
    pub fn handshake(&self, version: TlsVersion) {
        add(&self.handshakes[version as usize]);
    }

    /// A client's TLS handshake failed.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        add(&self.handshake_failures[reason as usize]);
    }

    /// The accept loop found every connection slot (`PROXY_MAX_CONNECTIONS`) taken and waited.
    pub fn slot_wait(&self) {
        add(&self.slot_waits);
    }

    /// A client connection was closed by one of its deadlines.
    pub fn client_timeout(&self, timeout: ClientTimeout) {
        add(&self.client_timeouts[timeout as usize]);
    }

    /// A request the proxy refused itself (see [`Refused`]).
    pub fn refused(&self, reason: Refused) {
        add(&self.refused[reason as usize]);
    }

    /// What the CORS policy did with a request, and for a refusal (including the ones `browser`
    /// and `shadow` forward anyway) the part of the request it is about.
    pub fn cors(&self, outcome: CorsOutcome, refusal: Option<CorsRefusal>) {
        add(&self.cors[outcome as usize]);
        if let Some(refusal) = refusal {
            add(&self.cors_refusals[refusal as usize]);
        }
    }

    /// A reload ended.
    pub fn reload(&self, what: Reload, ok: bool) {
        add(&self.reloads[what as usize][usize::from(!ok)]);
    }

    /// The certificate now served expires at `not_after`.
    pub fn certificate(&self, not_after: SystemTime) {
        let secs = match not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        self.cert_not_after.store(secs, Ordering::Relaxed);
        self.cert_loaded.store(true, Ordering::Release);
    }

    /// Whether a certificate is loaded.
    pub fn certificate_loaded(&self) -> bool {
        self.cert_loaded.load(Ordering::Acquire)
    }

    /// The text exposition of every metric (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        encode::encode(self)
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).saturating_add(1)
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counts a client connection as open while it lives.
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(status_index(StatusCode::OK), 1);
        assert_eq!(status_index(StatusCode::from_u16(499).unwrap()), 3);
        assert_eq!(status_index(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(status_index(StatusCode::CONTINUE), 0);
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        assert_eq!(
            METHODS[method_index(&Method::from_bytes(b"PROPFIND").unwrap())],
            "OTHER"
        );
    }

    #[test]
    fn upstream_readiness_follows_the_last_connect() {
        let m = Metrics::new();
        let recent = Duration::from_secs(60);
        assert!(!m.upstream_recently_ok(recent));
        m.upstream_opened();
        assert!(m.upstream_recently_ok(recent));
        m.upstream_failed(ConnectFailure::Refused);
        assert!(!m.upstream_recently_ok(recent));
    }
}
