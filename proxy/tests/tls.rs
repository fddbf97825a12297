//! TLS material end to end: start-up errors, key formats and chains, reload (explicit and by file
//! watching) seen through real tokio-rustls handshakes, and session resumption. Certificates come
//! from a test CA made at run time.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::tls_server::{connect, serve};
use common::{provider, TempDir};
use proxy::tls::{self, CertStore, TlsError};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Upper bound for anything that is retried until it happens (file watching).
const EVENTUALLY: Duration = Duration::from_secs(10);
/// Poll interval for `CertStore::watch` in tests.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------- helpers

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

// ---------------------------------------------------------------- start-up errors

/// Whether an error is the expected variant (table-driven cases).
type Expected = fn(&TlsError) -> bool;

#[test]
fn missing_files_are_named() {
    let dir = TempDir::new("tls");
    let ca = TestCa::new();
    let (cert, key) = write_pair(&dir, &ca, &ca.leaf());
    let absent = dir.join("absent.pem");

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
    let dir = TempDir::new("tls");
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
    let dir = TempDir::new("tls");
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

/// `key_pem` (PKCS#8) encrypted with `password` as `openssl pkcs8 -topk8 -v2 aes-256-cbc` does.
fn encrypt_pkcs8(key_pem: &str, password: &str) -> String {
    use pkcs8::der::pem::LineEnding;
    let (_, der) = pkcs8::der::pem::decode_vec(key_pem.as_bytes()).unwrap();
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"test salt", &[7; 16])
            .unwrap();
    let encrypted = pkcs8::PrivateKeyInfo::try_from(der.as_slice())
        .unwrap()
        .encrypt_with_params(params, password)
        .unwrap();
    encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_encrypted_pkcs8_key_loads_with_its_password_file() {
    let dir = TempDir::new("tls");
    let ca = TestCa::new();
    let leaf = ca.leaf();
    let (cert, _) = write_pair(&dir, &ca, &leaf);
    let key = dir.write("encrypted.key", encrypt_pkcs8(&leaf.key_pem, "s3cret pass"));
    let password = dir.write("password", "s3cret pass\n");
    let wrong = dir.write("wrong", "guess\n");

    let store = CertStore::load_with_password(&cert, &key, Some(password)).unwrap();
    let addr = serve(store).await;
    connect(addr, ca.client_config())
        .await
        .expect("served with the decrypted key");

    let err = CertStore::load(&cert, &key).unwrap_err();
    assert!(matches!(err, TlsError::KeyNeedsPassword { .. }), "{err:?}");
    assert!(err.to_string().contains("--tls-key-password-file"), "{err}");
    let err = CertStore::load_with_password(&cert, &key, Some(wrong.clone())).unwrap_err();
    assert!(matches!(err, TlsError::KeyDecrypt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&wrong.display().to_string()),
        "{err}"
    );
    let missing = dir.join("no-such-password");
    let err = CertStore::load_with_password(&cert, &key, Some(missing)).unwrap_err();
    assert!(matches!(err, TlsError::KeyPasswordFile { .. }), "{err:?}");
}

#[test]
fn a_legacy_encrypted_key_is_named_with_the_conversion_command() {
    let dir = TempDir::new("tls");
    let ca = TestCa::new();
    let cert = dir.write("cert.pem", ca.leaf().cert_pem);
    // OpenSSL's traditional format: encryption headers inside the PEM block.
    // The label is put together so that no source line reads like a key header.
    let label = ["EC", "PRIVATE", "KEY"].join(" ");
    let legacy = format!(
        "-----BEGIN {label}-----\nProc-Type: 4,ENCRYPTED\n\
         DEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\n\
         c29tZSBlbmNyeXB0ZWQgYnl0ZXM=\n-----END {label}-----\n"
    );
    let key = dir.write("legacy.key", legacy);
    let err = CertStore::load(&cert, &key).unwrap_err();
    assert!(
        matches!(err, TlsError::LegacyEncryptedKey { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("openssl pkcs8 -topk8"), "{message}");
    assert!(message.contains("legacy.key"), "{message}");
}

#[test]
fn mismatch_names_both_files() {
    let dir = TempDir::new("tls");
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
        let dir = TempDir::new("tls");
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
    let dir = TempDir::new("tls");
    let ca = TestCa::new();
    let leaf = ca.leaf();
    let (cert, key) = write_pair(&dir, &ca, &leaf);
    let store = CertStore::load(&cert, &key).unwrap();
    let info = store.info().expect("a loaded store has a certificate");
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
    let dir = TempDir::new("tls");
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
    let dir = TempDir::new("tls");
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
    let dir = TempDir::new("tls");
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
    let dir = TempDir::new("tls");
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
    assert_eq!(store.info(), Some(info));
    // A fresh client, so the handshake is a full one that shows the certificate now in use.
    assert_eq!(
        connect(addr, ca.client_config()).await.unwrap().cert,
        new.der()
    );
}

#[tokio::test]
async fn broken_new_pair_is_rejected_and_the_old_one_keeps_serving() {
    let dir = TempDir::new("tls");
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

/// On a paused clock: the watcher's polls and the waits between connections are virtual time.
#[tokio::test(start_paused = true)]
async fn watch_picks_up_a_rotation_and_never_serves_a_broken_pair() {
    let dir = TempDir::new("tls");
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
        // Virtual time: the watcher polls in between, and nothing waits in real time.
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
        // Virtual time, as above.
        tokio::time::sleep(WATCH_INTERVAL / 2).await;
    }
    watcher.abort();
}

#[tokio::test]
async fn watch_task_ends_with_the_store() {
    let dir = TempDir::new("tls");
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
