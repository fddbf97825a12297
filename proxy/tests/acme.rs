//! ACME end to end against Debian's `pebble` (with `pebble-challtestsrv` resolving every name to
//! 127.0.0.1): first issuance over TLS-ALPN-01 and over HTTP-01, a restart that reuses the stored
//! certificate, a forced renewal swapped in under an open connection, and a CA gone away that
//! leaves the current certificate serving. Without pebble these tests say so and pass, except
//! under `CI=true`, where they fail.

#[path = "acme/pebble.rs"]
mod pebble;

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{collect, get, TempDir, TestUpstream};
use http::StatusCode;
use proxy::acme::{Acme, AcmeStatus};
use proxy::tls::CertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use pebble::Pebble;

/// The name certificates are ordered for (challtestsrv resolves it to 127.0.0.1).
const DOMAIN: &str = "app.example.com";
/// Bounds one issuance (pebble answers in well under a second; a loaded machine is slow).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);

/// A proxy getting its certificate from ACME.
struct AcmeProxy {
    addr: SocketAddr,
    acme: Arc<Acme>,
    store: Arc<CertStore>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl AcmeProxy {
    /// Starts a proxy on the bound `listener` (and `redirect`, with HTTP-01) ordering from
    /// `directory`, trusting `root` for it, keeping its files in `dir`.
    async fn start(
        directory: &str,
        root: &Path,
        dir: &Path,
        listener: TcpListener,
        redirect: Option<TcpListener>,
        upstream: SocketAddr,
    ) -> AcmeProxy {
        let addr = listener.local_addr().unwrap();
        let mut args: Vec<String> = vec![
            "proxy".into(),
            format!("--listen={addr}"),
            format!("--upstream=http://{upstream}"),
            format!("--acme-domain={DOMAIN}"),
            format!("--acme-directory={directory}"),
            format!("--acme-ca-root={}", root.display()),
            format!("--acme-dir={}", dir.display()),
            "--acme-email=ops@example.com".into(),
        ];
        if let Some(redirect) = &redirect {
            args.push(format!(
                "--redirect-http={}",
                redirect.local_addr().unwrap()
            ));
            args.push("--acme-challenge=http-01".into());
        }
        let argv: Vec<OsString> = args.into_iter().map(OsString::from).collect();
        let cli = proxy::cli::parse(&argv, &HashMap::new()).expect("ACME settings parse");
        let assembled = proxy::build(&cli).expect("ACME proxy assembles");
        let acme = assembled.acme.clone().expect("ACME is on");
        let store = assembled.certs.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(assembled.serve(listener, redirect, async move {
            let _ = stopped.await;
        }));
        AcmeProxy {
            addr,
            acme,
            store,
            stop: Some(stop),
            task,
        }
    }

    /// [`Self::start`] against `pebble`, keeping the files in `dir`'s `acme`.
    async fn start_with(
        pebble: &Pebble,
        dir: &TempDir,
        listener: TcpListener,
        redirect: Option<TcpListener>,
        upstream: &TestUpstream,
    ) -> AcmeProxy {
        let files = dir.join("acme");
        let (directory, root) = (&pebble.directory, &pebble.https_root);
        AcmeProxy::start(directory, root, &files, listener, redirect, upstream.addr).await
    }

    /// Waits until the task's status satisfies `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&AcmeStatus) -> bool) -> AcmeStatus {
        let mut status = self.acme.status();
        let waited = tokio::time::timeout(ISSUE_TIMEOUT, async {
            status.wait_for(|s| done(s)).await.map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(Ok(status)) => status,
            _ => panic!(
                "{what}: not within {ISSUE_TIMEOUT:?}: {:?}",
                *self.acme.status().borrow()
            ),
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// A TLS connection to `addr` for [`DOMAIN`] offering `alpn`, trusting only `root`.
async fn handshake(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = pebble::trusting(root.clone());
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
        .await
}

/// The certificate a new HTTP handshake is shown (and verified, chaining to `root`).
async fn served(addr: SocketAddr, root: &CertificateDer<'static>) -> CertificateDer<'static> {
    let tls = handshake(addr, root, b"http/1.1").await.expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The stored certificate (the chain's first).
fn stored(store: &CertStore) -> CertificateDer<'static> {
    store.leaf_der().expect("a certificate is loaded")
}

fn sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).unwrap();
    let ext = cert.subject_alternative_name().unwrap().unwrap();
    ext.value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

/// A pebble validating on the given listeners' ports, or `None` (skipped).
fn pebble_for(dir: &TempDir, https: &TcpListener, http: Option<&TcpListener>) -> Option<Pebble> {
    let tls_port = https.local_addr().unwrap().port();
    let http_port = http.map_or(0, |l| l.local_addr().unwrap().port());
    Pebble::start(dir.path(), http_port, tls_port)
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A proxy that has had its first certificate issued over TLS-ALPN-01, with what it runs with.
struct Issued {
    dir: TempDir,
    upstream: TestUpstream,
    pebble: Pebble,
    proxy: AcmeProxy,
    /// The root the issued certificates chain to.
    root: CertificateDer<'static>,
}

/// Starts pebble and a proxy in `name`'s temporary directory, and waits for the first
/// certificate; `None` when pebble is missing (skipped).
async fn issued_over_tls_alpn(name: &str) -> Option<Issued> {
    let dir = TempDir::new(name);
    let upstream = TestUpstream::start().await;
    let listener = bind().await;
    let pebble = pebble_for(&dir, &listener, None)?;
    let proxy = AcmeProxy::start_with(&pebble, &dir, listener, None, &upstream).await;
    proxy
        .wait_for("first issuance over TLS-ALPN-01", |s| s.issued == 1)
        .await;
    let root = pebble.issuing_root().await;
    Some(Issued {
        dir,
        upstream,
        pebble,
        proxy,
        root,
    })
}

/// An HTTP/1.1 connection over `tls`, checked with a first request.
async fn http1_ok(
    tls: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (status, _, _) = collect(send.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    send
}

#[tokio::test]
async fn first_issuance_over_tls_alpn_01() {
    let Some(issued) = issued_over_tls_alpn("acme-alpn").await else {
        return;
    };
    let (proxy, root) = (issued.proxy, &issued.root);
    let cert = served(proxy.addr, root).await;
    assert_eq!(cert, stored(&proxy.store));
    assert!(
        sans(&cert).iter().any(|s| s.contains(DOMAIN)),
        "{:?}",
        sans(&cert)
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert!(
        parsed.issuer().to_string().contains("Pebble"),
        "{}",
        parsed.issuer()
    );

    // The files: a 0700 directory, 0600 files.
    use std::os::unix::fs::PermissionsExt as _;
    let files = proxy.acme.files();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(files.dir()), 0o700);
    for file in [
        files.cert_path(),
        files.key_path(),
        files.dir().join("account.json"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }

    // Served over HTTP as usual.
    http1_ok(handshake(proxy.addr, root, b"http/1.1").await.unwrap()).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn first_issuance_over_http_01() {
    let dir = TempDir::new("acme-http01");
    let upstream = TestUpstream::start().await;
    let (listener, redirect) = (bind().await, bind().await);
    let Some(pebble) = pebble_for(&dir, &listener, Some(&redirect)) else {
        return;
    };
    let plain = redirect.local_addr().unwrap();
    let proxy = AcmeProxy::start_with(&pebble, &dir, listener, Some(redirect), &upstream).await;
    proxy
        .wait_for("first issuance over HTTP-01", |s| s.issued == 1)
        .await;
    let root = pebble.issuing_root().await;
    let cert = served(proxy.addr, &root).await;
    assert_eq!(cert, stored(&proxy.store));
    assert!(sans(&cert).iter().any(|s| s.contains(DOMAIN)));

    // With no order pending, the plain-HTTP listener redirects as before, challenge paths too.
    let mut client = common::plain_h1(plain).await;
    for path in ["/", "/.well-known/acme-challenge/old-token"] {
        let request = http::Request::get(path)
            .header("host", DOMAIN)
            .body(http_body_util::Empty::new())
            .unwrap();
        let (status, headers, _) = collect(client.send_request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT, "{path}");
        assert!(headers["location"]
            .to_str()
            .unwrap()
            .starts_with("https://"));
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_restart_reuses_the_stored_certificate() {
    let Some(Issued {
        dir,
        upstream,
        pebble,
        proxy: first,
        root,
    }) = issued_over_tls_alpn("acme-restart").await
    else {
        return;
    };
    let issued = stored(&first.store);
    let cert_file = first.acme.files().cert_path();
    let written = std::fs::metadata(&cert_file).unwrap().modified().unwrap();
    first.shutdown().await;

    let again = AcmeProxy::start_with(&pebble, &dir, bind().await, None, &upstream).await;
    // Served from the first handshake on: no order was needed.
    assert_eq!(served(again.addr, &root).await, issued);
    assert_eq!(*again.acme.status().borrow(), AcmeStatus::default());
    assert_eq!(
        std::fs::metadata(&cert_file).unwrap().modified().unwrap(),
        written
    );
    again.shutdown().await;
}

#[tokio::test]
async fn a_forced_renewal_is_swapped_in_under_an_open_connection() {
    let Some(issued) = issued_over_tls_alpn("acme-renew").await else {
        return;
    };
    let (proxy, root) = (issued.proxy, &issued.root);
    let old = stored(&proxy.store);
    let tls = handshake(proxy.addr, root, b"http/1.1").await.unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], old);
    let mut send = http1_ok(tls).await;

    proxy.acme.renew_now();
    proxy
        .wait_for("the forced renewal", |s| s.issued == 2)
        .await;
    let new = stored(&proxy.store);
    assert_ne!(new, old);

    // The open connection keeps working; a new handshake sees the new certificate.
    let (status, _, _) = collect(send.send_request(get("/again")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served(proxy.addr, root).await, new);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_ca_leaves_the_current_certificate_serving() {
    let Some(mut issued) = issued_over_tls_alpn("acme-unreachable").await else {
        return;
    };
    issued.pebble.stop();
    let (proxy, root) = (issued.proxy, &issued.root);
    let current = stored(&proxy.store);
    proxy.acme.renew_now();
    let status = proxy.wait_for("a failed renewal", |s| s.failed >= 1).await;
    assert_eq!(status.issued, 1);
    assert!(status.last_error.is_some());
    assert_eq!(served(proxy.addr, root).await, current);
    proxy.shutdown().await;
}

/// Runs without pebble: before the first certificate, handshakes fail (an ACME validation
/// handshake too, with no challenge pending), and the failure to reach the CA is reported.
#[tokio::test]
async fn without_a_certificate_handshakes_fail_cleanly() {
    let dir = TempDir::new("acme-none");
    let upstream = TestUpstream::start().await;
    let closed = common::closed_port().await;
    let root = dir.write("root.pem", rcgen_root_pem());
    let proxy = AcmeProxy::start(
        &format!("https://{closed}/dir"),
        &root,
        &dir.join("acme"),
        bind().await,
        None,
        upstream.addr,
    )
    .await;
    let status = proxy
        .wait_for("a failed first order", |s| s.failed >= 1)
        .await;
    assert!(
        status.last_error.as_deref().unwrap_or("").contains("CA"),
        "{status:?}"
    );
    assert!(proxy.store.info().is_none());
    let root = CertificateDer::from_pem_slice(rcgen_root_pem().as_bytes()).unwrap();
    assert!(handshake(proxy.addr, &root, b"http/1.1").await.is_err());
    assert!(handshake(proxy.addr, &root, b"acme-tls/1").await.is_err());
    proxy.shutdown().await;
}

/// Some root certificate: the CA is never reached, so which one does not matter.
fn rcgen_root_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}
