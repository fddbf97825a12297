//! TLS material end to end: start-up errors, key formats and chains, reload (explicit and by file
//! watching) seen through real tokio-rustls handshakes, session resumption, the dev certificate and
//! the health check. Certificates come from a test CA made at run time.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use proxy::cli::{CertArgs, HealthcheckArgs};
use proxy::cmd::devcert::{self, DevCertError};
use proxy::cmd::healthcheck::{self, HealthError};
use proxy::cmd::localca::LocalCa;
use proxy::tls::{self, CertStore, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Upper bound for anything that is retried until it happens (file watching).
const EVENTUALLY: Duration = Duration::from_secs(10);
/// Poll interval for `CertStore::watch` in tests.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------- helpers

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "proxy-tls-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Replaces a file the way rotation tools do: write aside, rename over.
    fn replace(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let tmp = self.write(&format!(".{name}.new"), contents);
        let path = self.0.join(name);
        std::fs::rename(tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The SubjectPublicKeyInfo of a PEM private key, as rustls sees it.
fn spki_of(key_pem: &str) -> Vec<u8> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let signing = provider().key_provider.load_private_key(key).unwrap();
    signing.public_key().unwrap().as_ref().to_vec()
}

/// A private key as PEM in one of the formats the proxy must read.
fn key_pkcs8_p256() -> String {
    rcgen::KeyPair::generate().unwrap().serialize_pem()
}

fn key_sec1_p256() -> String {
    use aws_lc_rs::encoding::AsDer as _;
    let key = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    )
    .unwrap();
    let der = key.private_key().as_der().unwrap();
    pem("EC PRIVATE KEY", der.as_ref())
}

fn key_pkcs1_rsa() -> String {
    use aws_lc_rs::encoding::AsDer as _;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = key.as_der().unwrap();
    // PKCS#8 PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING }; for RSA
    // the OCTET STRING holds the PKCS#1 RSAPrivateKey.
    let (_, info) = x509_parser::der_parser::parse_der(pkcs8.as_ref()).unwrap();
    let pkcs1 = info.as_sequence().unwrap()[2].as_slice().unwrap();
    pem("RSA PRIVATE KEY", pkcs1)
}

/// A public key for rcgen to certify, taken from a SubjectPublicKeyInfo.
struct PublicKey {
    alg: &'static rcgen::SignatureAlgorithm,
    raw: Vec<u8>,
}

impl PublicKey {
    fn new(spki_der: &[u8], alg: &'static rcgen::SignatureAlgorithm) -> PublicKey {
        use x509_parser::prelude::FromDer as _;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).unwrap();
        PublicKey {
            alg,
            raw: spki.subject_public_key.data.to_vec(),
        }
    }
}

impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// A CA made at run time; every client in these tests trusts it.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A server certificate (PEM, leaf only) and its key (PEM).
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "proxy test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// A leaf for `localhost` around the given key (of algorithm `alg`).
    fn leaf_for(&self, key_pem: String, alg: &'static rcgen::SignatureAlgorithm) -> Leaf {
        let spki = PublicKey::new(&spki_of(&key_pem), alg);
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&spki, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem,
        }
    }

    fn leaf(&self) -> Leaf {
        self.leaf_for(key_pkcs8_p256(), &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        client_config_with(self, &[&rustls::version::TLS13, &rustls::version::TLS12])
    }
}

