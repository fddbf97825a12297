//! Forwarding one request to the upstream (RFC 9110 §7.6): its head prepared for the upstream
//! ([`headers`]), sent on a pooled connection within the upstream response timeout, retried once
//! on a fresh connection when that is safe, and the response's hop-by-hop fields stripped. An
//! accepted upgrade hands the upstream's side to [`tunnel`].

pub mod admit;
pub mod headers;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use crate::config::{RequestRules, Timeouts, Upstream};
use crate::error::{ConnectError, ProxyError};
use crate::upstream::exchange::{await_response, response_timeout};
use crate::upstream::{Checkout, ClientBody, Pool, PooledBody, UpstreamBody, UpstreamConn};
pub use admit::admit;
use headers::{
    allowed_upgrade, drop_underscored, is_upgrade, join_cookies, set_forwarding_fields,
    strip_fields, strip_hop_by_hop, upgrade_answers, HeaderScan, Peer,
};

/// What forwarding a request produced.
pub struct Proxied {
    pub response: Response<PooledBody>,
    /// Time to the upstream's response head (both attempts, when retried).
    pub upstream_time: Duration,
    /// The upstream's side of an accepted upgrade (`101`), to be joined to the client's with
    /// [`tunnel::tunnel`] once the `101` has gone out.
    pub upgrade: Option<OnUpgrade>,
}

/// Forwards `req` to `upstream` and returns its response with hop-by-hop headers removed.
///
/// The response head must arrive within `timeouts.upstream_response` of the request having been
/// sent in full (else [`ProxyError::Timeout`]). An idempotent request without a body whose pooled
/// connection failed before a response arrived is sent once more on a fresh connection. `rules`
/// say which header fields and upgrades go on, and how large a body may be. `batch_writes` lets
/// a request without a body go upstream at its task's next poll (see [`await_response`]): for a
/// task that carries one client connection's requests, not for an HTTP/2 stream's own task.
pub async fn forward(
    pool: &Arc<Pool>,
    upstream: &Upstream,
    timeouts: &Timeouts,
    rules: &RequestRules,
    peer: &Peer,
    req: Request<Incoming>,
    batch_writes: bool,
) -> Result<Proxied, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let fields = HeaderScan::scan(&parts.headers);
    // Only the protocols the rules allow are asked for; a request naming none of them goes on
    // as a plain request (its `Upgrade` stripped as hop-by-hop).
    let upgrade = is_upgrade(parts.version, &parts.headers, fields)
        .then(|| allowed_upgrade(&parts.headers, |p| rules.allows_upgrade(p)))
        .flatten();
    // The client side of an upgrade is the client connection itself, not hyper's.
    parts.extensions.remove::<OnUpgrade>();
    let drop_underscores = !rules.allow_underscore_headers && fields.has(HeaderScan::UNDERSCORE);
    // The copy kept for a retry is taken before the proxy adds its headers (fewer to copy, for a
    // path that is rarely taken); a retry prepares it the same way.
    let retry_parts = (upgrade.is_none() && is_idempotent(&parts.method) && body.is_end_stream())
        .then(|| clone_parts(&parts));
    prepare_parts(&mut parts, fields, peer, upgrade.as_ref(), drop_underscores);
    // A body of unknown length (chunked from an HTTP/1.1 client, or HTTP/2 without
    // `Content-Length`) goes on chunked. Stripping hop-by-hop fields removed the client's
    // `Transfer-Encoding`, and without it hyper would send a GET's body as no body at all.
    if !body.is_end_stream() && body.size_hint().exact().is_none() {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    // The upstream response timeout starts once the request is complete: at once without a body,
    // or when the client's body has been sent in full.
    let (body, body_sent) = if retry_parts.is_some() {
        (Either::Right(Empty::new()), None)
    } else if body.is_end_stream() {
        (
            Either::Left(ClientBody::new(
                body,
                None,
                pool.metrics().clone(),
                rules.max_body_bytes,
                timeouts.body_read,
            )),
            None,
        )
    } else {
        let (sent, body_sent) = oneshot::channel();
        (
            Either::Left(ClientBody::new(
                body,
                Some(sent),
                pool.metrics().clone(),
                rules.max_body_bytes,
                timeouts.body_read,
            )),
            Some(body_sent),
        )
    };

    // A request with a body, or one that asks for an upgrade, gets a connection that runs in a
    // task of its own (see `UpstreamConn::detach`).
    let detach = upgrade.is_some() || body_sent.is_some();
    // A detached connection has a task of its own, whose polls are not the request's.
    let batch = batch_writes && !detach;
    let start = Instant::now();
    let deadline = start + timeouts.upstream_response;
    let timeout_error = || ProxyError::Timeout {
        upstream: upstream.to_string(),
        timeout: timeouts.upstream_response,
    };
    let timed_out = response_timeout(body_sent, deadline, timeouts.upstream_response);
    // The exchange and the timer raced in one `select!`, so the exchange's future has one place
    // in this function's state, not one per way the timer starts.
    let first = tokio::select! {
        biased; // the exchange first: no random branch order to draw per poll
        result = exchange(pool, upstream, Request::from_parts(parts, body), detach, batch) => result,
        () = timed_out => return Err(timeout_error()),
    };
    let (mut response, conn) = match (first, retry_parts) {
        (Ok(exchanged), _) => exchanged,
        (
            Err(Failure::Sent {
                reused: true,
                error,
            }),
            Some(mut parts),
        ) => {
            debug!(upstream = %upstream, error = %error, "retrying idempotent request on a fresh connection");
            pool.metrics().upstream_retry();
            prepare_parts(&mut parts, fields, peer, None, drop_underscores);
            let request = Request::from_parts(parts, Either::Right(Empty::new()));
            // Boxed: a rare path, kept out of every request's future (which is moved per request).
            let fresh = send_fresh(pool, upstream, request, false);
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
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        // A tunnel only for the protocol asked for: anything else the upstream switched to
        // (`h2c` from a lenient backend, or a 101 nobody asked for) would carry requests past
        // the proxy's rules. The connection is dropped, never pooled.
        let answered = upgrade
            .as_ref()
            .is_some_and(|asked| upgrade_answers(response.headers(), asked));
        if !answered {
            let got = response
                .headers()
                .get(header::UPGRADE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ProxyError::UpgradeMismatch {
                upstream: upstream.to_string(),
                got,
            });
        }
    }
    strip_hop_by_hop(response.headers_mut(), upgraded);
    let (upgrade, checkin) = if upgraded {
        // An upgraded connection is the tunnel's, never the pool's.
        (Some(hyper::upgrade::on(&mut response)), None)
    } else {
        (None, Some((pool.clone(), upstream.clone(), conn)))
    };
    Ok(Proxied {
        response: PooledBody::wrap(response, checkin),
        upstream_time,
        upgrade,
    })
}

/// Methods that may be sent again when the connection failed before a response (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
            Failure::Sent { error, .. } => ProxyError::exchange_failed(upstream, error),
        }
    }
}

