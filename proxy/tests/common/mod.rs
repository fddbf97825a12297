//! Shared integration-test support: a test CA and server certificate made at run time (rcgen), a
//! rustls client config trusting it, temporary directories, the recording test upstream
//! ([`upstream`]), a proxy started on 127.0.0.1:0, TLS HTTP/1.1 and HTTP/2 client helpers, and
//! the helpers of raw test upstreams. [`tls_server`] is a bare TLS server for the certificate tests;
//! [`frames`] a raw HTTP/2 client for the flood tests.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod frames;
pub mod tls_server;
mod upstream;

#[allow(unused_imports)] // As above: not every test binary names these.
pub use upstream::{Repeat, TestUpstream};

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::server::Proxy;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// A fresh, unique directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir(PathBuf);

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl TempDir {
    /// Creates `proxy-test-<pid>-<name>-<n>`.
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("proxy-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` in the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }

    /// Replaces a file the way rotation tools do: write aside, rename over.
    pub fn replace(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let aside = self.write(&format!(".{name}.new"), contents);
        let path = self.join(name);
        std::fs::rename(aside, &path).expect("rename over a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The crypto provider the proxy uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A test CA, a server certificate it signed (for `localhost` and `127.0.0.1`), the pair written
/// to a temporary directory, and a client config that trusts the CA.
pub struct TestPki {
    pub dir: TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub client_config: Arc<rustls::ClientConfig>,
    ca_params_key: (rcgen::Certificate, KeyPair),
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

        let dir = TempDir::new("pki");
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
    proxy_argv_files(&pki.cert_path, &pki.key_path, upstream, extra)
}

/// The command line of a test proxy serving the pair at `cert` and `key`.
pub fn proxy_argv_files(cert: &Path, key: &Path, upstream: &str, extra: &[&str]) -> Vec<OsString> {
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
        cert.as_os_str().to_owned(),
        OsString::from("--tls-key"),
        key.as_os_str().to_owned(),
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

/// Waits until `addr` refuses connections (the proxy's listener closed at its shutdown), failing
/// after 10 s. A connection that still gets through is closed at once.
pub async fn until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::task::yield_now().await;
    }
}

/// Waits for the next event of a test upstream, failing after 5 s.
pub async fn next_event<T>(events: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an upstream event within 5 s")
        .expect("upstream running")
}

/// A request body whose chunks the test sends through a channel, at its own pace.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// Sends a WebSocket-style upgrade (`GET /ws`) through the proxy over HTTP/1.1 and returns the
/// joined tunnel.
pub async fn open_tunnel(pki: &TestPki, proxy: SocketAddr) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut client = h1::<Empty<Bytes>>(pki, proxy).await;
    let request = Request::builder()
        .uri("/ws")
        .header("host", "localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(Empty::new())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let upgraded = hyper::upgrade::on(response)
        .await
        .expect("client side upgraded");
    TokioIo::new(upgraded)
}

/// Reads a request head from a raw test upstream's socket: the request line and the
/// `Content-Length` (0 without one); `None` at the end of the stream.
pub async fn read_request_head(
    tcp: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> Option<(String, usize)> {
    use tokio::io::AsyncBufReadExt;

    let (mut request, mut length) = (String::new(), 0);
    loop {
        let mut line = String::new();
        if tcp.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        if request.is_empty() {
            request = line.trim().to_string();
        }
        if line == "\r\n" {
            return Some((request, length));
        }
    }
}

/// Waits until the proxy's metrics contain `line` (a counter reached its value), failing after
/// 10 s.
pub async fn until_metric(proxy: &TestProxy, line: &str) {
    until_metric_within(proxy, line, Duration::from_secs(10)).await;
}

/// [`until_metric`], failing after `within`.
pub async fn until_metric_within(proxy: &TestProxy, line: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let metrics = proxy.proxy.metrics().encode().unwrap();
        if metrics.contains(line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {line} in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 client connection made with `h2` itself, so that a test decides when a stream's
/// flow-control window opens (`stream_window`, `connection_window`): nothing is released unless
/// the test releases it.
pub async fn raw_h2<T>(
    io: T,
    stream_window: u32,
    connection_window: u32,
) -> h2::client::SendRequest<Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Sends `GET path` on a new stream of `client`; the `200` response's body.
pub async fn raw_h2_get(client: &h2::client::SendRequest<Bytes>, path: &str) -> h2::RecvStream {
    let request = http::Request::get(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut client = client.clone().ready().await.unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}
