//! Validated settings: what the command line says, checked and turned into typed values. Pure
//! functions of the parsed arguments. [`Settings`] is split into what a reload may change
//! ([`ReloadableSettings`]: the upstream and the CORS policy, swapped together) and what needs a
//! restart ([`FixedSettings`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

use crate::acme::AcmeSettings;
use crate::cli::{parse_duration, ProxyArgs, DURATION_FORMS};
use crate::client_auth::ClientAuthSettings;
use crate::cors::{CorsArgs, Policy};
use crate::error::ConfigError;

/// hyper refuses an HTTP/1.1 read buffer smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

fn invalid(setting: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The plain-HTTP upstream every request is forwarded to, and the key the pool keeps its
/// connections under: a connection made to one upstream is never used for another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `http://host[:port]` over TCP; the name is resolved again for each new connection.
    Tcp(Authority),
    /// `unix:/path`: HTTP/1.1 over a UNIX stream socket on this host (a sidecar's app).
    Unix(Arc<Path>),
}

/// The forms `PROXY_UPSTREAM` accepts, for error messages.
const UPSTREAM_FORMS: &str = "use http://host:port or unix:/absolute/path/to/app.sock";

/// The longest socket path the kernel takes (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

impl Upstream {
    /// Parses `http://host[:port][/]` or `unix:/path`; anything else names the problem.
    pub fn parse(value: &str) -> Result<Upstream, ConfigError> {
        const SETTING: &str = "PROXY_UPSTREAM";
        if let Some(path) = value.strip_prefix("unix:") {
            return Self::parse_unix(value, path);
        }
        if !value.contains("://") {
            let suggestion = format!("http://{}", value.trim().trim_start_matches('/'));
            return Err(invalid(
                SETTING,
                value,
                format!("the scheme is missing: use {suggestion}"),
            ));
        }
        let uri: Uri = value
            .parse()
            .map_err(|e| invalid(SETTING, value, format!("not a URL ({e}); {UPSTREAM_FORMS}")))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(invalid(
                SETTING,
                value,
                format!(
                    "the upstream must be plain http:// or a UNIX socket (the proxy terminates \
                     TLS); {UPSTREAM_FORMS}"
                ),
            ));
        }
        let Some(authority) = uri.authority().cloned() else {
            return Err(invalid(SETTING, value, "no host; use http://host:port"));
        };
        if authority.as_str().contains('@') {
            return Err(invalid(
                SETTING,
                value,
                "credentials in the URL are not supported",
            ));
        }
        if authority.port_u16() == Some(0) {
            return Err(invalid(
                SETTING,
                value,
                "port 0 is not a port the app can listen on: use the app's port, e.g. http://127.0.0.1:8000",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid(
                SETTING,
                value,
                "a path or query is not supported; requests keep their own path (use http://host:port)",
            ));
        }
        Ok(Upstream::Tcp(authority))
    }

    /// `path` is what follows `unix:` in `value`: an absolute path (a relative one would depend
    /// on the directory the proxy was started in, which a reload cannot see).
    fn parse_unix(value: &str, path: &str) -> Result<Upstream, ConfigError> {
        const SETTING: &str = "PROXY_UPSTREAM";
        if path.starts_with("//") {
            return Err(invalid(
                SETTING,
                value,
                "write a socket as unix: followed by its absolute path, e.g. unix:/run/app/app.sock",
            ));
        }
        if !path.starts_with('/') {
            return Err(invalid(
                SETTING,
                value,
                "the socket path must be absolute, e.g. unix:/run/app/app.sock",
            ));
        }
        if path.ends_with('/') {
            return Err(invalid(
                SETTING,
                value,
                "that names a directory; name the socket file in it, e.g. unix:/run/app/app.sock",
            ));
        }
        if path.len() > MAX_SOCKET_PATH_BYTES {
            return Err(invalid(
                SETTING,
                value,
                format!(
                    "a socket path is at most {MAX_SOCKET_PATH_BYTES} bytes (the kernel's limit); \
                     use a shorter path"
                ),
            ));
        }
        Ok(Upstream::Unix(Arc::from(Path::new(path))))
    }

