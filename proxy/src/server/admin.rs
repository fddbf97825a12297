//! The optional plain-HTTP admin listener for operators (`PROXY_ADMIN_LISTEN`): liveness
//! (`/healthz`), readiness (`/readyz`) and the metrics (`/metrics`), with a router of its own.
//! It never shares the public port, and it serves through the shutdown drain, when readiness
//! turns false so that a load balancer stops sending while in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, error, info};

use super::accept::accept;
use super::state::Proxy;
use crate::metrics;
use crate::upstream::connect::connect;

/// A new upstream connection made this recently (by a request) shows the upstream accepts them,
/// without a probe of its own.
pub const READY_RECENT: Duration = Duration::from_secs(5);
/// The longest a readiness probe waits for the upstream to accept a connection (the upstream
/// connect timeout, when shorter), so a probe never outlasts a health checker's own timeout.
pub const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, "listening (admin: /healthz, /readyz, /metrics)");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.fixed.timeouts.header_read);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener, "admin") => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(answer(&proxy, &req).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "admin connection failed");
            }
        });
    }
}

/// The router: three paths, `GET` (or `HEAD`) only.
async fn answer<B>(proxy: &Proxy, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness(proxy).await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => {
            proxy.metrics.set_upstream_idle(proxy.upstream_idle());
            match proxy.metrics.encode() {
                Ok(body) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(metrics::CONTENT_TYPE),
                    );
                    response
                }
                Err(e) => {
                    error!(error = %e, "encoding the metrics failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
                }
            }
        }
    }
}

/// Ready: not draining, a certificate loaded, and the upstream accepted a new connection within
/// [`READY_RECENT`] or accepts one now. The error is the reason, for the response body.
async fn readiness(proxy: &Proxy) -> Result<(), String> {
    if proxy.draining() {
        return Err("shutting down (draining in-flight requests)".to_owned());
    }
    if !proxy.metrics.certificate_loaded() {
        return Err("no certificate loaded".to_owned());
    }
    if proxy.metrics.upstream_recently_ok(READY_RECENT) {
        return Ok(());
    }
    // A probe of its own, not counted as the proxy's upstream traffic: the connection is
    // dropped at once.
    let upstream = proxy.reloadable().upstream.clone();
    let timeout = READY_PROBE_TIMEOUT.min(proxy.fixed.timeouts.upstream_connect);
    match connect(&upstream, timeout).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "upstream {upstream} does not accept connections: {e}"
        )),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
