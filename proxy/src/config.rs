//! Configuration: the clap arguments (flag > real env var > `.env` file > default) and their
//! validation into [`Settings`]. Everything here is a pure function of argv, the env-file contents
//! and an environment map, so tests never touch the process environment.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

use crate::cors::{self, CorsArgs};

/// Default address of the HTTPS listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Default plain-HTTP upstream (the app on loopback).
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";
/// Default certificate chain file (the original app's layout).
pub const DEFAULT_TLS_CERT: &str = "cert/cert.pem";
/// Default private key file.
pub const DEFAULT_TLS_KEY: &str = "cert/key.pem";
/// Default env file, read from the working directory; a missing default file is fine.
pub const DEFAULT_ENV_FILE: &str = ".env";

/// A client must finish the TLS handshake within this time.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: &str = "10s";
/// A client must send a complete request head within this time (HTTP/1.1; hyper also runs this
/// timer while a kept-alive connection waits for its next request).
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "30s";
/// A client connection with no request in flight is closed after this time.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: &str = "60s";
/// Connecting to the upstream must succeed within this time.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "5s";
/// The upstream must send its response head within this time (else 504).
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: &str = "60s";
/// Idle pooled upstream connections are closed after this time. Kept below the usual backend
/// keep-alive (5 s in uvicorn, gunicorn's default is 2 s for sync workers but those close anyway),
/// so the proxy, not the backend, closes an idle connection.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: &str = "4s";
/// On SIGTERM/SIGINT, in-flight requests get this long to finish (below Docker's 10 s stop grace).
pub const DEFAULT_SHUTDOWN_GRACE: &str = "8s";
/// How often the certificate files are checked for changes.
pub const DEFAULT_CERT_WATCH_INTERVAL: &str = "5s";
/// Maximum concurrent client connections; further clients wait in the kernel's accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Maximum size of a request head in bytes (HTTP/1.1 buffer, HTTP/2 header list).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Maximum number of request header fields.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Maximum idle pooled upstream connections.
pub const DEFAULT_UPSTREAM_MAX_IDLE: usize = 256;

/// hyper refuses an HTTP/1.1 read buffer smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

/// The `proxy` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy",
    version,
    about = "TLS-terminating reverse proxy with a CORS policy engine.",
    args_override_self = true
)]
pub struct Cli {
    /// A helper command; without one, the proxy runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub cors: CorsArgs,
}

/// Helper subcommands beside the proxy itself.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Generate a development certificate and print how to trust it.
    Cert(crate::devcert::CertArgs),
    /// Check that the local listener completes a TLS handshake (for container health checks).
    Healthcheck(crate::healthcheck::HealthcheckArgs),
    /// CORS tools (`proxy cors explain`).
    Cors {
        #[command(subcommand)]
        command: cors::explain::CorsCommand,
    },
}

