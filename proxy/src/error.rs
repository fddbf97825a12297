//! Errors and the one place they map to HTTP statuses (requests) and exit codes (start-up).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::cors::CorsConfigError;
use crate::metrics::Refused;

/// Exit code for configuration and start-up errors (`EX_USAGE` in sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// Why a request could not be answered by the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Connecting failed: refused, unreachable, DNS, or the connect timeout.
    #[error("upstream {upstream} unreachable: {source}")]
    Unreachable {
        upstream: String,
        #[source]
        source: ConnectError,
    },
    /// The connection failed after the request was sent (reset, closed before a response).
    #[error("upstream {upstream} failed: {source}")]
    Upstream {
        upstream: String,
        #[source]
        source: hyper::Error,
    },
    /// No response head within the upstream response timeout.
    #[error("upstream {upstream} sent no response within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    /// More header fields than `PROXY_MAX_HEADERS` (HTTP/1.1 is refused by hyper itself).
    #[error("request has {count} header fields, more than the limit of {limit}")]
    TooManyHeaders { count: usize, limit: usize },
    /// The client's request is one the proxy does not forward (the client's error, or a feature
    /// the proxy does not implement).
    #[error("request refused: {}", .0.label())]
    Refused(Refused),
    /// The client's request body stalled (phase `body_read`).
    #[error("no request body bytes from the client within {timeout:?}")]
    BodyReadTimeout { timeout: Duration },
    /// The upstream answered `101` naming a protocol the client did not ask for (or to a request
    /// that asked for no upgrade): the connection is not turned into a tunnel.
    #[error("upstream {upstream} switched to {got:?}, which the request did not ask for")]
    UpgradeMismatch { upstream: String, got: String },
}

/// Why the client's request body stopped on its way upstream.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading it from the client failed: a malformed chunk, or the client went away mid-body.
    #[error("reading the request body from the client failed: {0}")]
    Client(#[source] hyper::Error),
    /// It passed `PROXY_MAX_BODY_BYTES`.
    #[error("the request body passed the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// No bytes of it came within `PROXY_BODY_READ_TIMEOUT`.
    #[error("no request body bytes within {timeout:?}")]
    ReadTimeout { timeout: Duration },
}

impl ProxyError {
    /// The error for an exchange that failed once the request was (being) sent: the client's
    /// body, when that is what stopped it (the client's error, not the upstream's), else the
    /// upstream connection's failure.
    pub fn exchange_failed(upstream: String, source: hyper::Error) -> ProxyError {
        let body = std::error::Error::source(&source).and_then(|e| e.downcast_ref::<BodyError>());
        match body {
            Some(BodyError::TooLarge { .. }) => ProxyError::Refused(Refused::BodyTooLarge),
            Some(BodyError::Client(_)) => ProxyError::Refused(Refused::MalformedBody),
            Some(BodyError::ReadTimeout { timeout }) => {
                ProxyError::BodyReadTimeout { timeout: *timeout }
            }
            None => ProxyError::Upstream { upstream, source },
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            // The upstream is up, only busy beyond the cap: a retry later may succeed.
            ProxyError::Unreachable {
                source: ConnectError::Saturated { .. },
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unreachable { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UpgradeMismatch { .. } => StatusCode::BAD_GATEWAY,
            // RFC 9110 §15.5.9: the server would not wait longer for the request.
            ProxyError::BodyReadTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Refused(refused) => match refused {
                // RFC 9112 §3.2 (HTTP/1.1) and RFC 9113 §8.3.1 (HTTP/2): 400 for a missing,
                // repeated, invalid or contradicting Host.
                Refused::MissingHost
                | Refused::DuplicateHost
                | Refused::InvalidHost
                | Refused::HostMismatch
                | Refused::AsteriskForm
                | Refused::MalformedBody => StatusCode::BAD_REQUEST,
                // RFC 9110 §15.5.6: the method is known and not allowed here.
                Refused::Method => StatusCode::METHOD_NOT_ALLOWED,
                // RFC 9112 §6.1: a coding the server does not understand is answered with 501.
                Refused::TransferCoding => StatusCode::NOT_IMPLEMENTED,
                Refused::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            },
        }
    }

    /// Whether the client is to blame (logged at debug, not as a failure of the proxy's).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ProxyError::Refused(_)
                | ProxyError::TooManyHeaders { .. }
                | ProxyError::BodyReadTimeout { .. }
        )
    }

