//! Debian's `pebble` ACME test server and `pebble-challtestsrv` (its DNS, answering 127.0.0.1 for
//! every name), started on free loopback ports for one test and killed when dropped. Pebble's own
//! HTTPS certificate comes from a CA the test makes, which the proxy gets as its ACME CA root.

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};

/// Time for pebble and its DNS server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between connection attempts while a server starts (a poll, bounded by the deadline).
const POLL: Duration = Duration::from_millis(20);

/// A running pebble with its DNS server.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// The ACME directory URL.
    pub directory: String,
    /// The root pebble's HTTPS certificate chains to (PEM file).
    pub https_root: PathBuf,
    /// The management interface, which hands out the root that issued certificates chain to.
    management: SocketAddr,
}

/// A TLS client config that trusts `root` only.
pub fn trusting(root: CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

fn binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The binaries, or `None` after saying why the test is skipped; under `CI=true` a missing
/// pebble fails the test instead.
fn binaries() -> Option<(PathBuf, PathBuf)> {
    match (binary("pebble"), binary("pebble-challtestsrv")) {
        (Some(pebble), Some(dns)) => Some((pebble, dns)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "pebble and pebble-challtestsrv are needed in CI: apt-get install pebble"
            );
            eprintln!(
                "SKIPPED: pebble or pebble-challtestsrv not found on PATH \
                 (Debian: apt-get install pebble); the ACME tests did not run"
            );
            None
        }
    }
}

fn free_tcp_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind a free TCP port");
    l.local_addr().expect("local addr").port()
}

fn free_udp_and_tcp_port() -> u16 {
    // The DNS server takes the port for UDP and TCP both: find one free for both.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
        let port = udp.local_addr().expect("local addr").port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_for_tcp(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} not listening on {addr}");
        std::thread::sleep(POLL);
    }
}

/// Pebble's HTTPS pair for 127.0.0.1, from a new CA; returns the CA's file.
fn write_https_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pebble https test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("pebble-ca.pem"),
        dir.join("pebble-cert.pem"),
        dir.join("pebble-key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` (the
    /// proxy's listeners, bound by the caller first), with its files in `dir`. `None`: skipped.
    pub fn start(dir: &Path, http_port: u16, tls_port: u16) -> Option<Pebble> {
        let (pebble_bin, dns_bin) = binaries()?;
        let dns_port = free_udp_and_tcp_port();
        let dns_management = free_tcp_port();
        let mut dns = Command::new(dns_bin)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], dns_port)),
            &mut dns,
            "pebble-challtestsrv",
        );

        let (https_root, cert, key) = write_https_pki(dir);
        let port = free_tcp_port();
        let management = free_tcp_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let mut pebble = Command::new(pebble_bin)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pebble");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_tcp(addr, &mut pebble, "pebble");
        Some(Pebble {
            pebble,
            dns,
            directory: format!("https://127.0.0.1:{port}/dir"),
            https_root,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
        })
    }

    /// The root the certificates pebble issues chain to (made anew at each start), fetched from
    /// its management interface over HTTPS.
    pub async fn issuing_root(&self) -> CertificateDer<'static> {
        let pem = std::fs::read(&self.https_root).unwrap();
        let config = trusting(CertificateDer::from_pem_slice(&pem).unwrap());
        let tcp = tokio::net::TcpStream::connect(self.management)
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("/roots/0")
            .header("host", self.management.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        CertificateDer::from_pem_slice(&body).unwrap()
    }

    /// Stops pebble: its port is closed from now on (the DNS server keeps running).
    pub fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
