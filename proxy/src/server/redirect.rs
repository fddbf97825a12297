//! Plain HTTP: the optional plain-HTTP listener, where every request gets `308 Permanent Redirect`
//! to the same host and path on https, and plain-HTTP requests that reach the HTTPS port, which
//! get that redirect too when the listener is on, or else a 400 saying to use https. With ACME's
//! HTTP-01 the listener also answers the CA's `/.well-known/acme-challenge/` requests.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, error, info};

use super::accept::accept;
use crate::acme::challenge::Http01Tokens;

/// Answers every plain-HTTP request with `308 Permanent Redirect` to the same host and path on
/// https at `https_port`, until `shutdown` resolves; with `http01`, the pending ACME HTTP-01
/// challenges are answered instead (RFC 8555 §8.3).
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    header_read_timeout: Duration,
    http01: Option<Arc<Http01Tokens>>,
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
            accepted = accept(&listener, "redirect") => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let http01 = http01.clone();
        let service = service_fn(move |req| {
            let answer = http01
                .as_ref()
                .and_then(|tokens| tokens.respond(&req))
                .unwrap_or_else(|| redirect(&req, https_port));
            async move { Ok::<_, Infallible>(answer) }
        });
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "redirect connection failed");
            }
        });
    }
}

/// The first byte of every TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether a connection whose first byte is `first` speaks plain HTTP/1 rather than TLS (a request
/// line starts with an upper-case method name).
pub(super) fn is_plain_http(first: u8) -> bool {
    first != TLS_HANDSHAKE_RECORD && first.is_ascii_uppercase()
}

/// Answers a plain-HTTP connection to the HTTPS port: with `redirect`, the same 308 as the
/// redirect listener; otherwise a 400 whose body says to use https. The connection is closed after
/// the answer.
pub(super) async fn answer_plain_http(
    tcp: tokio::net::TcpStream,
    https_port: u16,
    redirect_on: bool,
    header_read_timeout: Duration,
) {
    info!("plain HTTP on the HTTPS port; answering in plain HTTP (use https://)");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(false);
    let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
        let response = if redirect_on {
            redirect(&req, https_port)
        } else {
            use_https(&req, https_port)
        };
        Ok::<_, Infallible>(response)
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
        debug!(error = %e, "plain-HTTP connection on the HTTPS port failed");
    }
}

/// The 400 for a plain-HTTP request on the HTTPS port: the https URL to use instead.
fn use_https<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    let body = match https_location(req, https_port) {
        Some(location) => format!("400 Bad Request: this port speaks HTTPS only; use {location}\n"),
        None => "400 Bad Request: this port speaks HTTPS only; use https://\n".to_owned(),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `https://host[:port]/path?query` for `req`, or `None` without a usable `Host`.
fn https_location<B>(req: &Request<B>, https_port: u16) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    Some(if https_port == 443 {
        format!("https://{}{path}", host.host())
    } else {
        format!("https://{}:{https_port}{path}", host.host())
    })
}

/// The redirect for one plain-HTTP request (400 without a usable `Host`).
pub fn redirect<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    let Some(location) = https_location(req, https_port) else {
        let mut response =
            Response::new(Full::new(Bytes::from_static(b"400 Bad Request: no Host\n")));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
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
    fn plain_http_is_told_from_tls_by_its_first_byte() {
        for (first, plain) in [
            (0x16, false),
            (b'G', true),
            (b'P', true),
            (b'O', true),
            (0x80, false),
            (b'g', false),
        ] {
            assert_eq!(is_plain_http(first), plain, "{first:#x}");
        }
    }

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