fn client_config_with(
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Writes the pair as cert.pem/key.pem (the certificate file holding the leaf and then the CA).
fn write_pair(dir: &TempDir, ca: &TestCa, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let chain = format!("{}{}", leaf.cert_pem, ca.cert.pem());
    (
        dir.write("cert.pem", chain),
        dir.write("key.pem", &leaf.key_pem),
    )
}

/// A minimal TLS server with the proxy's config: it reads one request and answers 204.
async fn serve(store: Arc<CertStore>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(tls::server_config(store));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                if matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = tls
                        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                        .await;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// What a client saw of one connection.
struct Seen {
    cert: CertificateDer<'static>,
    kind: HandshakeKind,
    alpn: Option<Vec<u8>>,
    version: rustls::ProtocolVersion,
}

/// One connection: handshake, one request, read to the end (which also takes in TLS 1.3 tickets).
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Seen> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let seen = Seen {
        cert: conn.peer_certificates().unwrap()[0].clone().into_owned(),
        kind: conn.handshake_kind().unwrap(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version().unwrap(),
    };
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    assert!(response.starts_with(b"HTTP/1.1 204"), "{response:?}");
    Ok(seen)
}

// ---------------------------------------------------------------- start-up errors

/// Whether an error is the expected variant (table-driven cases).
type Expected = fn(&TlsError) -> bool;

#[test]
fn missing_files_are_named() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let absent = dir.0.join("absent.pem");

    let err = CertStore::load(&absent, &key).unwrap_err();
    assert!(matches!(err, TlsError::CertMissing { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*absent.to_string_lossy()),
        "{err}"
    );
    assert!(err.to_string().contains("proxy cert"), "{err}");

    let err = CertStore::load(&cert, &absent).unwrap_err();
    assert!(matches!(err, TlsError::KeyMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS_KEY_FILE"), "{err}");
}

#[test]
fn certificate_file_problems_are_named() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let leaf = ca.leaf();
    let key = dir.write("key.pem", &leaf.key_pem);
    let cases: [(&str, Vec<u8>, Expected); 5] = [
        ("empty.pem", Vec::new(), |e| {
            matches!(e, TlsError::NoCertificate { .. })
        }),
        (
            "garbage.pem",
            (0..=255u8).cycle().take(4096).collect(),
            |e| matches!(e, TlsError::NoCertificate { .. }),
        ),
        // The key given as the certificate: a usual slip.
        ("only-key.pem", leaf.key_pem.clone().into_bytes(), |e| {
            matches!(e, TlsError::NoCertificate { .. })
        }),
        // Half-written: the END line never arrived.
        (
            "truncated.pem",
            leaf.cert_pem.as_bytes()[..leaf.cert_pem.len() / 2].to_vec(),
            |e| matches!(e, TlsError::BadPem { .. }),
        ),
        // Valid PEM around bytes that are no certificate.
        (
            "not-x509.pem",
            pem("CERTIFICATE", b"hello, world").into_bytes(),
            |e| matches!(e, TlsError::BadCertificate { .. }),
        ),
    ];
    for (name, contents, expected) in cases {
        let cert = dir.write(name, contents);
        let err = CertStore::load(&cert, &key).unwrap_err();
        assert!(expected(&err), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

#[test]
fn key_file_problems_are_named() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let leaf = ca.leaf();
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let cases: [(&str, Vec<u8>, Expected); 4] = [
        ("empty.key", Vec::new(), |e| {
            matches!(e, TlsError::NoKey { .. })
        }),
        ("cert-as-key.key", leaf.cert_pem.clone().into_bytes(), |e| {
            matches!(e, TlsError::NoKey { .. })
        }),
        (
            "junk-key.key",
            pem("PRIVATE KEY", b"not a key at all").into_bytes(),
            |e| matches!(e, TlsError::UnsupportedKey { .. }),
        ),
        ("other.key", ca.leaf().key_pem.into_bytes(), |e| {
            matches!(e, TlsError::KeyMismatch { .. })
        }),
    ];
    for (name, contents, expected) in cases {
        let key = dir.write(name, contents);
        let err = CertStore::load(&cert, &key).unwrap_err();
        assert!(expected(&err), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

#[test]
fn mismatch_names_both_files() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let cert = dir.write("mine.pem", ca.leaf().cert_pem);
    let key = dir.write("theirs.key", ca.leaf().key_pem);
    let err = CertStore::load(&cert, &key).unwrap_err().to_string();
    assert!(
        err.contains("mine.pem") && err.contains("theirs.key"),
        "{err}"
    );
}

// ---------------------------------------------------------------- formats and chains

#[tokio::test]
async fn all_key_formats_load_and_serve() {
    let ca = TestCa::new();
    let client = ca.client_config();
    for (format, key_pem, alg) in [
        ("PKCS#8", key_pkcs8_p256(), &rcgen::PKCS_ECDSA_P256_SHA256),
        ("SEC1", key_sec1_p256(), &rcgen::PKCS_ECDSA_P256_SHA256),
        ("PKCS#1", key_pkcs1_rsa(), &rcgen::PKCS_RSA_SHA256),
    ] {
        let dir = TempDir::new();
        let leaf = ca.leaf_for(key_pem, alg);
        let (cert, key) = write_pair(&dir, &ca, &leaf);
        let store = CertStore::load(&cert, &key).unwrap_or_else(|e| panic!("{format}: {e}"));
        let addr = serve(store).await;
        let seen = connect(addr, client.clone()).await.unwrap();
        assert_eq!(seen.cert, leaf.der(), "{format}");
    }
}

#[tokio::test]
async fn chain_is_served_and_described() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let leaf = ca.leaf();
    let (cert, key) = write_pair(&dir, &ca, &leaf);
    let store = CertStore::load(&cert, &key).unwrap();
    let info = store.info();
    assert_eq!(info.chain_len, 2);
    assert_eq!(info.subject, "CN=localhost");
    assert_eq!(info.sans, ["localhost"]);
    assert_eq!(
        info.spki_sha256,
        tls::spki_sha256_base64(&spki_of(&leaf.key_pem))
    );
    assert!(!info.expires_within(std::time::SystemTime::now(), tls::EXPIRY_WARNING));

    let tcp = TcpStream::connect(serve(store).await).await.unwrap();
    let tls = TlsConnector::from(ca.client_config())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap();
    assert_eq!(served, [leaf.der(), ca.cert.der().clone()]);
}

#[tokio::test]
async fn alpn_and_versions() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let addr = serve(CertStore::load(&cert, &key).unwrap()).await;

    let seen = connect(addr, ca.client_config()).await.unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.version, rustls::ProtocolVersion::TLSv1_3);

    let tls12 = client_config_with(&ca, &[&rustls::version::TLS12]);
    let seen = connect(addr, tls12).await.unwrap();
    assert_eq!(seen.version, rustls::ProtocolVersion::TLSv1_2);

    let mut http1 = (*ca.client_config()).clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let seen = connect(addr, Arc::new(http1)).await.unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

// ---------------------------------------------------------------- resumption

#[tokio::test]
async fn tls13_resumes_with_tickets() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let addr = serve(CertStore::load(&cert, &key).unwrap()).await;
    let client = ca.client_config();
    let first = connect(addr, client.clone()).await.unwrap();
    assert_eq!(first.kind, HandshakeKind::Full);
    for _ in 0..3 {
        let next = connect(addr, client.clone()).await.unwrap();
        assert_eq!(next.kind, HandshakeKind::Resumed);
        assert_eq!(next.version, rustls::ProtocolVersion::TLSv1_3);
    }
}

#[tokio::test]
async fn tls12_resumes_with_tickets_and_with_session_ids() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let addr = serve(CertStore::load(&cert, &key).unwrap()).await;
    for mode in [
        rustls::client::Tls12Resumption::SessionIdOrTickets,
        // A client that takes no tickets resumes from the server's session cache.
        rustls::client::Tls12Resumption::SessionIdOnly,
    ] {
        let mut client = (*client_config_with(&ca, &[&rustls::version::TLS12])).clone();
        client.resumption =
            rustls::client::Resumption::in_memory_sessions(16).tls12_resumption(mode);
        let client = Arc::new(client);
        let first = connect(addr, client.clone()).await.unwrap();
        assert_eq!(first.kind, HandshakeKind::Full, "{mode:?}");
        let second = connect(addr, client).await.unwrap();
        assert_eq!(second.kind, HandshakeKind::Resumed, "{mode:?}");
    }
}

// ---------------------------------------------------------------- reload

#[tokio::test]
async fn reload_serves_the_new_pair_to_new_handshakes() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (old, new) = (ca.leaf(), ca.leaf());
    let (cert, key) = write_pair(&dir, &ca, &old);
    let store = CertStore::load(&cert, &key).unwrap();
    let addr = serve(store.clone()).await;
    let client = ca.client_config();
    assert_eq!(connect(addr, client.clone()).await.unwrap().cert, old.der());

    write_pair(&dir, &ca, &new);
    let info = store.reload().unwrap();
    assert_eq!(
        info.spki_sha256,
        tls::spki_sha256_base64(&spki_of(&new.key_pem))
    );
    assert_eq!(store.info(), info);
    // A fresh client, so the handshake is a full one that shows the certificate now in use.
    assert_eq!(
        connect(addr, ca.client_config()).await.unwrap().cert,
        new.der()
    );
}

#[tokio::test]
async fn broken_new_pair_is_rejected_and_the_old_one_keeps_serving() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (old, new) = (ca.leaf(), ca.leaf());
    let (cert, key) = write_pair(&dir, &ca, &old);
    let store = CertStore::load(&cert, &key).unwrap();
    let addr = serve(store.clone()).await;
    let old_info = store.info();

    let half_written = &new.cert_pem[..new.cert_pem.len() / 2];
    let broken: [(&str, &str, Expected); 3] = [
        // New certificate, old key: the usual state half-way through a rotation.
        (&new.cert_pem, &old.key_pem, |e| {
            matches!(e, TlsError::KeyMismatch { .. })
        }),
        (half_written, &new.key_pem, |e| {
            matches!(e, TlsError::BadPem { .. })
        }),
        (&new.cert_pem, "", |e| matches!(e, TlsError::NoKey { .. })),
    ];
    for (cert_pem, key_pem, expected) in broken {
        dir.write("cert.pem", cert_pem);
        dir.write("key.pem", key_pem);
        let err = store.reload().unwrap_err();
        assert!(expected(&err), "{err:?}");
        assert_eq!(store.info(), old_info);
        let seen = connect(addr, ca.client_config()).await.unwrap();
        assert_eq!(seen.cert, old.der(), "after {err}");
    }
}

#[tokio::test]
async fn watch_picks_up_a_rotation_and_never_serves_a_broken_pair() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (old, new) = (ca.leaf(), ca.leaf());
    let (cert, key) = write_pair(&dir, &ca, &old);
    let store = CertStore::load(&cert, &key).unwrap();
    let addr = serve(store.clone()).await;
    let watcher = store.clone().watch(WATCH_INTERVAL);

    // Step one: a half-written certificate; it must never be served.
    dir.write("cert.pem", &new.cert_pem[..100]);
    let deadline = Instant::now() + WATCH_INTERVAL * 10;
    while Instant::now() < deadline {
        let seen = connect(addr, ca.client_config()).await.unwrap();
        assert_eq!(seen.cert, old.der());
        tokio::time::sleep(WATCH_INTERVAL / 2).await;
    }

    // Step two: the rotation completes (rename over, as cert tools and Kubernetes do).
    dir.replace("key.pem", &new.key_pem);
    dir.replace("cert.pem", format!("{}{}", new.cert_pem, ca.cert.pem()));
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let seen = connect(addr, ca.client_config()).await.unwrap();
        if seen.cert == new.der() {
            break;
        }
        assert_eq!(seen.cert, old.der());
        assert!(Instant::now() < deadline, "rotation not picked up");
        tokio::time::sleep(WATCH_INTERVAL / 2).await;
    }
    watcher.abort();
}