    /// Whether the client connection must close after this answer: its request's body may be
    /// left unread or mis-framed, or an upgrade was half made, and nothing on the connection after
    /// it can be trusted to start a new message.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::UpgradeMismatch { .. }
                | ProxyError::BodyReadTimeout { .. }
                | ProxyError::Refused(
                    Refused::TransferCoding | Refused::BodyTooLarge | Refused::MalformedBody
                )
        )
    }

    /// A short machine-readable cause for logs and JSON bodies.
    pub fn cause(&self) -> &'static str {
        match self {
            ProxyError::Unreachable {
                source: ConnectError::Saturated { .. },
                ..
            } => "upstream_saturated",
            ProxyError::Unreachable { .. } => "upstream_unreachable",
            ProxyError::Upstream { .. } => "upstream_connection_failed",
            ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::TooManyHeaders { .. } => "too_many_headers",
            ProxyError::UpgradeMismatch { .. } => "upstream_upgrade_mismatch",
            ProxyError::BodyReadTimeout { .. } => "body_read_timeout",
            ProxyError::Refused(refused) => refused.label(),
        }
    }

    /// The response sent to the client: a short body, JSON when the client asked for JSON. The
    /// upstream's address stays in the log, not in the body.
    pub fn to_response(&self, wants_json: bool) -> Response<Full<Bytes>> {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("Error");
        let (body, content_type) = if wants_json {
            let body = serde_json::json!({
                "error": self.cause(),
                "status": status.as_u16(),
                "detail": reason,
            });
            (body.to_string(), "application/json")
        } else {
            (
                format!("{} {reason}\n", status.as_u16()),
                "text/plain; charset=utf-8",
            )
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.closes_connection() {
            // hyper closes an HTTP/1.1 connection after a response that says so; HTTP/2 ignores
            // the field (it is removed there, being connection-specific, RFC 9113 §8.2.2).
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// An invalid setting or unreadable configuration source (exit code 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap rejected the command line (also `--help`/`--version`, which are not failures).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("env file {path}: not found (remove --env-file/PROXY_ENV_FILE or create the file)")]
    EnvFileMissing { path: PathBuf },
    #[error("env file {path} line {line}: {problem}")]
    EnvFileLine {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("env file {path}: {source}")]
    EnvFile {
        path: PathBuf,
        #[source]
        source: dotenvy::Error,
    },
    #[error("{setting}={value:?}: {problem}")]
    Invalid {
        setting: &'static str,
        value: String,
        problem: String,
    },
    #[error(transparent)]
    Cors(#[from] CorsConfigError),
}

/// Why no connection to the upstream could be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The host name did not resolve.
    Resolve(std::io::Error),
    /// The name resolved to no address.
    NoAddress,
    /// Every address refused or failed.
    Connect(SocketAddr, std::io::Error),
    /// The UNIX socket at this path is missing, refused, or not accessible.
    Socket(PathBuf, std::io::Error),
    /// Resolving and connecting took longer than `PROXY_UPSTREAM_CONNECT_TIMEOUT`.
    Timeout(Duration),
    /// The HTTP/1.1 connection could not be set up.
    Handshake(hyper::Error),
    /// `PROXY_UPSTREAM_MAX_CONNECTIONS` were open and none came free within the wait.
    Saturated { limit: usize, waited: Duration },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Resolve(e) => write!(f, "name resolution failed: {e}"),
            ConnectError::NoAddress => f.write_str("the name resolved to no address"),
            ConnectError::Connect(addr, e) => write!(f, "connecting to {addr} failed: {e}"),
            ConnectError::Socket(path, e) => {
                write!(
                    f,
                    "connecting to UNIX socket {} failed: {e}",
                    path.display()
                )?;
                f.write_str(match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        " (no socket there: is the app listening on it, and is the directory \
                         shared with the proxy?)"
                    }
                    std::io::ErrorKind::ConnectionRefused => {
                        " (a socket file, but nothing listening on it: is the app running?)"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        " (the proxy's user may not connect: check the socket's mode and \
                         owner, e.g. APP_SOCKET_MODE)"
                    }
                    _ => "",
                })
            }
            ConnectError::Timeout(timeout) => {
                write!(
                    f,
                    "no connection within {timeout:?} (PROXY_UPSTREAM_CONNECT_TIMEOUT)"
                )
            }
            ConnectError::Handshake(e) => write!(f, "HTTP/1.1 connection set-up failed: {e}"),
            ConnectError::Saturated { limit, waited } => write!(
                f,
                "all {limit} upstream connections (PROXY_UPSTREAM_MAX_CONNECTIONS) busy for {waited:?}"
            ),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Resolve(e) | ConnectError::Connect(_, e) | ConnectError::Socket(_, e) => {
                Some(e)
            }
            ConnectError::Handshake(e) => Some(e),
            ConnectError::NoAddress | ConnectError::Timeout(_) | ConnectError::Saturated { .. } => {
                None
            }
        }
    }
}

