//! Client certificates (mutual TLS) end to end, with certificates the tests make: a good client
//! reaches the upstream with exactly the `X-Forwarded-Client-Cert` its certificate gives; an
//! unknown CA, an expired certificate and an identity outside the allow-list are refused in the
//! handshake (and reach nothing); a client's own `X-Forwarded-Client-Cert` never passes, with
//! mutual TLS on or off, even from a trusted proxy; optional mode serves a client without a certificate; the CA file reloads.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use common::{TempDir, TestPki, TestProxy, TestUpstream};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_proxy");
const SPIFFE_ID: &str = "spiffe://example.org/ns/prod/sa/billing";

/// A CA that issues client certificates.
struct ClientCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A client certificate, its key, and the DER the proxy hashes.
struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
}

impl ClientCa {
    fn new(name: &str) -> ClientCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        ClientCa { cert, key }
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    fn write(&self, dir: &TempDir, name: &str) -> PathBuf {
        dir.replace(name, self.cert.pem())
    }

    /// Issues a client certificate for `cn` with `sans`; `expired` dates it in the past.
    fn issue(&self, cn: &str, sans: Vec<SanType>, expired: bool) -> ClientCert {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the client certificate");
        ClientCert {
            chain: vec![cert.der().clone()],
            key,
        }
    }
}

fn billing_sans() -> Vec<SanType> {
    vec![
        SanType::URI(SPIFFE_ID.try_into().expect("URI")),
        SanType::DnsName("billing.example".try_into().expect("DNS name")),
    ]
}

impl ClientCert {
    /// The header value the upstream must get for this certificate.
    fn expected_xfcc(&self, subject: &str, sans: &str) -> String {
        let hash: String = Sha256::digest(&self.chain[0])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("Hash={hash};Subject=\"{subject}\"{sans}")
    }
}

