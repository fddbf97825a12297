//! One request's way through the proxy: the CORS verdict, then either the proxy's own answer or
//! the upstream's response, the CORS and HSTS response headers, and one access-log line (and the
//! request's metrics) when the response body ends.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::conn::ClientConn;
use super::send_timeout;
use crate::config::Upstream;
use crate::cors::{self, RateLimiter, RequestInfo, Verdict};
use crate::error::{wants_json, ProxyError};
use crate::forward;
use crate::metrics::{ClientTimeout, Protocol};
use crate::upstream::PooledBody;

/// "request failed" lines that may be written in a burst, then per second: an upstream that
/// fails, or clients that make it fail, must not turn every request into a warning line.
static FAILURE_LOG: RateLimiter = RateLimiter::new(20.0, 2.0);

/// The status logged for a request whose client went away before a response existed (nginx's).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The body of every response the proxy sends: the upstream's stream or a proxy-made body,
/// counting bytes and writing the access-log line when it ends or is dropped.
pub struct ProxyBody {
    inner: Either<PooledBody, Full<Bytes>>,
    log: AccessLog,
}

struct AccessLog {
    conn: Arc<ClientConn>,
    protocol: Protocol,
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
        let total = self.start.elapsed();
        self.conn.proxy.metrics.request(
            self.protocol,
            &self.method,
            self.status,
            total,
            self.upstream_time,
            self.bytes,
        );
        info!(
            target: "access",
            peer = %self.conn.peer_addr,
            tls = self.conn.tls_version,
            protocol = self.conn.protocol,
            method = %self.method,
            path = self.uri.path(),
            status = self.status.as_u16(),
            bytes = self.bytes,
            upstream_ms = self.upstream_time.map(millis),
            total_ms = millis(total),
            "request"
        );
    }
}

/// Milliseconds to the microsecond, as the access log writes durations.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
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
        let mut yielded_data = false;
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.log.bytes += data.len() as u64;
                yielded_data = true;
            }
        }
        // An HTTP/2 stream's send timeout runs while a yielded frame waits for the client's
        // window, never while the body waits on the upstream (see `StreamExecutor`).
        if this.log.protocol == Protocol::Http2 {
            send_timeout::body_polled(yielded_data);
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

/// Answers one request (HTTP/1.1 or HTTP/2) on `conn`.
pub(crate) async fn handle(
    conn: Arc<ClientConn>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    conn.request_started();
    let mut log = AccessLog {
        conn: conn.clone(),
        protocol: if req.version() == Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        },
        method: req.method().clone(),
        uri: req.uri().clone(),
        // Logged as is when the client goes away before a response exists.
        status: StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST),
        bytes: 0,
        start,
        upstream_time: None,
    };
    let proxy = &conn.proxy;
    let json = wants_json(req.headers());

    // Refused before CORS: CORS judges the authority, which must first be the one forwarded.
    let admitted = forward::admit(
        req.method(),
        req.uri(),
        req.version(),
        req.headers(),
        proxy.fixed.rules.max_body_bytes,
    );
    let (mut response, cors) = match admitted {
        Err(refused) => (
            failed(&conn, None, ProxyError::Refused(refused), json),
            None,
        ),
        Ok(host) => {
            if let Some(host) = host {
                req.headers_mut().insert(header::HOST, host);
            }
            forward_or_answer(&conn, &mut log, req, json).await
        }
    };
    if let Some(cors) = cors {
        cors.apply(response.headers_mut());
    }
    if let Some(hsts) = &proxy.fixed.hsts {
        response
            .headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
    log.status = response.status();
    Ok(response.map(|inner| ProxyBody { inner, log }))
}

/// The CORS verdict on an admitted request, then the proxy's own answer or the upstream's
/// response, with the CORS headers to add to it.
async fn forward_or_answer(
    conn: &Arc<ClientConn>,
    log: &mut AccessLog,
    req: Request<Incoming>,
    json: bool,
) -> (
    Response<Either<PooledBody, Full<Bytes>>>,
    Option<cors::ResponseCors>,
) {
    let proxy = &conn.proxy;
    let limit = proxy.fixed.limits.max_headers;
    let (verdict, upstream) = {
        let live = proxy.reloadable_guard();
        let info = RequestInfo {
            method: req.method(),
            headers: req.headers(),
            path: req.uri().path(),
            authority: req.uri().authority().map(|a| a.as_str()).or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            }),
            wants_json: json,
        };
        (
            cors::evaluate(&live.cors, &info, &proxy.metrics),
            live.upstream.clone(),
        )
    };

    match verdict {
        Verdict::Respond(response) => (response.map(|b| Either::Right(Full::new(b))), None),
        Verdict::Forward(cors) => {
            let result = if req.headers().len() > limit {
                // HTTP/1.1 is held to the limit by hyper; HTTP/2 only by the header list size.
                Err(ProxyError::TooManyHeaders {
                    count: req.headers().len(),
                    limit,
                })
            } else {
                // An HTTP/2 stream runs in a task of its own: nothing to batch its write with.
                let batch_writes = req.version() != Version::HTTP_2;
                forward::forward(
                    &proxy.pool,
                    &upstream,
                    &proxy.fixed.timeouts,
                    &proxy.fixed.rules,
                    &conn.peer,
                    req,
                    batch_writes,
                )
                .await
            };
            let response = match result {
                Ok(proxied) => {
                    log.upstream_time = Some(proxied.upstream_time);
                    if let Some(upgrade) = proxied.upgrade {
                        conn.set_tunnel(upgrade);
                    }
                    proxied.response.map(Either::Left)
                }
                Err(e) => failed(conn, Some(&upstream), e, json),
            };
            (response, Some(cors))
        }
    }
}

/// The proxy's answer to a request it could not or would not forward: logged (at debug when the
/// client is to blame, which a hostile client must not turn into a flood of warnings) and
/// counted.
fn failed(
    conn: &ClientConn,
    upstream: Option<&Upstream>,
    e: ProxyError,
    json: bool,
) -> Response<Either<PooledBody, Full<Bytes>>> {
    let metrics = &conn.proxy.metrics;
    if e.is_client_error() {
        debug!(cause = e.cause(), error = %e, "request refused");
    } else if let Some(suppressed) = FAILURE_LOG.admit(std::time::Instant::now()) {
        let upstream = upstream.map(ToString::to_string);
        warn!(upstream, cause = e.cause(), error = %e, suppressed, "request failed");
    } else {
        debug!(cause = e.cause(), error = %e, "request failed");
    }
    match &e {
        ProxyError::Refused(refused) => metrics.refused(*refused),
        ProxyError::BodyReadTimeout { .. } => metrics.client_timeout(ClientTimeout::BodyRead),
        e if e.status() == StatusCode::BAD_GATEWAY => metrics.gateway_error(false),
        e if e.status() == StatusCode::GATEWAY_TIMEOUT => metrics.gateway_error(true),
        _ => {}
    }
    e.to_response(json).map(Either::Right)
}