impl ConfigError {
    /// A setting's value that is not accepted: the error names the setting, the value and what
    /// to write instead.
    pub fn invalid(setting: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            setting,
            value: value.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A certificate/key pair that cannot be used. Each message names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "certificate file {path} does not exist: create a development pair with `proxy cert`, \
         or set --tls-cert (TLS_CERT_FILE) to your certificate chain"
    )]
    CertMissing { path: PathBuf },
    #[error(
        "key file {path} does not exist: create a development pair with `proxy cert`, \
         or set --tls-key (TLS_KEY_FILE) to the certificate's private key"
    )]
    KeyMissing { path: PathBuf },
    #[error("cannot read {path}: {source}: check the path and that the proxy's user may read it")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not valid PEM ({detail}): the file may be truncated or still being written; \
         write it again"
    )]
    BadPem { path: PathBuf, detail: String },
    #[error(
        "{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----): point --tls-cert at the \
         certificate chain, server certificate first (a key file given as the certificate?)"
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "the first certificate in {path} cannot be parsed ({detail}): replace it with a valid \
         X.509 certificate in PEM"
    )]
    BadCertificate { path: PathBuf, detail: String },
    #[error(
        "{path} holds no private key (PEM `PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`, `RSA PRIVATE KEY` \
         or `EC PRIVATE KEY`): point --tls-key at the key"
    )]
    NoKey { path: PathBuf },
    #[error(
        "{path} is a legacy encrypted PEM key (`Proc-Type: 4,ENCRYPTED`), which the proxy does not \
         read: convert it to encrypted PKCS#8 with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in {path} \
         -out key.pem` and give the password with --tls-key-password-file (or write it unencrypted \
         with `openssl pkey -in {path} -out key.pem`)"
    )]
    LegacyEncryptedKey { path: PathBuf },
    #[error(
        "{path} is an encrypted private key: give its password with --tls-key-password-file \
         (TLS_KEY_PASSWORD_FILE), a file whose first line is the password"
    )]
    KeyNeedsPassword { path: PathBuf },
    #[error("cannot read the key password file {path}: {source}")]
    KeyPasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot decrypt {path} with the password in {password_file} ({detail}): check the \
         password; PBES2 keys (PBKDF2 or scrypt, AES-CBC) are supported"
    )]
    KeyDecrypt {
        path: PathBuf,
        password_file: PathBuf,
        detail: String,
    },
    #[error(
        "the private key in {path} is not usable ({detail}): use an ECDSA P-256/P-384, Ed25519 \
         or RSA (2048 bits or more) key"
    )]
    UnsupportedKey { path: PathBuf, detail: String },
    #[error(
        "the private key in {key} does not match the certificate in {cert}: install the key made \
         with this certificate (the server certificate must come first in a chain), or make a new \
         development pair with `proxy cert --force`"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// Why `proxy cert` (or the proxy's own development certificate) failed.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error(
        "refusing to overwrite {path}: pass --force to replace the pair (browsers trusting the \
         old certificate must then trust the new one)"
    )]
    Exists { path: PathBuf },
    #[error("--name {name:?} is neither a DNS name nor an IP address")]
    InvalidName { name: String },
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the local CA key {path} is not usable ({detail}): move the CA's files away to make a new CA (then trust the new one)")]
    BadCa { path: PathBuf, detail: String },
    #[error("{dir} holds only one of ca.pem and ca-key.pem: restore the other, or move both away to make a new CA")]
    HalfCa { dir: PathBuf },
    #[error("no data directory for the local CA: set PROXY_DATA_DIR (or HOME or XDG_DATA_HOME)")]
    NoDataDir,
}