    /// Whether `other` is the same upstream. Usually they share one buffer (the pool keeps a
    /// clone of the live upstream), which settles it without comparing the text.
    pub fn same(&self, other: &Upstream) -> bool {
        match (self, other) {
            (Upstream::Tcp(a), Upstream::Tcp(b)) => std::ptr::eq(a.as_str(), b.as_str()) || a == b,
            (Upstream::Unix(a), Upstream::Unix(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Tcp(authority) => write!(f, "http://{authority}"),
            Upstream::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A network (address + prefix length) whose forwarding headers are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1`, `192.168.1.7/32`.
    pub fn parse(value: &str) -> Option<Cidr> {
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 peers compare as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Named timeouts, one per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub header_read: Duration,
    pub client_idle: Duration,
    pub body_read: Duration,
    pub send: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub upstream_idle: Duration,
    pub shutdown_grace: Duration,
    pub cert_watch_interval: Duration,
}

/// Size and count limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub upstream_max_idle: usize,
    pub upstream_max_connections: usize,
}

/// What the proxy accepts from clients and passes on (besides the limits on heads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRules {
    /// Largest request body in bytes (`PROXY_MAX_BODY_BYTES`).
    pub max_body_bytes: u64,
    /// Header fields with `_` in their names are forwarded (`PROXY_ALLOW_UNDERSCORE_HEADERS`).
    pub allow_underscore_headers: bool,
    /// `Upgrade` protocol names forwarded, lower case (`PROXY_UPGRADE_PROTOCOLS`).
    pub upgrade_protocols: Vec<String>,
}

impl RequestRules {
    /// Whether `protocol` (an `Upgrade` token, `name[/version]`) may be forwarded.
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        let name = protocol.split('/').next().unwrap_or("").trim();
        self.upgrade_protocols
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    }

    fn from_args(args: &ProxyArgs) -> Result<RequestRules, ConfigError> {
        const UPGRADES: &str = "PROXY_UPGRADE_PROTOCOLS";
        let allow_underscore_headers = match args.allow_underscore_headers.as_deref() {
            None => false,
            Some(v) => parse_bool(v)
                .ok_or_else(|| invalid("PROXY_ALLOW_UNDERSCORE_HEADERS", v, "use true or false"))?,
        };
        let list = args.upgrade_protocols.trim();
        let mut upgrade_protocols = Vec::new();
        if !list.eq_ignore_ascii_case("none") {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !name.bytes().all(is_token_byte) {
                    return Err(invalid(
                        UPGRADES,
                        name,
                        "use protocol names (RFC 9110 tokens) separated by commas, e.g. websocket",
                    ));
                }
                // h2c is HTTP/2 in clear text: after it the connection would be a raw tunnel past
                // the proxy's per-request rules (RFC 9113 §3.1 removed the upgrade to it).
                if name.eq_ignore_ascii_case("h2c") {
                    return Err(invalid(
                        UPGRADES,
                        name,
                        "h2c is never forwarded: it would turn the connection into a tunnel \
                         that bypasses the proxy's per-request rules",
                    ));
                }
                upgrade_protocols.push(name.to_ascii_lowercase());
            }
        }
        Ok(RequestRules {
            max_body_bytes: args.max_body_bytes,
            allow_underscore_headers,
            upgrade_protocols,
        })
    }
}

/// The rules as the settings a user would type.
impl std::fmt::Display for RequestRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let upgrades = if self.upgrade_protocols.is_empty() {
            "none".to_owned()
        } else {
            self.upgrade_protocols.join(",")
        };
        write!(
            f,
            "PROXY_MAX_BODY_BYTES={} PROXY_ALLOW_UNDERSCORE_HEADERS={} PROXY_UPGRADE_PROTOCOLS={upgrades}",
            self.max_body_bytes, self.allow_underscore_headers
        )
    }
}

/// `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`, in any case.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A byte of an RFC 9110 §5.6.2 token.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A duration as a setting takes it: `500ms`, `10s`, `2m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms % 3_600_000 == 0 && ms > 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The timeouts as the settings a user would type.
impl std::fmt::Display for Timeouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings = [
            ("PROXY_TLS_HANDSHAKE_TIMEOUT", self.tls_handshake),
            ("PROXY_HEADER_READ_TIMEOUT", self.header_read),
            ("PROXY_CLIENT_IDLE_TIMEOUT", self.client_idle),
            ("PROXY_BODY_READ_TIMEOUT", self.body_read),
            ("PROXY_SEND_TIMEOUT", self.send),
            ("PROXY_UPSTREAM_CONNECT_TIMEOUT", self.upstream_connect),
            ("PROXY_UPSTREAM_RESPONSE_TIMEOUT", self.upstream_response),
            ("PROXY_UPSTREAM_IDLE_TIMEOUT", self.upstream_idle),
            ("PROXY_SHUTDOWN_GRACE", self.shutdown_grace),
            ("PROXY_CERT_WATCH_INTERVAL", self.cert_watch_interval),
            ("PROXY_BODY_READ_TIMEOUT", self.body_read),
            ("PROXY_SEND_TIMEOUT", self.send),
        ];
        for (i, (name, value)) in settings.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={}", format_duration(value))?;
        }
        Ok(())
    }
}

/// The limits as the settings a user would type.
impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PROXY_MAX_CONNECTIONS={} PROXY_MAX_HEADER_BYTES={} PROXY_MAX_HEADERS={} PROXY_UPSTREAM_MAX_IDLE={} PROXY_UPSTREAM_MAX_CONNECTIONS={}",
            self.max_connections,
            self.max_header_bytes,
            self.max_headers,
            self.upstream_max_idle,
            self.upstream_max_connections
        )
    }
}

