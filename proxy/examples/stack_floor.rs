//! The plainest TLS-terminating forwarder this project's stack allows: tokio-rustls in front of
//! hyper's server, each request handed to a hyper HTTP/1.1 client connection, nothing else. No
//! CORS, no header rewriting, no timeouts, no limits, no logs, no shared pool (each client
//! connection keeps its own upstream connections), so it does less per request than `proxy`.
//!
//! It exists for the benchmark (`deploy/bench/bench.py --floor-bin`): what this stack costs per
//! request before any of the proxy's own work, run beside nginx in the same rounds. If this
//! forwarder cannot reach a throughput target, no proxy built on the same stack can. Not for use
//! in front of anything: it has none of the protections `proxy` has.
//!
//! It takes the same TLS configuration as `proxy` (the library's `tls::server_config`: TLS 1.3 and
//! 1.2, ALPN h2 and http/1.1, session tickets), its allocator and its one-thread runtime, and the
//! flags the bench gives the proxy:
//!
//! ```text
//! cargo run --release --example stack_floor -- --listen 127.0.0.1:8443 \
//!     --upstream http://127.0.0.1:8000 --tls-cert cert.pem --tls-key key.pem
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::tls;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Upstream HTTP/1.1 connections of one client connection: an HTTP/2 client has several requests
/// in flight, each needs a connection of its own.
type Pool = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

/// The upstream's body, or none for the one error this forwarder answers itself.
type Body = Either<Incoming, Empty<Bytes>>;

/// The flags the bench gives `proxy`, and nothing more.
#[derive(clap::Parser)]
#[command(about = "The plainest tokio-rustls + hyper forwarder (the benchmark's stack floor)")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8443
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream as http://IP:PORT (names are not resolved)
    #[arg(long, value_parser = parse_upstream)]
    upstream: SocketAddr,
    /// Certificate chain (PEM)
    #[arg(long)]
    tls_cert: PathBuf,
    /// Private key (PEM)
    #[arg(long)]
    tls_key: PathBuf,
}

fn parse_upstream(value: &str) -> Result<SocketAddr, String> {
    let addr = value.strip_prefix("http://").unwrap_or(value);
    addr.trim_end_matches('/')
        .parse()
        .map_err(|e| format!("{e} (give http://IP:PORT; names are not resolved)"))
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let store = match tls::CertStore::load(&args.tls_cert, &args.tls_key) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("stack_floor: {e}");
            return ExitCode::from(2);
        }
    };
    // The proxy's runtime when pinned to one CPU, as the bench runs it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    match runtime.block_on(serve(args.listen, args.upstream, tls::server_config(store))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let acceptor = TlsAcceptor::from(config);
    let h1 = http1::Builder::new();
    let h2 = http2::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: the listener itself is fine, but accepting again
            // at once would fail again at once.
            Err(e) => {
                eprintln!("stack_floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, h1, h2) = (acceptor.clone(), h1.clone(), h2.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let pool = Pool::default();
            let service = service_fn(move |req| forward(pool.clone(), upstream, req));
            let io = TokioIo::new(tls);
            let _ = if is_h2 {
                h2.serve_connection(io, service).await
            } else {
                h1.serve_connection(io, service).with_upgrades().await
            };
        });
    }
}

/// Sends `req` upstream on an idle connection of this client connection's pool, or on a new one.
async fn forward(
    pool: Pool,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    // HTTP/2 requests name their target in absolute form; an HTTP/1.1 upstream wants origin form
    // and a Host field.
    if let Some(authority) = req.uri().authority().cloned() {
        if !req.headers().contains_key(HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, host);
            }
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
    *req.version_mut() = http::Version::HTTP_11;
    let idle = {
        let mut conns = pool.lock().expect("pool lock");
        conns.retain(|c| !c.is_closed());
        conns
            .iter()
            .position(SendRequest::is_ready)
            .map(|i| conns.swap_remove(i))
    };
    let mut sender = match idle {
        Some(sender) => sender,
        None => match connect(upstream).await {
            Ok(sender) => sender,
            Err(e) => {
                // Printed for whoever runs it; the load test sees the status.
                eprintln!("stack_floor: {e}");
                let mut response = Response::new(Either::Right(Empty::new()));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                return Ok(response);
            }
        },
    };
    let response = sender.send_request(req).await;
    // Back to the pool at once: it is ready again once this response's body has been read.
    pool.lock().expect("pool lock").push(sender);
    Ok(response?.map(Either::Left))
}

async fn connect(upstream: SocketAddr) -> Result<SendRequest<Incoming>, String> {
    let tcp = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connect {upstream}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake {upstream}: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}
