//! The HTTPS server: the accept loop (one slot per connection under `PROXY_MAX_CONNECTIONS`), the
//! TLS handshake, the protocol ALPN agreed on, and the graceful drain at shutdown.
//!
//! - [`state`]: what every connection shares, and the reload;
//! - `conn`: one client connection's state and deadlines;
//! - `http1`: HTTP/1.1 connections (parking, tunnels); HTTP/2 is hyper's connection, run here;
//! - `handle`: one request, from the CORS verdict to the access-log line;
//! - `send_timeout`: the send timeout, for a connection's writes and for each HTTP/2 stream;
//! - [`redirect`]: the optional plain-HTTP listener that redirects to https;
//! - [`admin`]: the optional plain-HTTP listener for operators (health, readiness, metrics).

mod accept;
pub mod admin;
mod conn;
mod handle;
mod http1;
pub mod redirect;
mod send_timeout;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::server::conn::{http1 as hyper_http1, http2 as hyper_http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::client_auth;
use crate::metrics::{ClientTimeout, HandshakeFailure, TlsVersion};
use accept::accept;
pub use admin::serve_admin;
use conn::ClientConn;
use handle::handle;
pub use redirect::serve_redirect;
use send_timeout::{SendTimeoutIo, StreamExecutor};
pub use state::{CertReloader, Proxy};

/// Serves HTTPS (HTTP/1.1 and HTTP/2) on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish within the shutdown grace period, and returns.
pub async fn run(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builders = Arc::new(Builders::new(&proxy));
    let acceptor = tokio_rustls::TlsAcceptor::from(proxy.tls.clone());
    let max_connections = proxy.fixed.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let addr = listener.local_addr()?;
    info!(%addr, upstream = %proxy.reloadable().upstream, "listening (https)");

    tokio::pin!(shutdown);
    loop {
        // Waiting for a slot before accepting keeps surplus clients in the kernel's backlog.
        // The semaphore is never closed, so acquiring fails only if that changes: stop then.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                proxy.metrics.slot_wait();
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener, "https") => accepted,
            () = &mut shutdown => break,
        };
        // `client`: the verified client certificate's names, with mutual TLS on.
        let span = info_span!(
            "conn",
            %peer,
            tls = tracing::field::Empty,
            alpn = tracing::field::Empty,
            client = tracing::field::Empty
        );
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
    proxy.start_draining();
    let grace = proxy.fixed.timeouts.shutdown_grace;
    let open = max_connections - slots.available_permits();
    info!(open_connections = open, grace = ?grace, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, slots.acquire_many(all)).await {
        Ok(_) => info!("shutdown complete: all connections drained"),
        Err(_) => warn!(
            cut = max_connections - slots.available_permits(),
            "shutdown grace period over: closing remaining connections"
        ),
    }
    Ok(())
}

/// Streams an HTTP/2 client may open and reset before the proxy has accepted them, before it
/// answers GOAWAY (the "rapid reset" attack, CVE-2023-44487): h2's own default, set here so it
/// cannot change under a dependency update.
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the proxy may reset for a client's protocol errors on one connection before it answers
/// GOAWAY (a client that keeps provoking resets, RUSTSEC-2024-0003): hyper's default, and nginx's
/// order of magnitude for abusive resets.
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The connection builders, one per protocol; ALPN names the protocol in the handshake.
struct Builders {
    http1: hyper_http1::Builder,
    http2: hyper_http2::Builder<StreamExecutor>,
}

impl Builders {
    fn new(proxy: &Proxy) -> Builders {
        let settings = &proxy.fixed;
        let limits = &settings.limits;
        let header_list_size = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
        let mut http1 = hyper_http1::Builder::new();
        // No header-read timer from hyper: it would register a new timer for every request.
        // `ClientConn` keeps that deadline instead, checked by the connection's own timer.
        http1
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        // Each stream's task keeps the send timeout for its response (see `StreamExecutor`).
        let executor = StreamExecutor::new(settings.timeouts.send, proxy.metrics.clone());
        let mut http2 = hyper_http2::Builder::new(executor);
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(header_list_size)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
        Builders { http1, http2 }
    }
}

