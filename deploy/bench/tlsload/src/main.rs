//! Load generator for the figures wrk and h2load cannot give: new TLS 1.3 connections per second,
//! each carrying one HTTP/1.1 request (`Connection: close`), with full handshakes or with
//! resumption (the client offers a ticket from an earlier connection, as browsers do; each ticket is
//! used once, so servers with single-use TLS 1.3 tickets are measured fairly).
//!
//! `tlsload --port P [--host 127.0.0.1] [--duration SECS] [--concurrency N] [--resume]`
//! prints one JSON line: conns, errors, resumed, seconds, conns_per_s, first_error.
//! One thread (a current-thread runtime): bench.py pins it to the load-generator core.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Per-connection deadline: a server stalling longer than this is counted as an error.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Client session cache size per worker (one server name is used, so a few are plenty).
const SESSION_CACHE_ENTRIES: usize = 16;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("usage: {0}")]
    Usage(String),
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("tls handshake: {0}")]
    Handshake(io::Error),
    #[error("request/response i/o: {0}")]
    Io(io::Error),
    #[error("unexpected response: {0:?}")]
    Response(String),
    #[error("no response within {CONNECTION_TIMEOUT:?}")]
    Timeout,
}

struct Args {
    addr: SocketAddr,
    duration: Duration,
    concurrency: usize,
    resume: bool,
}

fn parse_args() -> Result<Args, Error> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let (mut port, mut duration, mut concurrency, mut resume) = (None, 10.0_f64, 16_usize, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))
        };
        let bad = |v: &str| Error::Usage(format!("{flag}: bad value {v:?}"));
        match flag.as_str() {
            "--host" => {
                let v = value()?;
                host = v.parse().map_err(|_| bad(&v))?;
            }
            "--port" => {
                let v = value()?;
                port = Some(v.parse().map_err(|_| bad(&v))?);
            }
            "--duration" => {
                let v = value()?;
                duration = v.parse().map_err(|_| bad(&v))?;
            }
            "--concurrency" => {
                let v = value()?;
                concurrency = v.parse().map_err(|_| bad(&v))?;
            }
            "--resume" => resume = true,
            other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let port = port.ok_or_else(|| Error::Usage("--port is required".into()))?;
    Ok(Args {
        addr: SocketAddr::new(host, port),
        duration: Duration::from_secs_f64(duration),
        concurrency: concurrency.max(1),
        resume,
    })
}

/// Accepts the per-run self-signed certificate without building a chain, but still checks the
/// server's handshake signature, so the server pays for signing exactly as with a real client.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(resume: bool) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        Resumption::in_memory_sessions(SESSION_CACHE_ENTRIES)
    } else {
        Resumption::disabled()
    };
    config
}

/// One connection, one request; returns whether the handshake was a resumption.
async fn one_connection(
    connector: &TlsConnector,
    addr: SocketAddr,
    request: &[u8],
) -> Result<bool, Error> {
    let tcp = TcpStream::connect(addr).await.map_err(Error::Connect)?;
    tcp.set_nodelay(true).map_err(Error::Connect)?;
    let name = ServerName::try_from("localhost").expect("static name is valid");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(Error::Handshake)?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(request).await.map_err(Error::Io)?;
    let mut response = Vec::with_capacity(1024);
    // The server closes after the response (Connection: close); reading to the end also takes in
    // the TLS 1.3 session tickets. A close without close_notify after a complete response is fine.
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && complete(&response) => {}
        Err(e) => return Err(Error::Io(e)),
    }
    if !response.starts_with(b"HTTP/1.1 200 ") || !complete(&response) {
        let head = String::from_utf8_lossy(&response[..response.len().min(80)]).into_owned();
        return Err(Error::Response(head));
    }
    Ok(resumed)
}

/// Whether `response` holds the whole header block and, if it declares one, the whole body.
fn complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_none_or(|n| response.len() >= end + 4 + n)
}

#[derive(Default)]
struct Tally {
    conns: u64,
    errors: u64,
    resumed: u64,
    first_error: Option<String>,
}

async fn worker(connector: TlsConnector, addr: SocketAddr, deadline: Instant) -> Tally {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let attempt = tokio::time::timeout(
            CONNECTION_TIMEOUT,
            one_connection(&connector, addr, request.as_bytes()),
        )
        .await
        .unwrap_or(Err(Error::Timeout));
        match attempt {
            Ok(resumed) => {
                tally.conns += 1;
                tally.resumed += u64::from(resumed);
            }
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    tally
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tlsload: {e}");
            std::process::exit(64);
        }
    };
    let start = Instant::now();
    let deadline = start + args.duration;
    // A config (and so a session cache) per worker: rustls keeps at most 8 tickets per server
    // name, fewer than the workers in flight, and a server sending one ticket per connection
    // (Go's) would then see full handshakes that no real client would make.
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let connector = TlsConnector::from(Arc::new(client_config(args.resume)));
            tokio::spawn(worker(connector, args.addr, deadline))
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.expect("worker does not panic");
        total.conns += t.conns;
        total.errors += t.errors;
        total.resumed += t.resumed;
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"conns\": {}, \"errors\": {}, \"resumed\": {}, \"seconds\": {:.3}, \
         \"conns_per_s\": {:.1}, \"first_error\": {}}}",
        total.conns,
        total.errors,
        total.resumed,
        seconds,
        total.conns as f64 / seconds,
        total
            .first_error
            .as_deref()
            .map_or("null".to_string(), json_string),
    );
}
