//! One client connection's shared state ([`ClientConn`]): its peer, the requests in flight, and
//! the deadlines kept for it (header read, idle, HTTP/1.1 parking), on one timer per connection
//! rather than one per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::state::Proxy;
use crate::config::Timeouts;
use crate::forward::headers::Peer;

/// How long an HTTP/1.1 keep-alive connection is idle before it is parked (its hyper buffers
/// freed, see `http1`). Parking at once, as nginx does, would rebuild hyper's connection for every
/// request under keep-alive load; after a quarter second, a busy connection is never parked and an
/// idle one soon is.
const PARK_AFTER: Duration = Duration::from_millis(250);

/// The idle time after which a connection is parked: [`PARK_AFTER`], or less when the client idle
/// timeout is shorter (a connection is parked before it is closed as idle).
fn park_after(timeouts: &Timeouts) -> Duration {
    PARK_AFTER.min(timeouts.client_idle / 2)
}

/// `ClientConn::head_since_ms` when no request head is being read.
const NO_HEAD: u64 = u64::MAX;

/// Per-connection state shared by its requests.
pub(crate) struct ClientConn {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) peer: Peer,
    /// The TLS version the handshake agreed on, as rustls names it (`TLSv1_3`).
    pub(crate) tls_version: &'static str,
    /// The HTTP protocol ALPN agreed on (`h2`, or `http/1.1` also without ALPN).
    pub(crate) protocol: &'static str,
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
    pub(super) opened: Instant,
    /// Whether bytes were written to the client since the last completed flush (HTTP/1.1).
    pub(crate) unflushed: AtomicBool,
    /// The upstream side of an accepted upgrade, joined to the client once hyper has written
    /// the `101` (HTTP/1.1).
    tunnel: Mutex<Option<OnUpgrade>>,
}

impl ClientConn {
    /// The state of a connection from `peer_addr` whose TLS handshake has just completed;
    /// `client_cert` is the verified client certificate's `X-Forwarded-Client-Cert` value.
    pub(super) fn new(
        proxy: Arc<Proxy>,
        peer_addr: SocketAddr,
        tls_version: &'static str,
        protocol: &'static str,
        client_cert: Option<HeaderValue>,
    ) -> ClientConn {
        ClientConn {
            peer: Peer::new(peer_addr.ip(), &proxy.fixed.trusted_proxies)
                .with_client_cert(client_cert),
            tls_version,
            protocol,
            proxy,
            peer_addr,
            in_flight: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            started: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NO_HEAD),
            opened: Instant::now(),
            unflushed: AtomicBool::new(false),
            tunnel: Mutex::new(None),
        }
    }

    /// Keeps the upstream side of an accepted upgrade until hyper has written the `101`.
    pub(super) fn set_tunnel(&self, upstream: OnUpgrade) {
        *self.tunnel.lock().unwrap_or_else(PoisonError::into_inner) = Some(upstream);
    }

    /// The upstream side of an accepted upgrade, if the last request was one.
    pub(super) fn take_tunnel(&self) -> Option<OnUpgrade> {
        self.tunnel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    pub(super) fn request_started(&self) {
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

    pub(super) fn request_finished(&self) {
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

    /// Whether an HTTP/1.1 connection can be parked (see `http1`): it served a request
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
    /// busy connection, instead of one reset per request), so that the connection is found idle
    /// soon after its last request ends.
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