/// Settings of the proxy itself (the CORS ones live in [`CorsArgs`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// File with KEY=value lines read before starting (real environment variables win).
    /// A missing default `.env` is fine; a missing named file is an error.
    #[arg(long, env = "PROXY_ENV_FILE", value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// Address of the HTTPS listener.
    #[arg(long, env = "PROXY_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Plain-HTTP upstream, `http://host:port`; host names are resolved again for each new connection.
    #[arg(long, env = "PROXY_UPSTREAM", value_name = "URL", default_value = DEFAULT_UPSTREAM)]
    pub upstream: String,
    /// Certificate chain (PEM).
    #[arg(long, env = "TLS_CERT_FILE", value_name = "PATH", default_value = DEFAULT_TLS_CERT)]
    pub tls_cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TLS_KEY_FILE", value_name = "PATH", default_value = DEFAULT_TLS_KEY)]
    pub tls_key: PathBuf,
    /// Log format: text or json.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: String,
    /// Add `Strict-Transport-Security: max-age=SECONDS` to every response.
    #[arg(long, env = "PROXY_HSTS", value_name = "SECONDS")]
    pub hsts: Option<String>,
    /// Also listen on this plain-HTTP address and answer every request with 308 to https.
    #[arg(long, env = "PROXY_REDIRECT_HTTP", value_name = "ADDR")]
    pub redirect_http: Option<String>,
    /// The https port the redirect names (default: the port the proxy listens on). Set it when
    /// HTTPS is published under another port; 443 leaves the port out of the URL.
    #[arg(long, env = "PROXY_REDIRECT_HTTPS_PORT", value_name = "PORT")]
    pub redirect_https_port: Option<String>,
    /// Comma-separated peer networks (CIDR or address) whose X-Forwarded-*/Forwarded are kept.
    #[arg(long, env = "PROXY_TRUSTED_PROXIES", value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// TLS handshake timeout (`500ms`, `10s`, `2m`; a bare number is seconds).
    #[arg(long, env = "PROXY_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_TLS_HANDSHAKE_TIMEOUT)]
    pub tls_handshake_timeout: String,
    /// Time allowed for a client to send a request head.
    #[arg(long, env = "PROXY_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_HEADER_READ_TIMEOUT)]
    pub header_read_timeout: String,
    /// A client connection with no request in flight is closed after this time.
    #[arg(long, env = "PROXY_CLIENT_IDLE_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_CLIENT_IDLE_TIMEOUT)]
    pub client_idle_timeout: String,
    /// Upstream connect timeout.
    #[arg(long, env = "PROXY_UPSTREAM_CONNECT_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_UPSTREAM_CONNECT_TIMEOUT)]
    pub upstream_connect_timeout: String,
    /// Time allowed for the upstream to send its response head once the request, body included,
    /// has been sent (then 504).
    #[arg(long, env = "PROXY_UPSTREAM_RESPONSE_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_UPSTREAM_RESPONSE_TIMEOUT)]
    pub upstream_response_timeout: String,
    /// Idle pooled upstream connections are closed after this (keep below the backend's keep-alive).
    #[arg(long, env = "PROXY_UPSTREAM_IDLE_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_UPSTREAM_IDLE_TIMEOUT)]
    pub upstream_idle_timeout: String,
    /// Maximum idle pooled upstream connections.
    #[arg(long, env = "PROXY_UPSTREAM_MAX_IDLE", value_name = "N", default_value_t = DEFAULT_UPSTREAM_MAX_IDLE)]
    pub upstream_max_idle: usize,
    /// Grace period for in-flight requests on SIGTERM/SIGINT.
    #[arg(long, env = "PROXY_SHUTDOWN_GRACE", value_name = "DURATION", default_value = DEFAULT_SHUTDOWN_GRACE)]
    pub shutdown_grace: String,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "PROXY_CERT_WATCH_INTERVAL", value_name = "DURATION", default_value = DEFAULT_CERT_WATCH_INTERVAL)]
    pub cert_watch_interval: String,
    /// Maximum concurrent client connections.
    #[arg(long, env = "PROXY_MAX_CONNECTIONS", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Maximum request head size in bytes (at least 8192).
    #[arg(long, env = "PROXY_MAX_HEADER_BYTES", value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Maximum number of request header fields.
    #[arg(long, env = "PROXY_MAX_HEADERS", value_name = "N", default_value_t = DEFAULT_MAX_HEADERS)]
    pub max_headers: usize,
}

/// An invalid setting or unreadable configuration source (exit code 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap rejected the command line (also `--help`/`--version`, which are not failures).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("env file {path}: not found (remove --env-file/PROXY_ENV_FILE or create the file)")]
    EnvFileMissing { path: PathBuf },
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
    Cors(#[from] cors::CorsConfigError),
}

