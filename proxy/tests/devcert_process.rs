//! The development certificate as a new user meets it, through the real binary with a temporary
//! HOME: the proxy started with no certificate configured serves one issued by the local CA it
//! keeps in the data directory (and reuses both at the next start); `proxy cert` keeps the CA and
//! re-issues the certificate.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_proxy");

/// Starts the proxy in `dir` with only `HOME` set (no certificate settings); returns the child,
/// its address and the start-up log up to the listening line.
async fn start(dir: &Path, home: &Path) -> (tokio::process::Child, std::net::SocketAddr, String) {
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("HOME", home)
        .env("PROXY_LISTEN", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn proxy");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (addr, log) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut log = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if json["fields"]["message"] == "listening (https)" {
                let addr = json["fields"]["addr"].as_str().unwrap().parse().unwrap();
                return (addr, log);
            }
        }
        panic!("the proxy exited before listening:\n{log}");
    })
    .await
    .expect("the proxy starts");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, log)
}

/// Completes a handshake trusting only the CA in `ca_pem`, and returns the served certificate.
async fn served_by_ca(ca_pem: &Path, addr: std::net::SocketAddr) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("trust the CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the served certificate verifies against the local CA");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn without_a_certificate_the_proxy_serves_one_from_its_local_ca_and_reuses_it() {
    let home = common::TempDir::new("devcert-home");
    let work = common::TempDir::new("devcert-cwd");
    let data = home.join(".local/share/proxy");

    let (mut first, addr, log) = start(work.path(), home.path()).await;
    assert!(log.contains("serving the development certificate"), "{log}");
    assert!(
        log.contains(&data.join("localhost/cert.pem").display().to_string()),
        "{log}"
    );
    assert!(log.contains("spki_sha256"), "the pin is logged: {log}");
    let served = served_by_ca(&data.join("ca.pem"), addr).await;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&data.join("localhost/key.pem")), 0o600);
    first.kill().await.unwrap();

    let ca_before = std::fs::read(data.join("ca.pem")).unwrap();
    let (mut second, addr, log) = start(work.path(), home.path()).await;
    assert!(log.contains("\"issued_now\":false"), "{log}");
    assert_eq!(
        served_by_ca(&data.join("ca.pem"), addr).await,
        served,
        "reused"
    );
    assert_eq!(std::fs::read(data.join("ca.pem")).unwrap(), ca_before);
    second.kill().await.unwrap();
}

#[test]
fn proxy_cert_keeps_the_ca_and_reissues_the_certificate() {
    let dir = common::TempDir::new("devcert-cmd");
    let data = dir.join("data");
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PROXY_DATA_DIR", &data)
            .current_dir(&dir)
            .output()
            .expect("run proxy cert");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {text}");
        text
    };
    let first = run(&["cert", "--out-dir", "out"]);
    assert!(first.contains("local CA (made)"), "{first}");
    assert!(first.contains("proxy cert --trust"), "{first}");
    let ca = std::fs::read(data.join("ca.pem")).unwrap();
    let cert = std::fs::read(dir.join("out/cert.pem")).unwrap();

    // --if-missing leaves a valid pair alone.
    let kept = run(&["cert", "--out-dir", "out", "--if-missing"]);
    assert!(kept.contains("leaving them as they are"), "{kept}");
    assert_eq!(std::fs::read(dir.join("out/cert.pem")).unwrap(), cert);

    let second = run(&["cert", "--out-dir", "out", "--force"]);
    assert!(second.contains("local CA (kept)"), "{second}");
    assert_eq!(
        std::fs::read(data.join("ca.pem")).unwrap(),
        ca,
        "the CA stays"
    );
    assert_ne!(
        std::fs::read(dir.join("out/cert.pem")).unwrap(),
        cert,
        "a new certificate"
    );
}