/// The protocol the TLS handshake agreed on. Without ALPN it is HTTP/1.1: HTTP/2 over TLS must
/// be negotiated with ALPN (RFC 9113 §3.2).
enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    /// The ALPN name of the protocol.
    fn name(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
        }
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
    let metrics = proxy.metrics.clone();
    let _open = metrics.client_connection();
    let timeouts = proxy.fixed.timeouts;
    // A browser or curl pointed at http:// on this port: answer in its own protocol rather than
    // let the TLS handshake fail into an unreadable error.
    let handshake_deadline = Instant::now() + timeouts.tls_handshake;
    let mut first = [0u8; 1];
    if let Ok(Ok(1)) = tokio::time::timeout_at(handshake_deadline, tcp.peek(&mut first)).await {
        if redirect::is_plain_http(first[0]) {
            let port = proxy.fixed.redirect_https_port.unwrap_or_else(|| {
                tcp.local_addr()
                    .map_or(proxy.fixed.listen.port(), |a| a.port())
            });
            let redirect_on = proxy.fixed.redirect_http.is_some();
            redirect::answer_plain_http(tcp, port, redirect_on, timeouts.header_read).await;
            drop(permit);
            return;
        }
    }
    let tls = match tokio::time::timeout_at(handshake_deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // The verifier logs the certificates it refuses; rustls refuses a missing one itself.
            if client_auth::verifier::missing_certificate(&e) {
                warn!(
                    phase = "tls_handshake",
                    reason = "no certificate",
                    "client certificate refused"
                );
            }
            debug!(phase = "tls_handshake", error = %e, "TLS handshake failed");
            metrics.handshake_failed(HandshakeFailure::of_io(&e));
            return;
        }
        Err(_) => {
            debug!(phase = "tls_handshake", timeout = ?timeouts.tls_handshake, "TLS handshake timed out");
            metrics.handshake_failed(HandshakeFailure::Timeout);
            return;
        }
    };
    // An ACME TLS-ALPN-01 validation: the handshake itself was the answer (RFC 8737 §3).
    if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
        debug!("acme tls-alpn-01 validation handshake answered; closing");
        return;
    }
    let (protocol, tls_version, client_cert) = {
        let (_, session) = tls.get_ref();
        metrics.handshake(match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
            Some(rustls::ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
            _ => TlsVersion::Other,
        });
        let span = tracing::Span::current();
        if let Some(version) = session.protocol_version() {
            span.record("tls", tracing::field::debug(version));
        }
        if let Some(alpn) = session.alpn_protocol() {
            span.record("alpn", String::from_utf8_lossy(alpn).as_ref());
        }
        let protocol = match session.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        let version = session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown");
        (protocol, version, client_cert_header(session))
    };

    let conn = Arc::new(ClientConn::new(
        proxy,
        peer_addr,
        tls_version,
        protocol.name(),
        client_cert,
    ));
    match protocol {
        Protocol::Http2 => {
            let service = {
                let conn = conn.clone();
                // Boxed: hyper spawns a task per stream around this future and moves it several
                // times on the way; a pointer moves cheaper than the request's whole state.
                service_fn(move |req| Box::pin(handle(conn.clone(), req)))
            };
            // The connection's writes keep the send timeout: a client that reads nothing at all
            // stalls every stream at once, which ends the connection.
            let io = SendTimeoutIo::new(
                tls,
                conn.proxy.fixed.timeouts.send,
                conn.proxy.metrics.clone(),
            );
            // Boxed: HTTP/2's connection state is large (and an idle HTTP/1.1 connection's task
            // would otherwise keep room for it).
            let connection = Box::pin(builders.http2.serve_connection(TokioIo::new(io), service));
            serve_http2(
                connection,
                |c| c.get_mut().as_mut().graceful_shutdown(),
                &conn,
                stop,
            )
            .await;
        }
        Protocol::Http1 => {
            let io = http1::ClientIo::new(tls, conn.clone());
            http1::serve(io, conn, &builders.http1, stop).await;
        }
    }
    // Held to here: the slot is free once the connection (or its tunnel) is gone.
    drop(permit);
}

/// The `X-Forwarded-Client-Cert` value for the certificate the client presented, which the
/// verifier has accepted; `None` without one (mutual TLS off, or optional and none sent).
fn client_cert_header(session: &rustls::ServerConnection) -> Option<http::HeaderValue> {
    let leaf = session.peer_certificates()?.first()?;
    match client_auth::Identity::from_der(leaf) {
        Ok(identity) => {
            tracing::Span::current().record("client", identity.names());
            identity.xfcc()
        }
        Err(e) => {
            warn!(error = %e, "verified client certificate unreadable: no X-Forwarded-Client-Cert");
            None
        }
    }
}

/// Runs an HTTP/2 connection to its end: asks it to finish (`graceful_shutdown`) when the server
/// stops or when it has been idle for the client idle timeout.
async fn serve_http2<C, E>(
    connection: C,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    conn: &ClientConn,
    mut stop: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let timeouts = conn.proxy.fixed.timeouts;
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
                        conn.proxy.metrics.client_timeout(ClientTimeout::Idle);
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
