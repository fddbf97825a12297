//! Shared integration-test support: a test CA and server certificate made at run time (rcgen), a
//! rustls client config trusting it, a recording plain-HTTP test upstream (on TCP or a UNIX
//! socket), a proxy started on 127.0.0.1:0, and TLS HTTP/1.1 and HTTP/2 client helpers. Other
//! test files may append helpers.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::server::Proxy;
use proxy::upstream::stream::UpstreamStream;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// A test CA, a server certificate it signed (for `localhost` and `127.0.0.1`), the pair written
/// to a temporary directory, and a client config that trusts the CA.
pub struct TestPki {
    pub dir: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub client_config: Arc<rustls::ClientConfig>,
    ca_params_key: (rcgen::Certificate, KeyPair),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A fresh, unique temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("proxy-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl TestPki {
    /// Makes a CA and a server certificate, writes `cert.pem`/`key.pem` into a new temp dir.
    pub fn new() -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "proxy test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");

        let dir = temp_dir("pki");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("trust CA");
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let pki = TestPki {
            dir,
            cert_path,
            key_path,
            ca_der: ca_cert.der().clone(),
            client_config: Arc::new(client_config),
            ca_params_key: (ca_cert, ca_key),
        };
        pki.write_server_pair("localhost");
        pki
    }

    /// Issues a new server certificate (CN `common_name`, SANs localhost and 127.0.0.1) from the
    /// CA and writes it over `cert.pem`/`key.pem`; returns the certificate's DER.
    pub fn write_server_pair(&self, common_name: &str) -> Vec<u8> {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let (ca_cert, ca_key) = &self.ca_params_key;
        let cert = params.signed_by(&key, ca_cert, ca_key).expect("sign");
        std::fs::write(&self.cert_path, cert.pem()).expect("write cert");
        std::fs::write(&self.key_path, key.serialize_pem()).expect("write key");
        cert.der().to_vec()
    }

    /// The client config with the given ALPN protocols.
    pub fn client_config_alpn(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.client_config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// The command line a test proxy is configured from: no env file, the test pair, `extra` last.
pub fn proxy_argv(pki: &TestPki, upstream: SocketAddr, extra: &[&str]) -> Vec<OsString> {
    proxy_argv_url(pki, &format!("http://{upstream}"), extra)
}

/// [`proxy_argv`] for an upstream given as `--upstream` takes it (`http://…` or `unix:/…`).
pub fn proxy_argv_url(pki: &TestPki, upstream: &str, extra: &[&str]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = [
        "proxy",
        "--env-file",
        "/dev/null",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    argv.extend([
        OsString::from("--tls-cert"),
        pki.cert_path.clone().into_os_string(),
        OsString::from("--tls-key"),
        pki.key_path.clone().into_os_string(),
    ]);
    argv.extend(extra.iter().map(OsString::from));
    argv
}

/// A proxy serving on 127.0.0.1 with a real `run()`.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub argv: Vec<OsString>,
    pub store: Arc<proxy::tls::CertStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    /// Starts a proxy in front of `upstream`; `extra` are further flags.
    pub async fn start(pki: &TestPki, upstream: SocketAddr, extra: &[&str]) -> TestProxy {
        TestProxy::launch(pki, &format!("http://{upstream}"), extra, None).await
    }

    /// Starts a proxy in front of the upstream `--upstream` names (`http://…` or `unix:/…`).
    pub async fn start_url(pki: &TestPki, upstream: &str, extra: &[&str]) -> TestProxy {
        TestProxy::launch(pki, upstream, extra, None).await
    }

    /// [`TestProxy::start_url`], serving the admin endpoints on `admin` as well.
    async fn launch(
        pki: &TestPki,
        upstream: &str,
        extra: &[&str],
        admin: Option<TcpListener>,
    ) -> TestProxy {
        let argv = proxy_argv_url(pki, upstream, extra);
        let cli = proxy::cli::parse(&argv, &HashMap::new()).expect("test configuration parses");
        let mut assembled = proxy::build(&cli).expect("test proxy assembles");
        if let Some(admin) = admin {
            assembled = assembled.with_admin(admin);
        }
        let proxy = assembled.proxy.clone();
        let store = assembled.certs.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(assembled.serve(listener, None, async move {
            let _ = stopped.await;
        }));
        TestProxy {
            addr,
            proxy,
            argv,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Triggers the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Triggers the graceful shutdown and waits until `run()` returns.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            task.await.expect("run() did not panic").expect("run() ok");
        }
    }

    /// Waits for `run()` to return after [`Self::begin_shutdown`].
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            task.await.expect("run() did not panic").expect("run() ok");
        }
    }
}

