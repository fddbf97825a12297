//! `proxy healthcheck`: a container health check that needs no shell or curl. It connects to the
//! local TLS listener, requires a completed TLS handshake and, with `--http`, any HTTP response;
//! with `--ready` it asks the admin listener's `/readyz` instead (plain HTTP, [`admin_get`], which
//! `proxy admin-get` also uses to read `/metrics` where there is no curl).
//!
//! It checks that this proxy's listener is alive, not who it is, so the certificate chain is not
//! verified (a dev or private-CA certificate must not make a healthy proxy look dead); the server
//! must still prove it holds the certificate's key, since the handshake signatures are checked.
//! Blocking I/O on purpose: a one-shot check needs no async runtime.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::{AdminGetArgs, HealthcheckArgs, DEFAULT_HEALTHCHECK_ADDR};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// SNI sent in the handshake; the proxy serves one certificate whatever the name.
const SERVER_NAME: &str = "localhost";

/// Why the listener is considered unhealthy; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{phase} with {addr} did not finish within {timeout:?}")]
    Timeout {
        phase: &'static str,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: io::Error },
    #[error("no HTTP response from {addr}: {detail}")]
    Http { addr: SocketAddr, detail: String },
    #[error(
        "the admin listener is off: set PROXY_ADMIN_LISTEN (--admin-listen), e.g. 127.0.0.1:9901"
    )]
    NoAdmin,
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
}

/// `addr` with a wildcard IP replaced by loopback (a listen address, as a client reaches it).
fn loopback(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(mut listen) => {
            if listen.ip().is_unspecified() {
                listen.set_ip(match listen {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            listen.to_string()
        }
        Err(_) => addr.to_owned(),
    }
}

/// `GET path` on the plain-HTTP admin listener at `addr` (a listen address: a wildcard means
/// loopback), within `timeout`: the status and the body.
pub fn admin_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), HealthError> {
    let deadline = Instant::now() + timeout;
    let (mut tcp, addr) = connect(&loopback(addr), timeout)?;
    let failed = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HealthError::Timeout {
            phase: "admin request",
            addr,
            timeout,
        },
        _ => HealthError::Http {
            addr,
            detail: source.to_string(),
        },
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    set_deadline(&tcp, deadline).map_err(failed)?;
    tcp.write_all(request.as_bytes()).map_err(failed)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        set_deadline(&tcp, deadline).map_err(failed)?;
        match tcp.read(&mut buf).map_err(failed)? {
            0 => break,
            n => reply.extend_from_slice(&buf[..n]),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    // "HTTP/1.1 200 OK": the second word is the status.
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(|| HealthError::Http {
            addr,
            detail: format!("unexpected reply {:?}", head.lines().next().unwrap_or("")),
        })?;
    Ok((status, body.to_owned()))
}

/// `--ready`: the admin listener's `/readyz` must answer 200.
fn ready(args: &HealthcheckArgs) -> Result<(), HealthError> {
    let admin = args.admin_listen.as_deref().ok_or(HealthError::NoAdmin)?;
    match admin_get(admin, "/readyz", args.timeout)? {
        (200, _) => Ok(()),
        (status, body) => Err(HealthError::Status {
            addr: loopback(admin),
            status,
            body: body.trim().to_owned(),
        }),
    }
}

impl HealthcheckArgs {
    /// The address to check: `--addr`, else the proxy's listen address with a wildcard IP
    /// replaced by loopback, else [`DEFAULT_HEALTHCHECK_ADDR`].
    pub fn target(&self) -> String {
        if let Some(addr) = &self.addr {
            return addr.clone();
        }
        match self.listen.as_deref() {
            Some(listen) => loopback(listen),
            None => DEFAULT_HEALTHCHECK_ADDR.to_owned(),
        }
    }
}

/// Runs the check once.
pub fn run(args: &HealthcheckArgs) -> Result<(), HealthError> {
    if args.ready {
        return ready(args);
    }
    let deadline = Instant::now() + args.timeout;
    let (mut tcp, addr) = connect(&args.target(), args.timeout)?;
    let phase_err = |phase: &'static str, source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HealthError::Timeout {
            phase,
            addr,
            timeout: args.timeout,
        },
        _ if phase == "tls handshake" => HealthError::Handshake { addr, source },
        _ => HealthError::Http {
            addr,
            detail: source.to_string(),
        },
    };

    let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
    let mut conn = ClientConnection::new(client_config(), name)
        .map_err(|e| phase_err("tls handshake", io::Error::other(e)))?;
    while conn.is_handshaking() {
        set_deadline(&tcp, deadline).map_err(|e| phase_err("tls handshake", e))?;
        conn.complete_io(&mut tcp)
            .map_err(|e| phase_err("tls handshake", e))?;
    }
    if !args.http {
        return Ok(());
    }

    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let request = format!("GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    let mut got = 0;
    let http = (|| -> io::Result<()> {
        set_deadline(tls.sock, deadline)?;
        tls.write_all(request.as_bytes())?;
        while got < head.len() {
            set_deadline(tls.sock, deadline)?;
            match tls.read(&mut head[got..])? {
                0 => break,
                n => got += n,
            }
        }
        Ok(())
    })();
    http.map_err(|e| phase_err("http request", e))?;
    // "HTTP/1.1 200 " or any other status line: the proxy answered.
    if got == head.len() && head.starts_with(b"HTTP/1.") && head[8] == b' ' {
        Ok(())
    } else {
        Err(HealthError::Http {
            addr,
            detail: format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&head[..got])
            ),
        })
    }
}