fn invalid(setting: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

/// Parses the command line with the env file and environment folded in.
///
/// Precedence is flag > `env` > env file > default: values from the file and the environment are
/// turned into `--long=value` arguments placed *before* the user's arguments, and
/// `args_override_self` lets the last occurrence win. Keys that are not the env name of a
/// top-level setting (the original `.env` has `REDIS_URL`) are ignored. Empty values count as unset.
pub fn parse(argv: &[OsString], env: &HashMap<String, String>) -> Result<Cli, ConfigError> {
    let command = Cli::command();
    // First pass over the user's own arguments only: it finds `--env-file` (and reports usage
    // errors, `--help` and `--version` exactly as the user typed them).
    let first = Cli::from_arg_matches(&command.clone().try_get_matches_from(argv)?)?;
    let (env_path, named) = match first.proxy.env_file.clone() {
        Some(path) => (path, true),
        None => match env.get("PROXY_ENV_FILE").filter(|v| !v.is_empty()) {
            Some(path) => (PathBuf::from(path), true),
            None => (PathBuf::from(DEFAULT_ENV_FILE), false),
        },
    };
    let file_vars = read_env_file(&env_path, named)?;

    let longs: HashMap<String, String> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?;
            let long = arg.get_long()?;
            (long != "env-file").then(|| (env.to_owned(), long.to_owned()))
        })
        .collect();

    let mut full: Vec<OsString> = Vec::with_capacity(argv.len() + longs.len());
    full.push(argv.first().cloned().unwrap_or_else(|| "proxy".into()));
    let from_file = file_vars
        .iter()
        .map(|(key, value)| (key, value))
        .filter(|(key, _)| env.get(key.as_str()).is_none_or(|v| v.is_empty()));
    for (key, value) in from_file.chain(env.iter()) {
        if let (Some(long), false) = (longs.get(key.as_str()), value.is_empty()) {
            full.push(format!("--{long}={value}").into());
        }
    }
    full.extend(argv.iter().skip(1).cloned());
    Ok(Cli::from_arg_matches(&command.try_get_matches_from(full)?)?)
}

