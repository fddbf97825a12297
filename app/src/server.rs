//! The server loop: accept connections on a bound listener, serve HTTP/1.1 (and h2c with prior
//! knowledge) until the shutdown future resolves, then drain in-flight requests for a bounded time.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Config;
use crate::listen::{Listener, Peer};
use crate::routes::{self, AppState};
use crate::sessions::{OpenError, SessionStore};
use crate::throttle::Throttle;
use crate::users::{Authenticator, HashError};

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum AppError {
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    /// Preparing password verification failed.
    #[error("preparing password checks: {0}")]
    Users(#[from] HashError),
    /// The session store could not be opened (a configuration error: `main` exits 64).
    #[error(transparent)]
    Store(#[from] OpenError),
    /// A start-up task panicked or was cancelled.
    #[error("start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Serves on `listener` until `shutdown` resolves, then lets in-flight requests finish, waiting at
/// most `config.shutdown_grace` before dropping the connections still open.
pub async fn run(
    listener: impl Into<Listener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let listener = listener.into();
    let local = listener.local_addr().map_err(AppError::Listener)?;
    // The dummy hash for unknown users costs one argon2 run: keep it off the async threads.
    let sessions = SessionStore::open(
        &config.sessions,
        config.session_idle_timeout,
        config.max_sessions,
    )
    .await?;
    let users = config.users.clone();
    let workers = config.hash_workers;
    let auth = tokio::task::spawn_blocking(move || Authenticator::new(&users, workers)).await??;
    let state = Arc::new(AppState {
        auth,
        sessions,
        session_idle_timeout: config.session_idle_timeout,
        throttle: Throttle::new(config.throttle),
        trusted_proxies: config.trusted_proxies.clone(),
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.body_read_timeout,
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper panics on header_read_timeout without a timer. On keep-alive connections the same
    // timeout bounds the idle wait for the next request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());

    tracing::info!(
        addr = %local,
        users = config.users.iter().count(),
        session_idle_timeout = ?config.session_idle_timeout,
        max_sessions = config.max_sessions,
        max_body_bytes = config.max_body_bytes,
        sessions = ?config.sessions,
        trusted_proxies = ?config.trusted_proxies,
        throttle = ?config.throttle,
        hash_workers = config.hash_workers,
        "listening"
    );

    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, phase = "accept", "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let state = Arc::clone(&state);
                // A UNIX-socket peer is a local process the socket's mode let in: it counts as
                // loopback, as the proxy sidecar on TCP does.
                let peer_addr = match peer {
                    Peer::Tcp(addr) => addr,
                    Peer::Local => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                };
                let service = service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(routes::handle(&state, peer_addr, request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                let span = tracing::info_span!("connection", %peer);
                connections.spawn(
                    async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    drop(listener);
    tracing::info!(open = connections.len(), grace = ?config.shutdown_grace, "shutting down");
    match tokio::time::timeout(config.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            phase = "shutdown drain",
            timeout = ?config.shutdown_grace,
            open = connections.len(),
            "grace period over, dropping open connections"
        ),
    }
    connections.shutdown().await;
    Ok(())
}