/// A client config trusting the proxy's certificate, presenting `cert` when given.
fn client_config(pki: &TestPki, cert: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("trust the test CA");
    let builder = rustls::ClientConfig::builder_with_provider(common::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(
                cert.chain.clone(),
                PrivateKeyDer::try_from(cert.key.serialize_der()).expect("client key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Sends `GET /` (with `xfcc` as the client's own X-Forwarded-Client-Cert, if given) and returns
/// the status, or the failure with its causes (a refused handshake shows the alert).
async fn get(
    proxy: &TestProxy,
    config: Arc<rustls::ClientConfig>,
    xfcc: Option<&str>,
) -> Result<StatusCode, String> {
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("{e:?}"))?;
    tokio::spawn(conn);
    let mut request = Request::builder().uri("/").header("host", "localhost");
    if let Some(value) = xfcc {
        request = request.header("x-forwarded-client-cert", value);
    }
    let request = request.body(Empty::<Bytes>::new()).expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(response.status())
}

/// The X-Forwarded-Client-Cert values of the last request the upstream got.
fn xfcc_seen(upstream: &TestUpstream) -> Vec<String> {
    upstream
        .last()
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().expect("ASCII").to_owned())
        .collect()
}

struct Setup {
    pki: TestPki,
    upstream: TestUpstream,
    ca: ClientCa,
    dir: TempDir,
    proxy: TestProxy,
}

/// A proxy verifying clients against a fresh client CA, with `extra` settings.
async fn setup(extra: &[&str]) -> Setup {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let dir = TempDir::new("client-ca");
    let ca = ClientCa::new("client test CA");
    let ca_path = ca.write(&dir, "client-ca.pem");
    let mut args = vec!["--client-ca", ca_path.to_str().expect("UTF-8 path")];
    args.extend_from_slice(extra);
    let proxy = TestProxy::start(&pki, upstream.addr, &args).await;
    Setup {
        pki,
        upstream,
        ca,
        dir,
        proxy,
    }
}

#[tokio::test]
async fn a_good_client_reaches_the_upstream_with_its_identity_and_spoofs_are_replaced() {
    // The client's address is a trusted proxy's: its X-Forwarded-Client-Cert is stripped all the
    // same (it would name a certificate the proxy never verified).
    let allow = format!("uri:{SPIFFE_ID}");
    let s = setup(&["--client-allow", &allow, "--trusted-proxies", "127.0.0.1"]).await;
    let cert = s.ca.issue("good-client", billing_sans(), false);
    let config = client_config(&s.pki, Some(&cert));
    let want = cert.expected_xfcc(
        "CN=good-client",
        &format!(";URI={SPIFFE_ID};DNS=billing.example"),
    );

    assert_eq!(
        get(&s.proxy, config.clone(), None).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(xfcc_seen(&s.upstream), std::slice::from_ref(&want));

    // A client's own header is dropped and the real one put in its place.
    let spoof = "Hash=00;Subject=\"CN=admin\";URI=spiffe://example.org/ns/prod/sa/admin";
    assert_eq!(get(&s.proxy, config, Some(spoof)).await, Ok(StatusCode::OK));
    assert_eq!(xfcc_seen(&s.upstream), [want]);
}

#[tokio::test]
async fn refused_clients_get_an_alert_and_reach_nothing() {
    let s = setup(&["--client-allow", "cn:good-client"]).await;
    let stranger = ClientCa::new("another CA").issue("good-client", vec![], false);
    let expired = s.ca.issue("good-client", vec![], true);
    let outsider = s.ca.issue("outsider", billing_sans(), false);
    // (client, its certificate, the alert it must receive)
    let cases = [
        ("unknown CA", Some(&stranger), "UnknownCA"),
        ("expired", Some(&expired), "CertificateExpired"),
        ("not in the allow-list", Some(&outsider), "AccessDenied"),
        ("no certificate", None, "CertificateRequired"),
    ];
    for (name, cert, alert) in cases {
        let result = get(&s.proxy, client_config(&s.pki, cert), None).await;
        let error = result.expect_err(name);
        assert!(
            error.contains(&format!("AlertReceived({alert})")),
            "{name}: {error}"
        );
    }
    assert!(
        s.upstream.seen().is_empty(),
        "a refused client reached the upstream"
    );
    // The allowed identity from the same CA is served.
    let good = s.ca.issue("good-client", vec![], false);
    assert_eq!(
        get(&s.proxy, client_config(&s.pki, Some(&good)), None).await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test]
async fn optional_mode_serves_a_client_without_a_certificate_without_the_header() {
    let s = setup(&["--client-auth", "optional"]).await;
    let spoof = "Hash=00;Subject=\"CN=admin\"";
    assert_eq!(
        get(&s.proxy, client_config(&s.pki, None), Some(spoof)).await,
        Ok(StatusCode::OK)
    );
    assert!(xfcc_seen(&s.upstream).is_empty());

    let cert = s.ca.issue("optional-client", vec![], false);
    assert_eq!(
        get(&s.proxy, client_config(&s.pki, Some(&cert)), None).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        xfcc_seen(&s.upstream),
        [cert.expected_xfcc("CN=optional-client", "")]
    );
    // A certificate that does not verify is still refused.
    let stranger = ClientCa::new("another CA").issue("x", vec![], false);
    assert!(get(&s.proxy, client_config(&s.pki, Some(&stranger)), None)
        .await
        .is_err());
}

#[tokio::test]
async fn without_mutual_tls_a_clients_header_is_stripped() {
    let pki = TestPki::new();
    let upstream = TestUpstream::start().await;
    let proxy = TestProxy::start(&pki, upstream.addr, &["--trusted-proxies", "127.0.0.1"]).await;
    let spoof = "Hash=00;Subject=\"CN=admin\"";
    assert_eq!(
        get(&proxy, client_config(&pki, None), Some(spoof)).await,
        Ok(StatusCode::OK)
    );
    assert!(xfcc_seen(&upstream).is_empty());
}

#[tokio::test]
async fn the_client_ca_reloads_and_a_bad_file_keeps_the_old_one() {
    let s = setup(&[]).await;
    let old_client = s.ca.issue("old", vec![], false);
    let new_ca = ClientCa::new("rotated client CA");
    let new_client = new_ca.issue("new", vec![], false);
    let reload = || s.proxy.proxy.reload(&s.proxy.argv, &HashMap::new());

    // A broken file is refused; the old CA keeps verifying.
    s.dir.replace("client-ca.pem", "not a certificate");
    assert!(reload().is_err());
    assert!(
        get(&s.proxy, client_config(&s.pki, Some(&old_client)), None)
            .await
            .is_ok()
    );

    new_ca.write(&s.dir, "client-ca.pem");
    reload().expect("reload with the new CA");
    assert!(
        get(&s.proxy, client_config(&s.pki, Some(&new_client)), None)
            .await
            .is_ok()
    );
    assert!(
        get(&s.proxy, client_config(&s.pki, Some(&old_client)), None)
            .await
            .is_err()
    );
}

/// On a paused clock, as the certificate watcher's test: the polls are virtual time.
#[tokio::test(start_paused = true)]
async fn a_new_client_ca_file_is_picked_up_by_the_watcher() {
    let s = setup(&["--cert-watch-interval", "20ms"]).await;
    let new_ca = ClientCa::new("rotated client CA");
    let new_client = new_ca.issue("new", vec![], false);
    new_ca.write(&s.dir, "client-ca.pem");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&s.proxy, client_config(&s.pki, Some(&new_client)), None)
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new CA file was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_binary_logs_a_refused_client_with_the_peer_and_the_reason() {
    let pki = TestPki::new();
    let dir = TempDir::new("client-ca-process");
    let ca = ClientCa::new("client test CA");
    let ca_path = ca.write(&dir, "client-ca.pem");
    let mut child = tokio::process::Command::new(BIN)
        .args(["--env-file", "/dev/null", "--listen", "127.0.0.1:0"])
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--client-allow",
            "cn:billing",
        ])
        .arg("--tls-cert")
        .arg(&pki.cert_path)
        .arg("--tls-key")
        .arg(&pki.key_path)
        .arg("--client-ca")
        .arg(&ca_path)
        .env_clear()
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn proxy");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let listening = until(&mut lines, "listening (https)").await;
    let addr: std::net::SocketAddr = listening["fields"]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the listening address");
    let outsider = ca.issue("outsider", vec![], false);
    let config = client_config(&pki, Some(&outsider));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await;
    // TLS 1.3: the client's handshake completes before the server has read its certificate; the
    // refusal comes as an alert on the first read.
    if let Ok(mut tls) = tls {
        let mut buf = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
    }
    let refused = until(&mut lines, "client certificate refused").await;
    assert_eq!(refused["fields"]["reason"], "not allowed", "{refused}");
    let detail = refused["fields"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("cn:outsider"), "{refused}");
    assert!(
        refused["span"]["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "{refused}"
    );
    child.kill().await.expect("stop the proxy");
}

/// Reads JSON log lines until one whose message is `message`, and returns it.
async fn until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    message: &str,
) -> serde_json::Value {
    let wait = async {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if json["fields"]["message"] == message {
                return json;
            }
        }
        panic!("the proxy exited before logging {message:?}");
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .expect(message)
}