/// The trusted proxy networks as `PROXY_TRUSTED_PROXIES` takes them.
pub fn format_cidrs(cidrs: &[Cidr]) -> String {
    let parts: Vec<String> = cidrs
        .iter()
        .map(|c| format!("{}/{}", c.addr, c.prefix))
        .collect();
    parts.join(",")
}

/// The validated settings of the proxy.
#[derive(Debug)]
pub struct Settings {
    pub fixed: FixedSettings,
    pub reloadable: ReloadableSettings,
}

/// What a reload (SIGHUP) may change; swapped atomically, together.
#[derive(Debug)]
pub struct ReloadableSettings {
    pub upstream: Upstream,
    pub cors: Policy,
}

/// What needs a restart: listeners, certificate paths, timeouts, limits, forwarding trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedSettings {
    pub listen: SocketAddr,
    /// The certificate files, when configured (`None`: see [`crate::build`]).
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// The file holding the key's password, for an encrypted key.
    pub tls_key_password_file: Option<PathBuf>,
    /// Certificates from an ACME CA instead of files, when set.
    pub acme: Option<AcmeSettings>,
    /// Where the local CA and the development certificate are kept, when set.
    pub data_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    /// The precomputed `Strict-Transport-Security` value, when enabled.
    pub hsts: Option<HeaderValue>,
    pub redirect_http: Option<SocketAddr>,
    /// The plain-HTTP admin listener (health, readiness, metrics), when enabled.
    pub admin_listen: Option<SocketAddr>,
    /// The port the redirect names; `None`: the port the HTTPS listener is bound to.
    pub redirect_https_port: Option<u16>,
    pub trusted_proxies: Vec<Cidr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Client-certificate verification (mutual TLS), when `PROXY_CLIENT_CA` is set.
    pub client_auth: Option<ClientAuthSettings>,
    pub rules: RequestRules,
}

impl Settings {
    /// Validates the raw arguments; the error names the setting, the value and what is accepted.
    /// Also returns the CORS policy's warnings (settings that are valid but probably not meant).
    pub fn from_args(
        args: &ProxyArgs,
        cors: &CorsArgs,
    ) -> Result<(Settings, Vec<String>), ConfigError> {
        let fixed = FixedSettings::from_args(args)?;
        let upstream = Upstream::parse(&args.upstream)?;
        let (cors, warnings) = Policy::from_args(cors)?;
        Ok((
            Settings {
                fixed,
                reloadable: ReloadableSettings { upstream, cors },
            },
            warnings,
        ))
    }
}