/// `proxy admin-get PATH`: prints the body of `GET PATH` on the admin listener; 0 on a 200,
/// else 1 (the status and body on stderr).
pub fn admin_get_and_print(args: &AdminGetArgs) -> ExitCode {
    let Some(admin) = args.admin_listen.as_deref() else {
        eprintln!("proxy admin-get: {}", HealthError::NoAdmin);
        return ExitCode::from(crate::error::EXIT_CONFIG);
    };
    match admin_get(admin, &args.path, args.timeout) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("proxy admin-get: {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("proxy admin-get: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`run`], then prints one line (`ok: ...` on stdout or `unhealthy: ...` on stderr) and returns
/// the exit code a container runtime expects: 0 healthy, 1 unhealthy.
pub fn run_and_report(args: &HealthcheckArgs) -> ExitCode {
    match run(args) {
        Ok(()) if args.ready => {
            println!("ok: ready");
            ExitCode::SUCCESS
        }
        Ok(()) => {
            println!("ok: {} completed a TLS handshake", args.target());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tries each resolved address in turn, as a client would.
fn connect(addr: &str, timeout: Duration) -> Result<(TcpStream, SocketAddr), HealthError> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|source| HealthError::Resolve {
            addr: addr.to_owned(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for candidate in addrs {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(tcp) => return Ok((tcp, candidate)),
            Err(e) => last = e,
        }
    }
    Err(HealthError::Connect {
        addr: addr.to_owned(),
        source: last,
    })
}

fn set_deadline(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))
}

fn client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LivenessOnly(provider)))
        .with_no_client_auth();
    // HTTP/1.1 only: the optional request is written as HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Accepts any certificate but checks the handshake signatures made with its key.
#[derive(Debug)]
struct LivenessOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for LivenessOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_follows_the_listen_address() {
        let args = |addr: Option<&str>, listen: Option<&str>| HealthcheckArgs {
            addr: addr.map(str::to_owned),
            listen: listen.map(str::to_owned),
            timeout: Duration::from_secs(1),
            http: false,
            ready: false,
            admin_listen: None,
        };
        let cases = [
            (None, None, "127.0.0.1:8443"),
            (None, Some("0.0.0.0:9443"), "127.0.0.1:9443"),
            (None, Some("[::]:9443"), "[::1]:9443"),
            (None, Some("10.1.2.3:443"), "10.1.2.3:443"),
            (None, Some("proxy:8443"), "proxy:8443"),
            (Some("localhost:1"), Some("0.0.0.0:9443"), "localhost:1"),
        ];
        for (addr, listen, want) in cases {
            assert_eq!(args(addr, listen).target(), want, "{addr:?} {listen:?}");
        }
    }
}