/// Sends `req` on a pooled connection, or a new one, up to the response head; `detach` gives the
/// connection a task of its own, `batch` defers the write to the task's next poll (see
/// [`await_response`]). A request that never left because its pooled connection had been closed
/// meanwhile goes out again on a new connection, whatever its method: the upstream has not seen
/// it.
async fn exchange(
    pool: &Pool,
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    detach: bool,
    batch: bool,
) -> Result<(Response<Incoming>, UpstreamConn), Failure> {
    let Checkout { mut conn, reused } = pool.checkout(upstream).await.map_err(Failure::Connect)?;
    if detach {
        conn.detach();
    }
    let response = conn.sender.try_send_request(req);
    match await_response(&mut conn, response, batch).await {
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

/// Sends `req` on a new connection (`detach` as for [`exchange`]).
async fn send_fresh(
    pool: &Pool,
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    detach: bool,
) -> Result<(Response<Incoming>, UpstreamConn), Failure> {
    let mut conn = pool.connect(upstream).await.map_err(Failure::Connect)?;
    if detach {
        conn.detach();
    }
    let response = conn.sender.send_request(req);
    let response = await_response(&mut conn, response, false)
        .await
        .map_err(|error| Failure::Sent {
            reused: false,
            error,
        })?;
    Ok((response, conn))
}

/// Rewrites the request head for the upstream: its URI, version and headers. `fields` are the
/// request's, scanned once by the caller; `upgrade` is the `Upgrade` value to forward, if any.
fn prepare_parts(
    parts: &mut Parts,
    fields: HeaderScan,
    peer: &Peer,
    upgrade: Option<&HeaderValue>,
    drop_underscores: bool,
) {
    let received = parts.version;
    // Room for what is added below (Host, X-Forwarded-For/Proto/Host, Forwarded, Via,
    // X-Forwarded-Client-Cert): one growth of the map instead of several as they go in.
    parts.headers.reserve(7);
    if drop_underscores {
        drop_underscored(&mut parts.headers);
    }
    strip_fields(&mut parts.headers, fields, upgrade.is_some());
    if let Some(upgrade) = upgrade {
        parts.headers.insert(header::UPGRADE, upgrade.clone());
    }
    // HTTP/2 carries the authority in `:authority`; HTTP/1.1 upstreams need it as `Host`.
    let host = if fields.has(HeaderScan::HOST) {
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

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names
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
        let fields = HeaderScan::scan(&parts.headers);
        prepare_parts(&mut parts, fields, &peer, None, true);
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
            let fields = HeaderScan::scan(&parts.headers);
            prepare_parts(&mut parts, fields, &peer, None, true);
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
}