fn read_env_file(path: &PathBuf, named: bool) -> Result<Vec<(String, String)>, ConfigError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return if named {
                Err(ConfigError::EnvFileMissing { path: path.clone() })
            } else {
                Ok(Vec::new())
            };
        }
        Err(source) => {
            return Err(ConfigError::EnvFile {
                path: path.clone(),
                source,
            })
        }
    };
    iter.collect::<Result<Vec<_>, _>>()
        .map_err(|source| ConfigError::EnvFile {
            path: path.clone(),
            source,
        })
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The plain-HTTP upstream every request is forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Upstream {
    /// Parses `http://host[:port][/]`; anything else names the problem.
    pub fn parse(value: &str) -> Result<Upstream, ConfigError> {
        const SETTING: &str = "PROXY_UPSTREAM";
        let uri: Uri = value.parse().map_err(|e| {
            invalid(
                SETTING,
                value,
                format!("not a URL ({e}); use http://host:port"),
            )
        })?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(invalid(
                SETTING,
                value,
                "the upstream must be plain http:// (the proxy terminates TLS); use http://host:port",
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
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid(
                SETTING,
                value,
                "a path or query is not supported; requests keep their own path (use http://host:port)",
            ));
        }
        Ok(Upstream {
            scheme: Scheme::HTTP,
            authority,
        })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
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
}

/// The validated settings of the proxy (CORS is validated separately by `cors::Policy`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub log_format: LogFormat,
    /// The precomputed `Strict-Transport-Security` value, when enabled.
    pub hsts: Option<HeaderValue>,
    pub redirect_http: Option<SocketAddr>,
    /// The port the redirect names; `None`: the port the HTTPS listener is bound to.
    pub redirect_https_port: Option<u16>,
    pub trusted_proxies: Vec<Cidr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

impl Settings {
    /// Validates the raw arguments; the error names the setting, the value and what is accepted.
    pub fn from_args(args: &ProxyArgs) -> Result<Settings, ConfigError> {
        let listen = parse_addr("PROXY_LISTEN", &args.listen)?;
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
        Ok(Settings {
            listen,
            upstream: Upstream::parse(&args.upstream)?,
            tls_cert: args.tls_cert.clone(),
            tls_key: args.tls_key.clone(),
            log_format,
            hsts,
            redirect_http,
            redirect_https_port,
            trusted_proxies,
            timeouts,
            limits,
        })
    }
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

/// Parses `250ms`, `10s`, `2m`, `1h` or a bare number of seconds; zero is refused (every phase
/// must be bounded).
pub fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number.parse().ok()?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

fn duration(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).ok_or_else(|| {
        invalid(
            setting,
            value,
            "use a positive duration such as 500ms, 10s, 2m or 1h (a bare number is seconds)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn temp_env_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("proxy-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn precedence_flag_over_env_over_file_over_default() {
        let file = temp_env_file(
            "precedence",
            "PROXY_UPSTREAM=http://file:1\nPROXY_LISTEN=127.0.0.1:1111\nALLOW_ORIGINS=http://a\nREDIS_URL=redis://x\n",
        );
        let file_arg = format!("--env-file={}", file.display());
        // (flags, environment, expected upstream, expected listen address)
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[], &[], "http://file:1", "127.0.0.1:1111"),
            (
                &[],
                &[("PROXY_UPSTREAM", "http://env:2")],
                "http://env:2",
                "127.0.0.1:1111",
            ),
            (
                &["--upstream", "http://flag:3"],
                &[("PROXY_UPSTREAM", "http://env:2")],
                "http://flag:3",
                "127.0.0.1:1111",
            ),
            (
                &["--listen=127.0.0.1:3333"],
                &[("PROXY_LISTEN", "127.0.0.1:2222")],
                "http://file:1",
                "127.0.0.1:3333",
            ),
        ];
        for (flags, vars, upstream, listen) in cases {
            let mut args = vec![file_arg.as_str()];
            args.extend_from_slice(flags);
            let cli = parse(&argv(&args), &env(vars)).unwrap();
            assert_eq!(cli.proxy.upstream, *upstream, "{flags:?} {vars:?}");
            assert_eq!(cli.proxy.listen, *listen, "{flags:?} {vars:?}");
            assert_eq!(cli.cors.allow_origins.as_deref(), Some("http://a"));
        }
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

        let args = parse(&argv(&["--env-file", "/dev/null"]), &env(&[]))
            .unwrap()
            .proxy;
        let settings = Settings::from_args(&args).unwrap();
        assert_eq!(settings.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(settings.upstream.to_string(), DEFAULT_UPSTREAM);
        assert_eq!(settings.timeouts.tls_handshake, Duration::from_secs(10));
        assert_eq!(settings.limits.max_headers, DEFAULT_MAX_HEADERS);
        assert!(settings.hsts.is_none());
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "localhost"], "PROXY_LISTEN"),
            (&["--upstream", "https://app:8000"], "PROXY_UPSTREAM"),
            (&["--upstream", "http://app:8000/api"], "PROXY_UPSTREAM"),
            (&["--upstream", "app:8000"], "PROXY_UPSTREAM"),
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
            (&["--redirect-http", ":80"], "PROXY_REDIRECT_HTTP"),
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
            let err = Settings::from_args(&cli.proxy).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { setting: s, .. } if s == setting),
                "{flags:?}: {err}"
            );
        }
        let err = parse(&argv(&["--max-headers", "many"]), &env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Cli(_)), "{err}");
    }

    #[test]
    fn durations() {
        let cases = [
            ("10", Some(Duration::from_secs(10))),
            ("10s", Some(Duration::from_secs(10))),
            ("250ms", Some(Duration::from_millis(250))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("0", None),
            ("", None),
            ("5d", None),
            ("-1s", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_duration(input), expected, "{input}");
        }
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
