//! The helper subcommands: `proxy cert` (the dev certificate: loadable, pinnable and trustable,
//! never overwritten by accident, its key private) and `proxy healthcheck` (passes against a live
//! TLS listener, fails with the reason against anything else).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls_server::{connect, serve};
use common::{provider, TempDir, TestPki};
use proxy::cli::{CertArgs, HealthcheckArgs};
use proxy::cmd::devcert::{self, DevCertError};
use proxy::cmd::healthcheck::{self, HealthError};
use proxy::cmd::localca::LocalCa;
use proxy::tls::{self, CertStore};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

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
    let dir = TempDir::new("cmd");
    let ca = LocalCa::generate().unwrap();
    let dev = devcert::generate(&ca, &["app.test".to_string()]).unwrap();
    let (cert, key) = devcert::write_pair(dir.path(), &dev, false).unwrap();
    assert_eq!(mode_of(&key), 0o600);

    let store = CertStore::load(&cert, &key).unwrap();
    let info = store.info().expect("a loaded store has a certificate");
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
    let dir = TempDir::new("cmd");
    let ca = LocalCa::generate().unwrap();
    let first = devcert::generate(&ca, &[]).unwrap();
    let (cert, key) = devcert::write_pair(dir.path(), &first, false).unwrap();

    let second = devcert::generate(&ca, &[]).unwrap();
    let err = devcert::write_pair(dir.path(), &second, false).unwrap_err();
    assert!(matches!(err, DevCertError::Exists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first.key_pem);

    // Even over a key that someone made world-readable, the replacement is 0600.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    devcert::write_pair(dir.path(), &second, true).unwrap();
    assert_eq!(std::fs::read_to_string(&key).unwrap(), second.key_pem);
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), second.cert_pem);
    assert_eq!(mode_of(&key), 0o600);
    // No temporary files left behind.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cert.pem", "key.pem"]);
}

#[test]
fn cert_command_creates_the_directory_and_respects_if_missing() {
    let dir = TempDir::new("cmd");
    let out_dir = dir.join("nested/cert");
    let data_dir = dir.join("data");
    let args = |force, if_missing| CertArgs {
        out_dir: out_dir.clone(),
        names: vec![],
        force,
        if_missing,
        trust: false,
        untrust: false,
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
    let pki = TestPki::new();
    let addr = serve(CertStore::load(&pki.cert_path, &pki.key_path).unwrap()).await;
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
    let pki = TestPki::new();
    let store = CertStore::load(&pki.cert_path, &pki.key_path).unwrap();
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
