//! Forwarding to the upstream (RFC 9110 §7.6): hop-by-hop stripping both ways, `X-Forwarded-*`,
//! `Forwarded` (RFC 7239) and `Via`, the one pooled upstream client, the retry of idempotent
//! requests that met a stale pooled connection, and joining upgraded (WebSocket) connections.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{Cidr, Limits, Timeouts, Upstream};
use crate::error::ProxyError;
use crate::upstream::{Checkout, Conn, ConnectError, Pool, PooledBody};

/// Body of a request sent upstream: the client's streamed body, or nothing (which lets an
/// idempotent request be sent again on a fresh connection).
pub type UpstreamBody = Either<ClientBody, Empty<Bytes>>;

/// The client's request body as it streams upstream. It reports when its last byte has gone,
/// because the upstream response timeout counts from there: however long an upload takes is the
/// client's time, not the upstream's.
pub struct ClientBody {
    inner: Incoming,
    sent: Option<oneshot::Sender<()>>,
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        // The end (or a failure) of the body, whichever the client connection saw first.
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || self.inner.is_end_stream()
        {
            if let Some(sent) = self.sent.take() {
                let _ = sent.send(());
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The pooled upstream client. One per process; connections are reused across requests.
pub type UpstreamClient = Arc<Pool>;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Headers a client could use to impersonate another address or scheme to the app; removed
/// unless the peer is a trusted proxy.
static SPOOFABLE: [HeaderName; 3] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Builds the pooled upstream client: HTTP/1.1, TCP_NODELAY, bounded connect time, idle
/// connections closed before the backend's keep-alive would close them (see [`crate::upstream`]).
pub fn client(timeouts: &Timeouts, limits: &Limits) -> UpstreamClient {
    Pool::new(timeouts, limits)
}

/// The client connection's peer, with the header values derived from it once per connection.
#[derive(Debug)]
pub struct Peer {
    pub ip: IpAddr,
    /// The peer's forwarding headers are kept (it is in `PROXY_TRUSTED_PROXIES`).
    pub trusted: bool,
    xff: HeaderValue,
    forwarded_for: String,
    /// The last `Forwarded` element made, with the `Host` it was made for: a connection's
    /// requests nearly always name one host, and formatting the element anew cost ~1,000
    /// instructions per request (callgrind).
    forwarded: Mutex<Option<(HeaderValue, HeaderValue)>>,
}

impl Peer {
    /// Describes a connection's peer.
    pub fn new(ip: IpAddr, trusted_proxies: &[Cidr]) -> Peer {
        let ip = ip.to_canonical();
        let text = ip.to_string();
        // RFC 7239 §6: IPv6 addresses are bracketed and quoted.
        let forwarded_for = match ip {
            IpAddr::V4(_) => format!("for={text}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\""),
        };
        Peer {
            ip,
            trusted: trusted_proxies.iter().any(|net| net.contains(ip)),
            xff: HeaderValue::from_str(&text).expect("an IP address is a valid header value"),
            forwarded_for,
            forwarded: Mutex::new(None),
        }
    }

    /// `for=...;host="...";proto=https` (RFC 7239 §4) for a request to `host`.
    fn forwarded_element(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let Some(host) = host else {
            return forwarded_element(self, None);
        };
        // Never poisoned in practice (nothing panics while it is held); a poisoned cache is
        // still a valid cache.
        let mut cached = self.forwarded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((for_host, element)) = &*cached {
            if for_host == host {
                return Some(element.clone());
            }
        }
        let element = forwarded_element(self, Some(host))?;
        // A copy of the host, not a clone: a parsed value is a view into hyper's read buffer,
        // and holding it would keep that whole buffer alive for the connection's life (+4 KB
        // per idle connection, measured).
        if let Ok(host) = HeaderValue::from_bytes(host.as_bytes()) {
            *cached = Some((host, element.clone()));
        }
        Some(element)
    }
}

/// The header fields the proxy acts on that a message carries, found in one pass over its names.
///
/// Every `contains_key`, `get` or `remove` hashes the name and probes the map, whether or not the
/// field is there, and most requests carry none of these fields but `Host`: one pass that compares
/// lengths and bytes, then lookups only for what is present (and `append` instead of `insert` for
/// what is absent) measured ~700 fewer instructions per request (callgrind).
#[derive(Debug, Clone, Copy, Default)]
struct Fields(u16);

impl Fields {
    const CONNECTION: u16 = 1 << 0;
    const KEEP_ALIVE: u16 = 1 << 1;
    const PROXY_CONNECTION: u16 = 1 << 2;
    const TRANSFER_ENCODING: u16 = 1 << 3;
    const TE: u16 = 1 << 4;
    const UPGRADE: u16 = 1 << 5;
    const HOST: u16 = 1 << 6;
    const X_FORWARDED_FOR: u16 = 1 << 7;
    const X_FORWARDED_PROTO: u16 = 1 << 8;
    const X_FORWARDED_HOST: u16 = 1 << 9;
    const FORWARDED: u16 = 1 << 10;
    /// Any of [`SPOOFABLE`].
    const SPOOFABLE: u16 = 1 << 11;

    fn scan(headers: &HeaderMap) -> Fields {
        Fields(
            headers
                .keys()
                .fold(0, |bits, name| bits | Fields::bit(name)),
        )
    }

    /// The field's bit, or 0 for a field the proxy passes through untouched. Names are lower
    /// case (`HeaderName` guarantees it).
    fn bit(name: &HeaderName) -> u16 {
        let name = name.as_str();
        match (name.len(), name) {
            (2, "te") => Fields::TE,
            (4, "host") => Fields::HOST,
            (7, "upgrade") => Fields::UPGRADE,
            (9, "forwarded") => Fields::FORWARDED,
            (9, "x-real-ip") => Fields::SPOOFABLE,
            (10, "connection") => Fields::CONNECTION,
            (10, "keep-alive") => Fields::KEEP_ALIVE,
            (15, "x-forwarded-for") => Fields::X_FORWARDED_FOR,
            (16, "proxy-connection") => Fields::PROXY_CONNECTION,
            (16, "x-forwarded-host") => Fields::X_FORWARDED_HOST,
            (16, "x-forwarded-port") => Fields::SPOOFABLE,
            (17, "transfer-encoding") => Fields::TRANSFER_ENCODING,
            (17, "x-forwarded-proto") => Fields::X_FORWARDED_PROTO,
            (18, "x-forwarded-prefix") => Fields::SPOOFABLE,
            _ => 0,
        }
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// Whether the request asks for a protocol upgrade (RFC 9110 §7.8): HTTP/1.1, `Upgrade`
/// present and `Connection` naming it.
pub fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    is_upgrade(version, headers, Fields::scan(headers))
}

fn is_upgrade(version: Version, headers: &HeaderMap, fields: Fields) -> bool {
    version == Version::HTTP_11
        && fields.has(Fields::UPGRADE)
        && fields.has(Fields::CONNECTION)
        && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`), `Transfer-Encoding`, and
/// `Upgrade` unless this message is part of an upgrade, in which case `Connection: upgrade`
/// and `Upgrade` are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_fields(headers, Fields::scan(headers), keep_upgrade);
}

/// [`strip_hop_by_hop`] with the fields already scanned: only those present are looked up.
fn strip_fields(headers: &mut HeaderMap, fields: Fields, keep_upgrade: bool) {
    if fields.has(Fields::CONNECTION) {
        // Most clients send only `keep-alive`/`close`; collecting names allocates only when the
        // header names something else. The field's values are taken out as they are read (one
        // lookup, not a `get_all` and a `remove`).
        let mut named: Vec<HeaderName> = Vec::new();
        if let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
            for value in entry.remove_entry_mult().1 {
                let Ok(value) = value.to_str() else { continue };
                for token in value.split(',').map(str::trim) {
                    let skip = token.is_empty()
                        || token.eq_ignore_ascii_case("keep-alive")
                        || token.eq_ignore_ascii_case("close")
                        || token.eq_ignore_ascii_case("upgrade");
                    if !skip {
                        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                            named.push(name);
                        }
                    }
                }
            }
        }
        for name in &named {
            // `Host` is end-to-end whatever a client claims; forwarding headers are set after
            // stripping, so naming them here cannot remove the proxy's own values.
            if name != header::HOST {
                headers.remove(name);
            }
        }
    }
    if fields.has(Fields::KEEP_ALIVE) {
        headers.remove(&KEEP_ALIVE);
    }
    if fields.has(Fields::PROXY_CONNECTION) {
        headers.remove(&PROXY_CONNECTION);
    }
    if fields.has(Fields::TRANSFER_ENCODING) {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if fields.has(Fields::TE) {
        if let Some(te) = headers.remove(header::TE) {
            let trailers = te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
            if trailers {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if fields.has(Fields::UPGRADE) {
        headers.remove(header::UPGRADE);
    }
}

/// Sets `X-Forwarded-For/Proto/Host`, `Forwarded` and `Via` on a request going upstream.
///
/// From an untrusted peer, incoming forwarding headers are replaced (a client cannot make the app
/// believe it is someone else); from a trusted proxy they are kept and the peer is appended.
/// `host` is the authority the client addressed.
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: Option<&HeaderValue>,
    version: Version,
) {
    set_forwarding_fields(headers, Fields::scan(headers), peer, host, version);
}

/// [`set_forwarding_headers`] with the fields already scanned. `fields` may name a field that is
/// gone since (which costs a lookup) but never misses one that is there.
fn set_forwarding_fields(
    headers: &mut HeaderMap,
    fields: Fields,
    peer: &Peer,
    host: Option<&HeaderValue>,
    version: Version,
) {
    let https = HeaderValue::from_static("https");
    let element = peer.forwarded_element(host);
    if peer.trusted {
        let xff = match joined(headers, &X_FORWARDED_FOR) {
            Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", peer.ip))
                .unwrap_or(peer.xff.clone()),
            None => peer.xff.clone(),
        };
        headers.insert(&X_FORWARDED_FOR, xff);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, https);
        }
        if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
            headers.insert(&X_FORWARDED_HOST, host.clone());
        }
        if let Some(element) = element {
            headers.append(&FORWARDED, element);
        }
    } else {
        if fields.has(Fields::SPOOFABLE) {
            for name in &SPOOFABLE {
                headers.remove(name);
            }
        }
        // The client's own values are replaced; where it sent none, `append` adds without first
        // removing.
        let mut set = |bit: u16, name: &HeaderName, value: Option<HeaderValue>| match value {
            Some(value) if fields.has(bit) => {
                headers.insert(name, value);
            }
            Some(value) => {
                headers.append(name, value);
            }
            None if fields.has(bit) => {
                headers.remove(name);
            }
            None => {}
        };
        set(
            Fields::X_FORWARDED_FOR,
            &X_FORWARDED_FOR,
            Some(peer.xff.clone()),
        );
        set(Fields::X_FORWARDED_PROTO, &X_FORWARDED_PROTO, Some(https));
        set(Fields::X_FORWARDED_HOST, &X_FORWARDED_HOST, host.cloned());
        set(Fields::FORWARDED, &FORWARDED, element);
    }
    // RFC 9110 §7.6.3: a gateway MUST send Via on requests it forwards; the pseudonym hides the
    // proxy's host name. Responses get none (that is optional and would only advertise us).
    let via = match version {
        Version::HTTP_2 => "2 proxy",
        Version::HTTP_10 => "1.0 proxy",
        _ => "1.1 proxy",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

/// All values of a (list-valued) header joined with `, `.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else { continue };
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(value);
            }
            None => out = Some(value.to_owned()),
        }
    }
    out
}

/// `for=...;host="...";proto=https` (RFC 7239 §4).
fn forwarded_element(peer: &Peer, host: Option<&HeaderValue>) -> Option<HeaderValue> {
    let host = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.contains(['"', '\\']));
    let value = match host {
        Some(host) => format!("{};host=\"{host}\";proto=https", peer.forwarded_for),
        None => format!("{};proto=https", peer.forwarded_for),
    };
    HeaderValue::from_str(&value).ok()
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 allows one, joined with `; `
/// (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Methods that may be sent again when the connection failed before a response (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What an upstream exchange produced.
pub struct Forwarded {
    pub response: Response<PooledBody>,
    /// Time to the upstream's response head (both attempts, when retried).
    pub upstream_time: Duration,
    /// The upstream's side of an accepted upgrade (`101`), to be joined to the client's with
    /// [`tunnel`] once the `101` has gone out.
    pub upgrade: Option<OnUpgrade>,
}

/// When the upstream response timer of a request without a body is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseTimer {
    /// At once (the request's task may not be polled again until the upstream answers).
    Armed,
    /// Only if the exchange is still pending once the request has been written (the third poll:
    /// see `driving` for the poll that only yields). For callers whose task is polled again
    /// within a bounded time while the request is in flight (an HTTP/1.1 connection's timer
    /// ticks every quarter second then): most upstreams answer first, and a timer never armed
    /// costs nothing, where arming and cancelling one costs ≈ 700 instructions, 1.7 % of a
    /// proxied request. The deadline is the same either way.
    ///
    /// The same callers batch their upstream writes: the request goes out at the task's next
    /// poll, not at once (see `driving`).
    Deferred,
}

/// Forwards `req` to `upstream` and returns its response with hop-by-hop headers removed.
///
/// The response head must arrive within `timeouts.upstream_response` of the request having been
/// sent in full (else [`ProxyError::Timeout`]). An idempotent request without a body whose pooled
/// connection failed before a response arrived is sent once more on a fresh connection.
pub async fn forward(
    client: &UpstreamClient,
    upstream: &Upstream,
    timeouts: &Timeouts,
    peer: &Peer,
    req: Request<Incoming>,
    timer: ResponseTimer,
) -> Result<Forwarded, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let fields = Fields::scan(&parts.headers);
    let upgrade = is_upgrade(parts.version, &parts.headers, fields);
    // The client side of an upgrade is the connection itself (see `http1`), not hyper's.
    parts.extensions.remove::<OnUpgrade>();
    // The copy kept for a retry is taken before the proxy adds its headers (fewer to copy, for a
    // path that is rarely taken); a retry prepares it the same way.
    let retry_parts = (!upgrade && is_idempotent(&parts.method) && body.is_end_stream())
        .then(|| clone_parts(&parts));
    prepare_parts(&mut parts, fields, peer, upgrade);
    // The upstream response timeout starts once the request is complete: at once without a body,
    // or when the client's body has been sent in full.
    let (body, body_sent) = if retry_parts.is_some() {
        (Either::Right(Empty::new()), None)
    } else if body.is_end_stream() {
        (
            Either::Left(ClientBody {
                inner: body,
                sent: None,
            }),
            None,
        )
    } else {
        let (sent, body_sent) = oneshot::channel();
        let body = ClientBody {
            inner: body,
            sent: Some(sent),
        };
        (Either::Left(body), Some(body_sent))
    };

    // A request with a body, or one that asks for an upgrade, gets a connection that runs in a
    // task of its own (see `Conn::detach`).
    let detach = upgrade || body_sent.is_some();
    let batch = timer == ResponseTimer::Deferred && !detach;
    let start = Instant::now();
    let deadline = start + timeouts.upstream_response;
    let timeout_error = || ProxyError::Timeout {
        upstream: upstream.to_string(),
        timeout: timeouts.upstream_response,
    };
    // One future for either way the timer starts, raced against the exchange in one `select!`:
    // the exchange's future (≈ 1.2 KB) then has one place in this function's state, not one per
    // branch (this state is moved, hence copied, for every request).
    let response_deadline = async {
        match body_sent {
            None => {
                if timer == ResponseTimer::Deferred {
                    // A batching exchange's first poll only yields and its second writes; the
                    // timer is armed at the poll after the write, as without batching.
                    SkipPolls(if batch { 2 } else { 1 }).await;
                }
                tokio::time::sleep_until(deadline).await;
            }
            Some(body_sent) => {
                // A dropped sender (the body went away unfinished) starts the timer too.
                let _ = body_sent.await;
                tokio::time::sleep(timeouts.upstream_response).await;
            }
        }
    };
    let first = tokio::select! {
        biased; // the exchange first: no random branch order to draw per poll
        result = exchange(client, upstream, Request::from_parts(parts, body), detach, batch) => result,
        () = response_deadline => return Err(timeout_error()),
    };
    let (mut response, conn) = match (first, retry_parts) {
        (Ok(exchanged), _) => exchanged,
        (
            Err(Failure::Sent {
                reused: true,
                error,
            }),
            Some(parts),
        ) => {
            debug!(upstream = %upstream, error = %error, "retrying idempotent request on a fresh connection");
            let mut parts = parts;
            prepare_parts(&mut parts, fields, peer, false);
            let request = Request::from_parts(parts, Either::Right(Empty::new()));
            // Boxed: a rare path, kept out of every request's future (which is moved per request).
            let fresh = send_fresh(client, upstream, request, false);
            tokio::time::timeout_at(deadline, Box::pin(fresh))
                .await
                .map_err(|_| timeout_error())?
                .map_err(|failure| failure.into_error(upstream))?
        }
        (Err(failure), _) => return Err(failure.into_error(upstream)),
    };
    let upstream_time = start.elapsed();

    // The client's connection has its own version; an HTTP/1.0 upstream must not downgrade it.
    *response.version_mut() = Version::HTTP_11;
    let upgraded = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(response.headers_mut(), upgraded);
    let (upgrade, checkin) = if upgraded {
        // An upgraded connection is the tunnel's, never the pool's.
        (Some(hyper::upgrade::on(&mut response)), None)
    } else {
        (
            None,
            Some((client.clone(), upstream.authority.clone(), conn)),
        )
    };
    Ok(Forwarded {
        response: PooledBody::wrap(response, checkin),
        upstream_time,
        upgrade,
    })
}

/// How an exchange with the upstream failed.
enum Failure {
    Connect(ConnectError),
    /// The request was (or may have been) written; `reused` says whether on a pooled connection.
    Sent {
        reused: bool,
        error: hyper::Error,
    },
}

impl Failure {
    fn into_error(self, upstream: &Upstream) -> ProxyError {
        let upstream = upstream.to_string();
        match self {
            Failure::Connect(source) => ProxyError::Unreachable { upstream, source },
            Failure::Sent { error, .. } => ProxyError::Upstream {
                upstream,
                source: error,
            },
        }
    }
}

/// Sends `req` on a pooled connection, or a new one, up to the response head; `detach` gives the
/// connection a task of its own (see `Conn::detach`), `batch` defers the write to the task's next
/// poll (see [`driving`]). A request that never left because its pooled connection had been
/// closed meanwhile goes out again on a new connection, whatever its method: the upstream has
/// not seen it.
async fn exchange(
    pool: &Pool,
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    detach: bool,
    batch: bool,
) -> Result<(Response<Incoming>, Conn), Failure> {
    let Checkout { mut conn, reused } = pool.checkout(upstream).await.map_err(Failure::Connect)?;
    if detach {
        conn.detach();
    }
    let response = conn.sender.try_send_request(req);
    match driving(&mut conn, response, batch).await {
        Ok(response) => Ok((response, conn)),
        Err(mut e) => match e.take_message() {
            Some(req) if reused => {
                debug!(upstream = %upstream, "pooled connection closed before the request left; sending on a new one");
                Box::pin(send_fresh(pool, upstream, req, detach)).await
            }
            _ => Err(Failure::Sent {
                reused,
                error: e.into_error(),
            }),
        },
    }
}

/// Pending at its first `n` polls without arranging a wake-up (the caller guarantees one, see
/// [`ResponseTimer::Deferred`]), ready at the next.
struct SkipPolls(u8);

impl Future for SkipPolls {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            Poll::Ready(())
        } else {
            self.0 -= 1;
            Poll::Pending
        }
    }
}

/// Sends `req` on a new connection (`detach` as for [`exchange`]).
async fn send_fresh(
    pool: &Pool,
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    detach: bool,
) -> Result<(Response<Incoming>, Conn), Failure> {
    let mut conn = pool.connect(upstream).await.map_err(Failure::Connect)?;
    if detach {
        conn.detach();
    }
    let response = conn.sender.send_request(req);
    let response = driving(&mut conn, response, false)
        .await
        .map_err(|error| Failure::Sent {
            reused: false,
            error,
        })?;
    Ok((response, conn))
}

/// Awaits `response` (a request's response head) while driving `conn`, the connection it went out
/// on, unless that runs in a task of its own (see [`crate::upstream`]).
///
/// With `batch`, the first poll only asks for the next one, at the back of the scheduler's queue:
/// the request is written after the other tasks that are ready now have run, so a burst of
/// requests (the clients' requests that one wake-up of the runtime found) reaches the upstream as
/// a burst of writes, not as writes spread between the parsing of the next requests. Each write
/// to an upstream that is asleep wakes it across cores, an inter-processor interrupt; in a burst,
/// the later writes find it awake. Measured against writing at once (bench `--baseline-bin`,
/// HTTP/1.1, two runs of 4 rounds on an Intel Xeon VM): kernel CPU per request −3 % and −6 %,
/// req/s per busy core ×1.02 and ×1.04, p99 ×0.86 and ×0.85 of nginx's where writing at once
/// had ×0.95 and ×1.08. Not for HTTP/2, whose streams are tasks of their own: there it cost
/// 3.5 %. (Deferring the response's write to the client as well cost more than it saved.)
async fn driving<F: Future>(conn: &mut Conn, response: F, batch: bool) -> F::Output {
    // Outside tokio's budget: polled without a waker (below), a future that ran out of budget
    // would ask for a wake-up nobody receives.
    let mut response = std::pin::pin!(tokio::task::unconstrained(response));
    let mut deferred = batch;
    let mut first = true;
    std::future::poll_fn(|cx| {
        if std::mem::take(&mut deferred) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut no_wake = Context::from_waker(std::task::Waker::noop());
        // Only the connection can complete the response, so the response is polled without a
        // waker as long as the connection is. From the second poll on, the connection is polled
        // without one first too (see `Conn::settle`), and with this task's waker only when it
        // then waits; the first poll only writes the request (nothing can have come back yet).
        let first = std::mem::take(&mut first);
        if first || conn.settle().is_pending() {
            if !first {
                if let Poll::Ready(response) = response.as_mut().poll(&mut no_wake) {
                    return Poll::Ready(response);
                }
            }
            if conn.drive(cx).is_pending() {
                return response.as_mut().poll(&mut no_wake);
            }
        }
        // Ended (the response is then an error) or in a task of its own (`Conn::detach`).
        response.as_mut().poll(cx)
    })
    .await
}

/// Rewrites the request head for the upstream: its URI, version and headers. `fields` are the
/// request's, scanned once by the caller.
fn prepare_parts(parts: &mut Parts, fields: Fields, peer: &Peer, upgrade: bool) {
    let received = parts.version;
    // Room for what is added below (Host, X-Forwarded-For/Proto/Host, Forwarded, Via): one
    // growth of the map instead of several as the headers go in one by one.
    parts.headers.reserve(6);
    strip_fields(&mut parts.headers, fields, upgrade);
    // HTTP/2 carries the authority in `:authority`; HTTP/1.1 upstreams need it as `Host`.
    let host = if fields.has(Fields::HOST) {
        parts.headers.get(header::HOST).cloned()
    } else {
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(host) = &host {
            parts.headers.append(header::HOST, host.clone());
        }
        host
    };
    if received == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    set_forwarding_fields(&mut parts.headers, fields, peer, host.as_ref(), received);

    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Origin form (`/path?query`): the connection already goes to the upstream.
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
}

fn clone_parts(parts: &Parts) -> Parts {
    let (mut clone, ()) = Request::new(()).into_parts();
    clone.method = parts.method.clone();
    clone.uri = parts.uri.clone();
    clone.version = parts.version;
    clone.headers = parts.headers.clone();
    clone
}

/// Copies bytes both ways between an upgraded client connection and the upstream's, until either
/// side closes or no byte has moved either way for `idle` (the client idle timeout: a tunnel is a
/// client connection too).
pub async fn tunnel<C>(client: C, upstream: OnUpgrade, upstream_name: String, idle: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match upstream.await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(upstream = %upstream_name, error = %e, "upgrade failed");
            return;
        }
    };
    let opened = Instant::now();
    let last_activity_ms = Arc::new(AtomicU64::new(0));
    let mut client = Activity::new(client, opened, &last_activity_ms);
    let mut upstream = Activity::new(TokioIo::new(upstream), opened, &last_activity_ms);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let last = opened + Duration::from_millis(last_activity_ms.load(Ordering::Relaxed));
        tokio::select! {
            result = &mut copy => {
                match result {
                    Ok((to_upstream, to_client)) => {
                        debug!(upstream = %upstream_name, to_upstream, to_client, "upgraded connection closed")
                    }
                    Err(e) => debug!(upstream = %upstream_name, error = %e, "upgraded connection failed"),
                }
                return;
            }
            // Woken at the deadline; traffic since then moves the deadline on.
            _ = tokio::time::sleep_until(last + idle) => {
                let last = opened + Duration::from_millis(last_activity_ms.load(Ordering::Relaxed));
                if Instant::now() >= last + idle {
                    debug!(upstream = %upstream_name, phase = "tunnel_idle", timeout = ?idle, "idle upgraded connection closed");
                    return;
                }
            }
        }
    }
}

/// An I/O object that records when it last read any bytes, for the tunnel's idle timeout.
struct Activity<T> {
    inner: T,
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn new(inner: T, opened: Instant, last_ms: &Arc<AtomicU64>) -> Self {
        Activity {
            inner,
            opened,
            last_ms: last_ms.clone(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.opened.elapsed().as_millis() as u64;
            self.last_ms.store(ms, Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_stripping() {
        // (headers in, keep upgrade, header names left)
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("accept", "*/*"),
                ],
                false,
                &["accept"],
            ),
            (
                &[
                    ("Connection", "X-Secret, close"),
                    ("x-secret", "1"),
                    ("x-other", "2"),
                ],
                false,
                &["x-other"],
            ),
            (
                &[
                    ("connection", "a"),
                    ("connection", "b"),
                    ("a", "1"),
                    ("b", "2"),
                ],
                false,
                &[],
            ),
            (
                &[
                    ("proxy-connection", "keep-alive"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
                &[],
            ),
            (&[("te", "gzip")], false, &[]),
            (&[("te", "trailers, deflate")], false, &["te"]),
            (&[("upgrade", "websocket")], false, &[]),
            (
                &[("connection", "Upgrade"), ("upgrade", "websocket")],
                true,
                &["connection", "upgrade"],
            ),
            (
                &[
                    ("connection", "upgrade, x-drop"),
                    ("x-drop", "1"),
                    ("upgrade", "websocket"),
                ],
                true,
                &["connection", "upgrade"],
            ),
        ];
        for (input, keep_upgrade, expected) in cases {
            let mut map = headers(input);
            strip_hop_by_hop(&mut map, *keep_upgrade);
            assert_eq!(names(&map), *expected, "{input:?}");
        }
        let mut map = headers(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn forwarding_headers_untrusted_peer_replaces() {
        let peer = Peer::new("203.0.113.7".parse().unwrap(), &[]);
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        let host = HeaderValue::from_static("app.example:8443");
        set_forwarding_headers(&mut map, &peer, Some(&host), Version::HTTP_11);
        assert_eq!(map["x-forwarded-for"], "203.0.113.7");
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "app.example:8443");
        assert_eq!(
            map["forwarded"],
            "for=203.0.113.7;host=\"app.example:8443\";proto=https"
        );
        assert!(!map.contains_key("x-real-ip"));
        assert_eq!(map["via"], "1.1 proxy");
    }

    #[test]
    fn forwarding_headers_trusted_peer_appends() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let peer = Peer::new("10.1.1.1".parse().unwrap(), &trusted);
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "front.example"),
            ("forwarded", "for=198.51.100.1"),
            ("via", "1.1 front"),
        ]);
        set_forwarding_headers(&mut map, &peer, None, Version::HTTP_2);
        assert_eq!(
            map["x-forwarded-for"],
            "198.51.100.1, 198.51.100.2, 10.1.1.1"
        );
        assert_eq!(map["x-forwarded-host"], "front.example");
        let forwarded: Vec<_> = map.get_all("forwarded").iter().collect();
        assert_eq!(forwarded, ["for=198.51.100.1", "for=10.1.1.1;proto=https"]);
        let via: Vec<_> = map.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 front", "2 proxy"]);
    }

    #[test]
    fn field_scan_finds_every_field_the_proxy_acts_on() {
        let acted_on = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "upgrade",
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
        ];
        let mut all = 0;
        for name in acted_on {
            let bit = Fields::bit(&HeaderName::from_static(name));
            assert_ne!(bit, 0, "{name}");
            all |= bit;
        }
        assert_eq!(
            all,
            (1 << 12) - 1,
            "one bit per field (the spoofable ones share one)"
        );
        // SPOOFABLE lists exactly the fields that share the spoofable bit.
        for name in &SPOOFABLE {
            assert_eq!(Fields::bit(name), Fields::SPOOFABLE, "{name}");
        }
        for name in [
            "accept",
            "cookie",
            "user-agent",
            "content-length",
            "x-forwarded-foo",
            "via",
            "tex",
            "hosts",
        ] {
            assert_eq!(Fields::bit(&HeaderName::from_static(name)), 0, "{name}");
        }
        // Mixed-case input is lower-cased by `HeaderName`.
        let name = HeaderName::from_bytes(b"X-Forwarded-For").unwrap();
        assert_eq!(Fields::bit(&name), Fields::X_FORWARDED_FOR);
    }

    #[test]
    fn prepared_request_head() {
        let peer = Peer::new("203.0.113.7".parse().unwrap(), &[]);
        // A client naming its own X-Forwarded-For in Connection, and sending one: the scan saw it
        // before stripping removed it; the proxy's value must still be the only one.
        let mut req = Request::get("https://app.example/a?b=1")
            .header("connection", "x-forwarded-for, keep-alive")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-real-ip", "1.2.3.4")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        *req.version_mut() = Version::HTTP_11;
        let (mut parts, ()) = req.into_parts();
        let fields = Fields::scan(&parts.headers);
        prepare_parts(&mut parts, fields, &peer, false);
        assert_eq!(parts.uri, "/a?b=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(
            names(&parts.headers),
            [
                "accept",
                "forwarded",
                "host",
                "via",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        let xff: Vec<_> = parts.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["203.0.113.7"]);
        assert_eq!(parts.headers["host"], "app.example");
        assert_eq!(parts.headers["x-forwarded-host"], "app.example");
        assert_eq!(
            parts.headers["forwarded"],
            "for=203.0.113.7;host=\"app.example\";proto=https"
        );

        // HTTP/2: the authority becomes Host; a Host header, when sent, wins; cookies are joined.
        for (host_header, expected) in [
            (None, "h2.example"),
            (Some("other.example"), "other.example"),
        ] {
            let mut req = Request::get("https://h2.example/")
                .header("cookie", "a=1")
                .header("cookie", "b=2");
            if let Some(host) = host_header {
                req = req.header("host", host);
            }
            let mut req = req.body(()).unwrap();
            *req.version_mut() = Version::HTTP_2;
            let (mut parts, ()) = req.into_parts();
            let fields = Fields::scan(&parts.headers);
            prepare_parts(&mut parts, fields, &peer, false);
            assert_eq!(parts.headers["host"], expected);
            assert_eq!(parts.headers.get_all("host").iter().count(), 1);
            assert_eq!(parts.headers["x-forwarded-host"], expected);
            assert_eq!(parts.headers["cookie"], "a=1; b=2");
            assert_eq!(parts.headers["via"], "2 proxy");
            // The same host again comes from the connection's cache: the same value.
            assert_eq!(
                parts.headers["forwarded"],
                format!("for=203.0.113.7;host=\"{expected}\";proto=https").as_str()
            );
        }
    }

    #[test]
    fn ipv6_peer_is_quoted_in_forwarded() {
        let peer = Peer::new("2001:db8::1".parse().unwrap(), &[]);
        let mut map = HeaderMap::new();
        set_forwarding_headers(&mut map, &peer, None, Version::HTTP_11);
        assert_eq!(map["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(map["x-forwarded-for"], "2001:db8::1");
        let mapped = Peer::new("::ffff:192.0.2.1".parse().unwrap(), &[]);
        assert_eq!(mapped.ip.to_string(), "192.0.2.1");
    }

    #[test]
    fn upgrade_detection_and_cookie_join() {
        let up = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade_request(Version::HTTP_11, &up));
        assert!(!is_upgrade_request(Version::HTTP_2, &up));
        assert!(!is_upgrade_request(
            Version::HTTP_11,
            &headers(&[("upgrade", "websocket")])
        ));

        let mut cookies = headers(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut cookies);
        assert_eq!(cookies["cookie"], "a=1; b=2");
        assert_eq!(cookies.get_all("cookie").iter().count(), 1);
    }

    /// A waker that counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the upstream has received so far (a read that does not wait).
    fn received(upstream: &mut std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0; 4096];
        match upstream.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("upstream read: {e}"),
        }
    }

    /// `driving` with `batch` writes nothing at its first poll, only asks for the next one; then
    /// it writes. Without `batch` the first poll writes.
    #[tokio::test]
    async fn a_batched_request_goes_out_at_the_next_poll() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream::parse(&format!("http://{}", listener.local_addr().unwrap()))
            .expect("an upstream URL");
        let second = Duration::from_secs(1);
        let timeouts = Timeouts {
            tls_handshake: second,
            header_read: second,
            client_idle: second,
            upstream_connect: second,
            upstream_response: second,
            upstream_idle: second,
            shutdown_grace: second,
            cert_watch_interval: second,
        };
        let limits = Limits {
            max_connections: 1,
            max_header_bytes: 8192,
            max_headers: 100,
            upstream_max_idle: 1,
        };
        let pool = Pool::new(&timeouts, &limits);
        for batch in [true, false] {
            let mut conn = pool.connect(&upstream).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            let mut accepted = accepted.into_std().unwrap();
            accepted.set_nonblocking(true).unwrap();
            let request = Request::get("/batched")
                .header(header::HOST, "upstream")
                .body(Either::Right(Empty::new()))
                .unwrap();
            let response = conn.sender.try_send_request(request);
            let mut exchange = std::pin::pin!(driving(&mut conn, response, batch));
            let wakes = Arc::new(CountingWaker(Default::default()));
            let waker = std::task::Waker::from(wakes.clone());
            let mut cx = Context::from_waker(&waker);

            assert!(exchange.as_mut().poll(&mut cx).is_pending());
            if batch {
                assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "asks for the next poll");
                assert_eq!(
                    received(&mut accepted),
                    b"",
                    "nothing written at the first poll"
                );
                assert!(exchange.as_mut().poll(&mut cx).is_pending());
            }
            // Written by a `write(2)` on loopback: there when the poll returns.
            let head = received(&mut accepted);
            assert!(
                head.starts_with(b"GET /batched HTTP/1.1\r\n"),
                "batch {batch}: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
    }
}