impl FixedSettings {
    fn from_args(args: &ProxyArgs) -> Result<FixedSettings, ConfigError> {
        let listen = parse_addr("PROXY_LISTEN", &args.listen)?;
        if let (Some(password_file), None) = (&args.tls_key_password_file, &args.tls_key) {
            return Err(invalid(
                "TLS_KEY_PASSWORD_FILE",
                &password_file.display().to_string(),
                "it is the password of TLS_KEY_FILE, which is not set: set that too, or remove this",
            ));
        }
        let tls_files = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(invalid(
                    "TLS_KEY_FILE",
                    "",
                    format!(
                        "TLS_CERT_FILE is set ({}): set the key that goes with it too",
                        cert.display()
                    ),
                ))
            }
            (None, Some(key)) => {
                return Err(invalid(
                    "TLS_CERT_FILE",
                    "",
                    format!(
                        "TLS_KEY_FILE is set ({}): set the certificate that goes with it too",
                        key.display()
                    ),
                ))
            }
        };
        let redirect_http = args
            .redirect_http
            .as_deref()
            .map(|v| parse_addr("PROXY_REDIRECT_HTTP", v))
            .transpose()?;
        let redirect_https_port = args
            .redirect_https_port
            .as_deref()
            .map(|v| {
                v.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|&port| port != 0)
                    .ok_or_else(|| {
                        invalid(
                            "PROXY_REDIRECT_HTTPS_PORT",
                            v,
                            "use the port number (1-65535) clients reach HTTPS on, e.g. 443",
                        )
                    })
            })
            .transpose()?;
        if let (Some(port), None) = (redirect_https_port, redirect_http) {
            // Only the redirect listener uses it: alone it would be a setting that does nothing.
            return Err(invalid(
                "PROXY_REDIRECT_HTTPS_PORT",
                &port.to_string(),
                "it is the port the plain-HTTP redirect names, and PROXY_REDIRECT_HTTP \
                 (--redirect-http) is not set: set that too, or remove this",
            ));
        }
        let acme = AcmeSettings::from_proxy_args(
            &args.acme,
            tls_files.is_some(),
            redirect_http.is_some(),
        )?;
        let admin_listen = args
            .admin_listen
            .as_deref()
            .map(|v| parse_addr("PROXY_ADMIN_LISTEN", v))
            .transpose()?;
        if let Some(admin) = admin_listen {
            for (other, addr) in [
                ("PROXY_LISTEN", Some(listen)),
                ("PROXY_REDIRECT_HTTP", redirect_http),
            ] {
                if addr.is_some_and(|addr| same_socket(admin, addr)) {
                    return Err(invalid(
                        "PROXY_ADMIN_LISTEN",
                        &admin.to_string(),
                        format!(
                            "it is the address {other} uses; give the admin listener a port of                              its own on a private address, e.g. 127.0.0.1:9901"
                        ),
                    ));
                }
            }
        }
        let log_format = match args.log_format.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid("LOG_FORMAT", &args.log_format, "use text or json")),
        };
        let hsts = match args.hsts.as_deref() {
            None => None,
            Some(v) => {
                let secs: u64 = v.trim().parse().map_err(|_| {
                    invalid("PROXY_HSTS", v, "use a number of seconds, e.g. 31536000")
                })?;
                let value = format!("max-age={secs}");
                Some(
                    HeaderValue::from_str(&value)
                        .map_err(|e| invalid("PROXY_HSTS", v, e.to_string()))?,
                )
            }
        };
        let trusted_proxies = args
            .trusted_proxies
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                Cidr::parse(s).ok_or_else(|| {
                    invalid(
                        "PROXY_TRUSTED_PROXIES",
                        s,
                        "use comma-separated addresses or CIDR networks, e.g. 10.0.0.0/8,::1",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeouts = Timeouts {
            tls_handshake: duration("PROXY_TLS_HANDSHAKE_TIMEOUT", &args.tls_handshake_timeout)?,
            header_read: duration("PROXY_HEADER_READ_TIMEOUT", &args.header_read_timeout)?,
            client_idle: duration("PROXY_CLIENT_IDLE_TIMEOUT", &args.client_idle_timeout)?,
            body_read: duration("PROXY_BODY_READ_TIMEOUT", &args.body_read_timeout)?,
            send: duration("PROXY_SEND_TIMEOUT", &args.send_timeout)?,
            upstream_connect: duration(
                "PROXY_UPSTREAM_CONNECT_TIMEOUT",
                &args.upstream_connect_timeout,
            )?,
            upstream_response: duration(
                "PROXY_UPSTREAM_RESPONSE_TIMEOUT",
                &args.upstream_response_timeout,
            )?,
            upstream_idle: duration("PROXY_UPSTREAM_IDLE_TIMEOUT", &args.upstream_idle_timeout)?,
            shutdown_grace: duration("PROXY_SHUTDOWN_GRACE", &args.shutdown_grace)?,
            cert_watch_interval: duration("PROXY_CERT_WATCH_INTERVAL", &args.cert_watch_interval)?,
        };
        let limits = Limits {
            max_connections: positive("PROXY_MAX_CONNECTIONS", args.max_connections)?,
            max_header_bytes: args.max_header_bytes,
            max_headers: positive("PROXY_MAX_HEADERS", args.max_headers)?,
            upstream_max_idle: args.upstream_max_idle,
            upstream_max_connections: positive(
                "PROXY_UPSTREAM_MAX_CONNECTIONS",
                args.upstream_max_connections,
            )?,
        };
        if limits.max_header_bytes < MIN_HEADER_BYTES {
            return Err(invalid(
                "PROXY_MAX_HEADER_BYTES",
                &limits.max_header_bytes.to_string(),
                format!("must be at least {MIN_HEADER_BYTES}"),
            ));
        }
        if limits.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(invalid(
                "PROXY_MAX_CONNECTIONS",
                &limits.max_connections.to_string(),
                "too large",
            ));
        }
        if limits.upstream_max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(invalid(
                "PROXY_UPSTREAM_MAX_CONNECTIONS",
                &limits.upstream_max_connections.to_string(),
                "too large",
            ));
        }
        Ok(FixedSettings {
            listen,
            tls_files,
            tls_key_password_file: args.tls_key_password_file.clone(),
            acme,
            data_dir: args.data_dir.clone(),
            log_format,
            hsts,
            redirect_http,
            admin_listen,
            redirect_https_port,
            trusted_proxies,
            timeouts,
            limits,
            client_auth: ClientAuthSettings::from_args(&args.client_auth)?,
            rules: RequestRules::from_args(args)?,
        })
    }
}

