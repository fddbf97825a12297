//! The optional plain-HTTP listener: every request gets `308 Permanent Redirect` to the same host
//! and path on https.

use std::convert::Infallible;
use std::future::Future;
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
            accepted = accept(&listener, "redirect") => accepted,
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
