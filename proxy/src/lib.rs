//! TLS-terminating reverse-proxy sidecar with a CORS policy engine.
//!
//! A request's way through the modules:
//! 1. [`server::run`] accepts a TCP connection (waiting for a slot under `PROXY_MAX_CONNECTIONS`),
//!    sets TCP_NODELAY and completes the TLS handshake within the handshake timeout, with the
//!    certificate [`tls::CertStore`] holds at that moment (ALPN `h2` or `http/1.1`).
//! 2. ALPN picks the protocol: HTTP/2 is served by hyper's HTTP/2 connection; HTTP/1.1 (also
//!    without ALPN) by `http1`, which parks an idle keep-alive connection without its buffers,
//!    keeps the header-read and idle deadlines on one timer per connection (not one per request),
//!    and runs an upgraded connection's tunnel. Each request goes to the server's handler, which
//!    reads the live configuration (upstream + CORS policy, swapped atomically on reload) without
//!    a lock.
//! 3. [`cors::evaluate`] decides: answer now (preflight, refusal) or forward with CORS headers to add.
//! 4. [`forward::forward`] strips hop-by-hop headers, sets `X-Forwarded-*`, `Forwarded` and `Via`,
//!    and sends the request on a pooled upstream connection ([`upstream`]), streaming the body; the
//!    request's own task drives that connection (it gets a task of its own only once it carries a
//!    request body or an upgrade); a stale pooled connection is retried once for idempotent
//!    requests; an accepted upgrade hands the upstream's side to the connection for its tunnel.
//! 5. The response streams back with hop-by-hop headers stripped, the CORS headers and HSTS added;
//!    failures become 502/504 in [`error`]; one access-log line is written when the body ends.
//!
//! [`config`] turns flags, environment and `.env` into validated settings; [`signal`] turns
//! SIGTERM/SIGINT into a graceful drain and SIGHUP into [`server::Proxy::reload`].

pub mod config;
pub mod cors;
pub mod devcert;
pub mod error;
pub mod forward;
pub mod healthcheck;
mod http1;
pub mod server;
pub mod signal;
pub mod tls;
pub mod upstream;