/// What the test upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A plain-HTTP/1.1 upstream that records every request head. Routes:
/// - `/echo`: streams the request body back;
/// - `/bytes/N`: streams N bytes (counted in `body_bytes_sent`);
/// - `/hang`: never answers;
/// - `/sleep/MS`: answers after MS milliseconds;
/// - `/ws`: accepts an upgrade (101) and echoes bytes on the upgraded connection;
/// - anything else: 200 `hello` with hop-by-hop headers the proxy must strip.
pub struct TestUpstream {
    /// The TCP address (`0.0.0.0:0` for a socket upstream, which has none: use `url`).
    pub addr: SocketAddr,
    /// What `--upstream` names: `http://ADDR` or `unix:/PATH`.
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Number of TCP connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Notified (one permit per request) whenever a request head has been recorded.
    pub arrived: Arc<tokio::sync::Notify>,
    /// Bytes of `/bytes/N` bodies handed to hyper so far (what the upstream has "written").
    pub body_bytes_sent: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        TestUpstream::serve(listener)
    }

    /// Binds a UNIX socket at `path` (in a test's temp dir) and serves on it.
    pub fn start_unix(path: &std::path::Path) -> TestUpstream {
        let listener = tokio::net::UnixListener::bind(path).expect("bind upstream socket");
        TestUpstream::serve_on(
            Listener::Unix(listener),
            SocketAddr::from(([0, 0, 0, 0], 0)),
            format!("unix:{}", path.display()),
        )
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener) -> TestUpstream {
        let addr = listener.local_addr().expect("upstream addr");
        TestUpstream::serve_on(Listener::Tcp(listener), addr, format!("http://{addr}"))
    }

    fn serve_on(listener: Listener, addr: SocketAddr, url: String) -> TestUpstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let body_bytes_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let seen = seen.clone();
            let arrived = arrived.clone();
            let connections = connections.clone();
            let sent = body_bytes_sent.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(stream) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let seen = seen.clone();
                    let arrived = arrived.clone();
                    let sent = sent.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            upstream_service(req, seen.clone(), arrived.clone(), sent.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            })
        };
        TestUpstream {
            addr,
            url,
            seen,
            connections,
            arrived,
            body_bytes_sent,
            task,
        }
    }

    /// Request heads received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The last request head received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }
}

/// What a test upstream accepts connections on.
enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<UpstreamStream> {
        match self {
            Listener::Tcp(listener) => Ok(UpstreamStream::Tcp(listener.accept().await?.0)),
            Listener::Unix(listener) => Ok(UpstreamStream::Unix(listener.accept().await?.0)),
        }
    }
}

fn full(body: impl Into<Bytes>) -> UpstreamBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

async fn upstream_service(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<tokio::sync::Notify>,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> Result<Response<UpstreamBody>, Infallible> {
    seen.lock().expect("lock").push(Seen {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    arrived.notify_one();
    let path = req.uri().path().to_owned();
    let response = if path == "/echo" {
        Response::new(req.into_body().map_err(Into::into).boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().expect("byte count");
        Response::new(
            Counted {
                inner: Repeat { remaining: n },
                sent,
            }
            .boxed(),
        )
    } else if path == "/collect" {
        // Answers only once the whole request body has arrived: its length.
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        Response::new(full(body.map_or(0, |b| b.len()).to_string()))
    } else if path == "/hang" {
        std::future::pending::<()>().await;
        unreachable!()
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().expect("ms"))).await;
        Response::new(full("slept"))
    } else if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(Bytes::new()))
            .expect("101")
    } else {
        Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end", "1")
            .body(full("hello"))
            .expect("200")
    };
    Ok(response)
}

/// A body of `remaining` bytes, sent in 64 KiB chunks of one shared buffer.
pub struct Repeat {
    pub remaining: u64,
}

const CHUNK: usize = 64 * 1024;

fn chunk() -> Bytes {
    static DATA: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    DATA.get_or_init(|| Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
        .clone()
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(chunk().slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// A body that adds the size of every data frame it yields to `sent`: hyper polls the next frame
/// only when it has room to write it, so the count is what the sender has let go of.
pub struct Counted<B> {
    pub inner: B,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::SeqCst);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Opens a TLS connection to the proxy (SNI `localhost`) offering `alpn`.
pub async fn tls_connect(
    pki: &TestPki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(pki.client_config_alpn(alpn));
    connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// An HTTP/1.1-over-TLS client connection to the proxy.
pub async fn h1<B>(pki: &TestPki, addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_connect(pki, addr, &[b"http/1.1"]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn.with_upgrades());
    sender
}

/// A plain-HTTP/1.1 client connection (the proxy's redirect listener).
pub async fn plain_h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

/// An HTTP/2-over-TLS client connection to the proxy (ALPN `h2`).
pub async fn h2<B>(pki: &TestPki, addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_connect(pki, addr, &[b"h2"]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// Like [`h1`], but a failed connect, handshake or HTTP handshake is returned, not a panic
/// (for clients that meet a proxy that is shutting down).
pub async fn try_h1<B>(
    pki: &TestPki,
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<B>, Box<dyn std::error::Error + Send + Sync>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_connect(pki, addr, &[b"http/1.1"]).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Like [`h2`], but a failed connect, handshake or HTTP/2 handshake is returned, not a panic.
pub async fn try_h2<B>(
    pki: &TestPki,
    addr: SocketAddr,
) -> Result<hyper::client::conn::http2::SendRequest<B>, Box<dyn std::error::Error + Send + Sync>>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_connect(pki, addr, &[b"h2"]).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A GET request with `Host: localhost` (HTTP/1.1) for `path`.
pub fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request")
}

/// Status, headers and the whole body of a response.
pub async fn collect(response: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// A loopback address nothing listens on (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A proxy with its admin listener, both on 127.0.0.1:0.
pub async fn start_with_admin(
    pki: &TestPki,
    upstream: SocketAddr,
    extra: &[&str],
) -> (TestProxy, SocketAddr) {
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin_addr = admin.local_addr().expect("admin addr");
    let proxy = TestProxy::launch(pki, &format!("http://{upstream}"), extra, Some(admin)).await;
    (proxy, admin_addr)
}

/// `GET path` on a plain-HTTP listener: status and body.
pub async fn plain_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let mut sender = plain_h1(addr).await;
    let response = sender
        .send_request(get(path))
        .await
        .expect("admin response");
    let (status, _, body) = collect(response).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}