/// Whether two listen addresses would take the same socket: the same port on the same address,
/// or on any address when either is a wildcard (port 0 asks for a free port: never the same).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn parse_addr(setting: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        invalid(
            setting,
            value,
            "use IP:PORT, e.g. 0.0.0.0:8443 or [::]:8443",
        )
    })
}

fn positive(setting: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(setting, "0", "must be at least 1"));
    }
    Ok(value)
}

fn duration(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).ok_or_else(|| invalid(setting, value, DURATION_FORMS))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsString;

    use super::*;
    use crate::cli::{parse, DEFAULT_LISTEN, DEFAULT_MAX_HEADERS, DEFAULT_UPSTREAM};

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("proxy")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn missing_named_env_file_is_an_error_and_defaults_apply() {
        let missing = std::env::temp_dir().join("proxy-config-no-such-dir/.env");
        let err = parse(&argv(&["--env-file", missing.to_str().unwrap()]), &env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::EnvFileMissing { .. }), "{err}");
        let err = parse(
            &argv(&[]),
            &env(&[("PROXY_ENV_FILE", missing.to_str().unwrap())]),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::EnvFileMissing { .. }), "{err}");

        let cli = parse(&argv(&["--env-file", "/dev/null"]), &env(&[])).unwrap();
        let args = cli.proxy;
        let settings = FixedSettings::from_args(&args).unwrap();
        assert_eq!(settings.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(
            Upstream::parse(&args.upstream).unwrap().to_string(),
            DEFAULT_UPSTREAM
        );
        assert_eq!(settings.timeouts.tls_handshake, Duration::from_secs(10));
        assert_eq!(settings.limits.max_headers, DEFAULT_MAX_HEADERS);
        assert!(settings.hsts.is_none());
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "localhost"], "PROXY_LISTEN"),
            (
                &["--tls-key-password-file", "/run/secrets/pw"],
                "TLS_KEY_PASSWORD_FILE",
            ),
            (&["--tls-cert", "c.pem"], "TLS_KEY_FILE"),
            (&["--upstream", "https://app:8000"], "PROXY_UPSTREAM"),
            (&["--upstream", "http://app:8000/api"], "PROXY_UPSTREAM"),
            (&["--upstream", "app:8000"], "PROXY_UPSTREAM"),
            (&["--upstream", "http://127.0.0.1:0"], "PROXY_UPSTREAM"),
            (&["--upstream", "unix:app.sock"], "PROXY_UPSTREAM"),
            (&["--upstream", "unix://run/app.sock"], "PROXY_UPSTREAM"),
            (&["--upstream", "unix:/run/app/"], "PROXY_UPSTREAM"),
            (&["--upstream", "unix:"], "PROXY_UPSTREAM"),
            (
                &["--tls-handshake-timeout", "0"],
                "PROXY_TLS_HANDSHAKE_TIMEOUT",
            ),
            (
                &["--upstream-response-timeout", "ten"],
                "PROXY_UPSTREAM_RESPONSE_TIMEOUT",
            ),
            (&["--hsts=-1"], "PROXY_HSTS"),
            (&["--log-format", "xml"], "LOG_FORMAT"),
            (
                &["--trusted-proxies", "10.0.0.0/33"],
                "PROXY_TRUSTED_PROXIES",
            ),
            (&["--max-header-bytes", "100"], "PROXY_MAX_HEADER_BYTES"),
            (&["--max-connections", "0"], "PROXY_MAX_CONNECTIONS"),
            (
                &["--upstream-max-connections", "0"],
                "PROXY_UPSTREAM_MAX_CONNECTIONS",
            ),
            (
                &["--allow-underscore-headers", "maybe"],
                "PROXY_ALLOW_UNDERSCORE_HEADERS",
            ),
            (
                &["--upgrade-protocols", "websocket,h2c"],
                "PROXY_UPGRADE_PROTOCOLS",
            ),
            (
                &["--upgrade-protocols", "web socket"],
                "PROXY_UPGRADE_PROTOCOLS",
            ),
            (&["--redirect-http", ":80"], "PROXY_REDIRECT_HTTP"),
            (&["--admin-listen", "9901"], "PROXY_ADMIN_LISTEN"),
            // The public port, on the same or on every address.
            (&["--admin-listen", "0.0.0.0:8443"], "PROXY_ADMIN_LISTEN"),
            (
                &[
                    "--listen",
                    "127.0.0.1:9443",
                    "--admin-listen",
                    "127.0.0.1:9443",
                ],
                "PROXY_ADMIN_LISTEN",
            ),
            (
                &[
                    "--redirect-http",
                    "0.0.0.0:80",
                    "--redirect-https-port",
                    "0",
                ],
                "PROXY_REDIRECT_HTTPS_PORT",
            ),
            (
                &[
                    "--redirect-http",
                    "0.0.0.0:80",
                    "--redirect-https-port",
                    "65536",
                ],
                "PROXY_REDIRECT_HTTPS_PORT",
            ),
            (
                &[
                    "--redirect-http",
                    "0.0.0.0:80",
                    "--redirect-https-port",
                    "https",
                ],
                "PROXY_REDIRECT_HTTPS_PORT",
            ),
            // Without the redirect listener it would do nothing.
            (
                &["--redirect-https-port", "443"],
                "PROXY_REDIRECT_HTTPS_PORT",
            ),
        ];
        for (flags, setting) in cases {
            let mut args = vec!["--env-file", "/dev/null"];
            args.extend_from_slice(flags);
            let cli = parse(&argv(&args), &env(&[])).unwrap();
            let err = Settings::from_args(&cli.proxy, &cli.cors).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { setting: s, .. } if s == setting),
                "{flags:?}: {err}"
            );
        }
        let err = parse(&argv(&["--max-headers", "many"]), &env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Cli(_)), "{err}");
    }

    #[test]
    fn request_rules() {
        let rules = |flags: &[&str]| {
            let mut args = vec!["--env-file", "/dev/null"];
            args.extend_from_slice(flags);
            let cli = parse(&argv(&args), &env(&[])).unwrap();
            FixedSettings::from_args(&cli.proxy).unwrap().rules
        };
        let default = rules(&[]);
        assert_eq!(default.max_body_bytes, 10 * 1024 * 1024);
        assert!(!default.allow_underscore_headers);
        assert!(default.allows_upgrade("websocket"));
        assert!(default.allows_upgrade("WebSocket/13"));
        assert!(!default.allows_upgrade("h2c"));
        assert!(!default.allows_upgrade("foo"));
        let set = rules(&[
            "--allow-underscore-headers=true",
            "--upgrade-protocols",
            "websocket, Foo",
            "--max-body-bytes",
            "5",
        ]);
        assert!(set.allow_underscore_headers);
        assert!(set.allows_upgrade("foo"));
        assert_eq!(set.max_body_bytes, 5);
        assert!(!rules(&["--upgrade-protocols", "none"]).allows_upgrade("websocket"));
    }

    #[test]
    fn settings_print_as_they_are_typed() {
        let cases = [
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(7200), "2h"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Some(d), "{text} reads back");
        }
        let cli = parse(&argv(&["--env-file", "/dev/null"]), &env(&[])).unwrap();
        let fixed = FixedSettings::from_args(&cli.proxy).unwrap();
        let timeouts = fixed.timeouts.to_string();
        assert!(
            timeouts.starts_with("PROXY_TLS_HANDSHAKE_TIMEOUT=10s PROXY_HEADER_READ_TIMEOUT=30s"),
            "{timeouts}"
        );
        assert!(fixed.limits.to_string().contains("PROXY_MAX_HEADERS=100"));
        let nets = [
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        assert_eq!(format_cidrs(&nets), "10.0.0.0/8,::1/128");
    }

    #[test]
    fn upstream_errors_show_the_fix() {
        let cases = [
            (
                "localhost:8000",
                "the scheme is missing: use http://localhost:8000",
            ),
            ("127.0.0.1:5000", "use http://127.0.0.1:5000"),
            ("http://127.0.0.1:0", "port 0"),
            ("https://app:8000", "plain http://"),
        ];
        for (value, message) in cases {
            let err = Upstream::parse(value).unwrap_err().to_string();
            assert!(err.contains(message), "{value}: {err}");
        }
        assert_eq!(
            Upstream::parse("http://app:8000/").unwrap().to_string(),
            "http://app:8000"
        );
    }

    #[test]
    fn upstreams_parse_and_compare_by_kind() {
        let socket = Upstream::parse("unix:/run/app/app.sock").unwrap();
        assert_eq!(
            socket,
            Upstream::Unix(Arc::from(Path::new("/run/app/app.sock")))
        );
        assert_eq!(socket.to_string(), "unix:/run/app/app.sock");
        let tcp = Upstream::parse("http://app:8000/").unwrap();
        assert_eq!(tcp.to_string(), "http://app:8000");

        // Host names compare without case; a prefix of the text is another authority.
        let live = Upstream::parse("http://app:8000").unwrap();
        assert!(live.same(&live.clone()));
        assert!(live.same(&Upstream::parse("http://APP:8000").unwrap()));
        assert!(!live.same(&Upstream::parse("http://app:8001").unwrap()));
        assert!(!live.same(&Upstream::parse("http://app").unwrap()));

        assert!(socket.same(&socket.clone()));
        assert!(socket.same(&Upstream::parse("unix:/run/app/app.sock").unwrap()));
        assert!(!socket.same(&Upstream::parse("unix:/run/app/other.sock").unwrap()));
        assert!(!socket.same(&tcp) && !tcp.same(&socket));
        // A host named like the socket is still another upstream.
        let lookalike = Upstream::parse("http://unix:80").unwrap();
        assert!(!lookalike.same(&Upstream::parse("unix:/80").unwrap()));

        let long = format!("unix:/{}", "a".repeat(MAX_SOCKET_PATH_BYTES));
        let err = Upstream::parse(&long).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        let err = Upstream::parse("ftp://app").unwrap_err();
        assert!(err.to_string().contains("unix:/"), "{err}");
    }

    #[test]
    fn cidr_contains() {
        let cases = [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.1.2.3", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("::1", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "10.0.0.1", false),
        ];
        for (net, ip, expected) in cases {
            let net = Cidr::parse(net).unwrap();
            assert_eq!(net.contains(ip.parse().unwrap()), expected, "{net:?} {ip}");
        }
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("example.com").is_none());
    }
}