#[tokio::test]
async fn watch_task_ends_with_the_store() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let store = CertStore::load(&cert, &key).unwrap();
    let watcher = store.clone().watch(WATCH_INTERVAL);
    drop(store);
    tokio::time::timeout(EVENTUALLY, watcher)
        .await
        .expect("the watch task holds no strong reference")
        .unwrap();
}

// ---------------------------------------------------------------- dev certificate

/// Accepts exactly the certificate whose SPKI hashes to the pin (as Chromium's
/// `--ignore-certificate-errors-spki-list` does), checking handshake signatures.
#[derive(Debug)]
struct SpkiPin {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpkiPin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::General("unparsable certificate".into()))?;
        match tls::spki_sha256_base64(cert.public_key().raw) == self.pin {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::General("SPKI pin mismatch".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pinning_client(pin: &str) -> Arc<ClientConfig> {
    let verifier = Arc::new(SpkiPin {
        pin: pin.to_owned(),
        provider: provider(),
    });
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn dev_certificate_loads_and_clients_can_pin_or_trust_it() {
    let dir = TempDir::new();
    let ca = LocalCa::generate().unwrap();
    let dev = devcert::generate(&ca, &["app.test".to_string()]).unwrap();
    let (cert, key) = devcert::write_pair(&dir.0, &dev, false).unwrap();
    assert_eq!(mode_of(&key), 0o600);

    let store = CertStore::load(&cert, &key).unwrap();
    let info = store.info();
    assert_eq!(info.spki_sha256, dev.spki_sha256);
    assert_eq!(info.sans, ["localhost", "127.0.0.1", "::1", "app.test"]);
    let addr = serve(store).await;

    // Pinned by SPKI, as the printed Chromium flag does.
    let seen = connect(addr, pinning_client(&dev.spki_sha256))
        .await
        .unwrap();
    assert_eq!(
        seen.cert.as_ref(),
        CertificateDer::from_pem_slice(dev.cert_pem.as_bytes())
            .unwrap()
            .as_ref()
    );
    // A wrong pin is refused.
    let other = devcert::generate(&ca, &[]).unwrap();
    let err = connect(addr, pinning_client(&other.spki_sha256)).await;
    assert!(err.is_err(), "a wrong pin must not connect");

    // The local CA trusted as a root, as after `proxy cert --trust` or a keychain import.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let trusting = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    connect(addr, Arc::new(trusting)).await.unwrap();
}

#[test]
fn dev_certificate_is_not_overwritten_without_force() {
    let dir = TempDir::new();
    let ca = LocalCa::generate().unwrap();
    let first = devcert::generate(&ca, &[]).unwrap();
    let (cert, key) = devcert::write_pair(&dir.0, &first, false).unwrap();

    let second = devcert::generate(&ca, &[]).unwrap();
    let err = devcert::write_pair(&dir.0, &second, false).unwrap_err();
    assert!(matches!(err, DevCertError::Exists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first.key_pem);

    // Even over a key that someone made world-readable, the replacement is 0600.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    devcert::write_pair(&dir.0, &second, true).unwrap();
    assert_eq!(std::fs::read_to_string(&key).unwrap(), second.key_pem);
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), second.cert_pem);
    assert_eq!(mode_of(&key), 0o600);
    // No temporary files left behind.
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cert.pem", "key.pem"]);
}

#[test]
fn cert_command_creates_the_directory_and_respects_if_missing() {
    let dir = TempDir::new();
    let out_dir = dir.0.join("nested/cert");
    let data_dir = dir.0.join("data");
    let args = |force, if_missing| CertArgs {
        out_dir: out_dir.clone(),
        names: vec![],
        force,
        if_missing,
    };
    devcert::run(&args(false, false), &data_dir).unwrap();
    let key = std::fs::read_to_string(out_dir.join("key.pem")).unwrap();
    devcert::run(&args(false, true), &data_dir).unwrap();
    assert_eq!(
        std::fs::read_to_string(out_dir.join("key.pem")).unwrap(),
        key
    );
    assert!(matches!(
        devcert::run(&args(false, false), &data_dir),
        Err(DevCertError::Exists { .. })
    ));
    devcert::run(&args(true, false), &data_dir).unwrap();
    assert_ne!(
        std::fs::read_to_string(out_dir.join("key.pem")).unwrap(),
        key
    );
    CertStore::load(out_dir.join("cert.pem"), out_dir.join("key.pem")).unwrap();
}

// ---------------------------------------------------------------- health check

fn health_args(addr: SocketAddr, http: bool) -> HealthcheckArgs {
    HealthcheckArgs {
        addr: Some(addr.to_string()),
        listen: None,
        timeout: Duration::from_millis(1500),
        http,
        ready: false,
        admin_listen: None,
    }
}

async fn healthcheck(args: HealthcheckArgs) -> Result<(), HealthError> {
    tokio::task::spawn_blocking(move || healthcheck::run(&args))
        .await
        .unwrap()
}

#[tokio::test]
async fn healthcheck_passes_against_a_live_tls_listener() {
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let addr = serve(CertStore::load(&cert, &key).unwrap()).await;
    healthcheck(health_args(addr, false)).await.unwrap();
    healthcheck(health_args(addr, true)).await.unwrap();
}

#[tokio::test]
async fn healthcheck_fails_against_a_closed_port() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap(); // The listener is dropped here: nothing listens on addr.
    let err = healthcheck(health_args(addr, false)).await.unwrap_err();
    assert!(matches!(err, HealthError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn healthcheck_fails_against_plain_http_and_silent_listeners() {
    // A plain-HTTP server answers the ClientHello with an HTTP error.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = plain.accept().await {
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let err = healthcheck(health_args(plain_addr, false))
        .await
        .unwrap_err();
    assert!(matches!(err, HealthError::Handshake { .. }), "{err:?}");
    assert!(!err.to_string().contains('\n'));

    // A listener that accepts and never answers: the check gives up at its timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let mut args = health_args(silent_addr, false);
    args.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = healthcheck(args).await.unwrap_err();
    assert!(matches!(err, HealthError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn healthcheck_http_mode_requires_an_http_response() {
    // Completes TLS but answers the request with something that is not HTTP.
    let dir = TempDir::new();
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let store = CertStore::load(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(tls::server_config(store));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut buf = [0u8; 512];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"SSH-2.0-nope\r\n").await;
                let _ = tls.shutdown().await;
            }
        }
    });
    healthcheck(health_args(addr, false)).await.unwrap();
    let err = healthcheck(health_args(addr, true)).await.unwrap_err();
    assert!(matches!(err, HealthError::Http { .. }), "{err:?}");
}