/// Why a reload was refused (the old configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("certificates: {0}")]
    Tls(Box<dyn std::error::Error + Send + Sync>),
}

/// Why the proxy could not start (all exit with [`EXIT_CONFIG`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("development certificate: {0}")]
    DevCert(#[from] DevCertError),
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl StartError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        EXIT_CONFIG
    }
}

/// The original app's header asking for JSON answers.
static EXPECTED_FORMAT: HeaderName = HeaderName::from_static("x-expected-format");

/// Whether the client asked for JSON (`Accept` or the original app's `x-expected-format` naming
/// `application/json`, in any case): every body the proxy writes itself follows it.
pub fn wants_json(headers: &HeaderMap) -> bool {
    const JSON: &[u8] = b"application/json";
    // One pass comparing names, no lookups: this runs for every request, and two hashed lookups
    // cost more than walking the few headers a request has.
    headers.iter().any(|(name, value)| {
        (name == ACCEPT || name == EXPECTED_FORMAT)
            && value
                .as_bytes()
                .windows(JSON.len())
                .any(|w| w.eq_ignore_ascii_case(JSON))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_detection() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers));
        headers.insert(
            "x-expected-format",
            HeaderValue::from_static("application/json"),
        );
        assert!(wants_json(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, */*"),
        );
        assert!(wants_json(&headers));
    }

    #[test]
    fn statuses_and_bodies() {
        let timeout = ProxyError::Timeout {
            upstream: "http://127.0.0.1:1".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let json = timeout.to_response(true);
        assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
        let text = timeout.to_response(false);
        assert_eq!(text.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        let too_many = ProxyError::TooManyHeaders { count: 3, limit: 2 };
        assert_eq!(
            too_many.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let cases = [
            (Refused::MissingHost, 400, false),
            (Refused::DuplicateHost, 400, false),
            (Refused::InvalidHost, 400, false),
            (Refused::HostMismatch, 400, false),
            (Refused::AsteriskForm, 400, false),
            (Refused::Method, 405, false),
            (Refused::TransferCoding, 501, true),
            (Refused::BodyTooLarge, 413, true),
            (Refused::MalformedBody, 400, true),
        ];
        for (refused, status, closes) in cases {
            let e = ProxyError::Refused(refused);
            assert_eq!(e.status().as_u16(), status, "{refused:?}");
            assert!(e.is_client_error());
            let response = e.to_response(false);
            assert_eq!(response.headers().contains_key(CONNECTION), closes);
        }
    }
}
