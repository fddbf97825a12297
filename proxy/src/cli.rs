//! The command line: every clap definition (the proxy's settings, its subcommands' arguments), the
//! merge of flags, the process environment and the `.env` file (flag > environment > file >
//! default), and the one parser for the durations settings take. Pure functions of argv, the
//! env-file contents and an environment map, so tests never touch the process environment.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use tracing::{info, warn};

use crate::client_auth::ClientAuthArgs;
use crate::cors::{self, CorsArgs};
use crate::envfile;
use crate::error::ConfigError;

/// Default address of the HTTPS listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Default plain-HTTP upstream (the app on loopback).
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";
/// Certificate chain used when none is configured and it exists (the original app's layout,
/// relative to the working directory); else the development certificate in the data directory.
pub const DEFAULT_TLS_CERT: &str = "cert/cert.pem";
/// The private key that goes with [`DEFAULT_TLS_CERT`].
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
/// Once a request body has started, its next bytes must come within this time (else 408).
pub const DEFAULT_BODY_READ_TIMEOUT: &str = "30s";
/// Writing a response to a client must make progress within this time (else it is closed).
pub const DEFAULT_SEND_TIMEOUT: &str = "60s";
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
/// Maximum upstream connections open at once (pooled, in use, or still finishing an exchange).
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: usize = 1024;
/// Maximum request body size in bytes (10 MiB): larger bodies are answered with 413.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// The `Upgrade` protocols forwarded (comma-separated; `none` for no upgrades at all).
pub const DEFAULT_UPGRADE_PROTOCOLS: &str = "websocket";

/// The proxy's default listener as seen from inside its own container.
pub const DEFAULT_HEALTHCHECK_ADDR: &str = "127.0.0.1:8443";
/// Time allowed for the whole check: connect, handshake and, with `--http`, the response.
pub const DEFAULT_HEALTHCHECK_TIMEOUT: &str = "3s";
/// Where `proxy cert` writes by default: the proxy's default `--tls-cert`/`--tls-key` directory.
pub const DEFAULT_CERT_OUT_DIR: &str = "cert";

/// The `proxy` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy",
    version,
    about = "TLS-terminating reverse proxy with a CORS policy engine.",
    args_override_self = true,
    propagate_version = true
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
    Cert(CertArgs),
    /// Check that the local listener completes a TLS handshake (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Print the admin listener's answer to `GET PATH` (e.g. /metrics), for images without curl.
    AdminGet(AdminGetArgs),
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
    /// Plain-HTTP upstream: `http://host:port` (host names are resolved again for each new
    /// connection) or `unix:/path/to/app.sock` (HTTP/1.1 over a UNIX socket on this host).
    #[arg(long, env = "PROXY_UPSTREAM", value_name = "URL", default_value = DEFAULT_UPSTREAM)]
    pub upstream: String,
    /// Certificate chain (PEM).
    /// [default: cert/cert.pem if it exists, else a development certificate the proxy keeps in
    /// its data directory]
    #[arg(long, env = "TLS_CERT_FILE", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    /// [default: cert/key.pem with cert/cert.pem, else the development key]
    #[arg(long, env = "TLS_KEY_FILE", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// File whose first line is the password of an encrypted private key (PKCS#8 `ENCRYPTED
    /// PRIVATE KEY`); read again at each reload
    #[arg(long, env = "TLS_KEY_PASSWORD_FILE", value_name = "PATH")]
    pub tls_key_password_file: Option<PathBuf>,
    /// Directory for the proxy's own files: the local CA that issues development certificates,
    /// and the development certificate itself [default: $XDG_DATA_HOME/proxy, else
    /// ~/.local/share/proxy]
    #[arg(long, env = "PROXY_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
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
    /// Serve /healthz, /readyz and /metrics over plain HTTP on this address, e.g. 127.0.0.1:9901
    /// (off when unset; keep it off the public network, and never on the HTTPS address).
    #[arg(long, env = "PROXY_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
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
    /// Longest wait for the next bytes of a request body (from the head or the last bytes); then
    /// 408, the connection closed and the upstream request aborted.
    #[arg(long, env = "PROXY_BODY_READ_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_BODY_READ_TIMEOUT)]
    pub body_read_timeout: String,
    /// Longest wait for a client to take more of a response (a write that makes no progress);
    /// then the connection is closed and its upstream connections released. Per HTTP/2 stream
    /// too: a response waiting that long for the stream's flow-control window is reset.
    #[arg(long, env = "PROXY_SEND_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_SEND_TIMEOUT)]
    pub send_timeout: String,
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
    /// Maximum upstream connections open at once; a request that needs one more waits for a free
    /// one up to the upstream connect timeout, then gets 503.
    #[arg(long, env = "PROXY_UPSTREAM_MAX_CONNECTIONS", value_name = "N", default_value_t = DEFAULT_UPSTREAM_MAX_CONNECTIONS)]
    pub upstream_max_connections: usize,
    /// Maximum concurrent client connections.
    #[arg(long, env = "PROXY_MAX_CONNECTIONS", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Maximum request head size in bytes (at least 8192).
    #[arg(long, env = "PROXY_MAX_HEADER_BYTES", value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Maximum number of request header fields.
    #[arg(long, env = "PROXY_MAX_HEADERS", value_name = "N", default_value_t = DEFAULT_MAX_HEADERS)]
    pub max_headers: usize,
    /// Maximum request body size in bytes; a larger declared body gets 413 at once, a streamed
    /// one is cut (and its upstream request aborted) when it passes the limit [default: 10 MiB].
    #[arg(long, env = "PROXY_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: u64,
    /// Forward header fields whose names contain `_` (dropped by default: CGI-style apps read
    /// `X_Forwarded_For` as `X-Forwarded-For`): true/false [default: false]
    #[arg(long, env = "PROXY_ALLOW_UNDERSCORE_HEADERS", value_name = "BOOL")]
    pub allow_underscore_headers: Option<String>,
    /// `Upgrade` protocols forwarded to the upstream, comma-separated, or `none`; any other
    /// is removed from the request (`h2c` is never accepted).
    #[arg(long, env = "PROXY_UPGRADE_PROTOCOLS", value_name = "LIST", default_value = DEFAULT_UPGRADE_PROTOCOLS)]
    pub upgrade_protocols: String,
    #[command(flatten)]
    pub client_auth: ClientAuthArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

/// Settings for certificates from an ACME CA (RFC 8555), e.g. Let's Encrypt.
// The fields' doc comments are the `--help` text, written for a terminal: the bare URLs are meant
// as they read there, and `<data dir>` is a placeholder, not HTML.
#[allow(rustdoc::bare_urls, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AcmeArgs {
    /// Get the certificate from an ACME CA (Let's Encrypt by default) for these comma-separated
    /// DNS names, which must point at this host; renewed in the background. Excludes --tls-cert.
    #[arg(long = "acme-domain", env = "PROXY_ACME_DOMAINS", value_name = "NAMES")]
    pub acme_domains: Option<String>,
    /// The ACME CA's directory URL [default: Let's Encrypt production,
    /// https://acme-v02.api.letsencrypt.org/directory; staging:
    /// https://acme-staging-v02.api.letsencrypt.org/directory]
    #[arg(long, env = "PROXY_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,
    /// Contact e-mail for the ACME account (expiry and policy notices from the CA).
    #[arg(long, env = "PROXY_ACME_EMAIL", value_name = "ADDRESS")]
    pub acme_email: Option<String>,
    /// Where the ACME account key and certificates are kept (mode 0700, files 0600)
    /// [default: <data dir>/acme]
    #[arg(long, env = "PROXY_ACME_DIR", value_name = "DIR")]
    pub acme_dir: Option<PathBuf>,
    /// How the CA checks the names are ours: tls-alpn-01 (on the HTTPS port) or http-01 (on the
    /// --redirect-http listener, which must then be set and reachable on port 80)
    /// [default: tls-alpn-01]
    #[arg(long, env = "PROXY_ACME_CHALLENGE", value_name = "TYPE")]
    pub acme_challenge: Option<String>,
    /// PEM file of the root(s) to trust for the ACME directory's HTTPS, for a private ACME
    /// server (instead of the system's roots).
    #[arg(long, env = "PROXY_ACME_CA_ROOT", value_name = "PATH")]
    pub acme_ca_root: Option<PathBuf>,
}

/// Arguments of `proxy cert`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertArgs {
    /// Directory to write cert.pem and key.pem into (created when missing).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CERT_OUT_DIR)]
    pub out_dir: PathBuf,
    /// Extra DNS name or IP address for the certificate, besides localhost, 127.0.0.1 and ::1
    /// (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Replace an existing cert.pem/key.pem pair.
    #[arg(long)]
    pub force: bool,
    /// Do nothing (and succeed) when both files already exist; for scripts.
    #[arg(long, conflicts_with = "force")]
    pub if_missing: bool,
    /// Instead of issuing a certificate, install the local CA (made first if missing) where
    /// browsers and tools look: on Linux the system store (update-ca-certificates; needs root,
    /// else it prints the sudo command) and the NSS databases of Chromium and Firefox (certutil,
    /// from libnss3-tools); on macOS and Windows it prints the commands. Says what it changed.
    #[arg(long, conflicts_with_all = ["untrust", "force", "if_missing", "names"])]
    pub trust: bool,
    /// Remove the local CA from where --trust installs it.
    #[arg(long, conflicts_with_all = ["force", "if_missing", "names"])]
    pub untrust: bool,
}

/// Arguments of `proxy healthcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// Address (host:port) of the proxy's TLS listener to check [default: the port of
    /// PROXY_LISTEN on loopback, else 127.0.0.1:8443].
    #[arg(long, env = "PROXY_HEALTHCHECK_ADDR")]
    pub addr: Option<String>,
    /// The proxy's listen address, read from the same PROXY_LISTEN the proxy uses, so that the
    /// check follows a changed port without a second setting.
    #[arg(long, env = "PROXY_LISTEN", hide = true)]
    pub listen: Option<String>,
    /// Time allowed for the whole check, e.g. `3s` or `500ms`.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HEALTHCHECK_TIMEOUT, value_parser = duration_arg)]
    pub timeout: Duration,
    /// Also send `GET /` and require an HTTP response (any status: a 502 while the upstream is down
    /// still shows the proxy is alive).
    #[arg(long)]
    pub http: bool,
    /// Check readiness instead: `GET /readyz` on the admin listener (PROXY_ADMIN_LISTEN) must
    /// answer 200, so a proxy whose upstream is gone, or that is draining, is unhealthy.
    #[arg(long, conflicts_with = "http")]
    pub ready: bool,
    /// The admin listener's address, read from the same PROXY_ADMIN_LISTEN the proxy uses.
    #[arg(long, env = "PROXY_ADMIN_LISTEN", hide = true)]
    pub admin_listen: Option<String>,
}

/// Arguments of `proxy admin-get`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminGetArgs {
    /// The path to get: /metrics, /readyz or /healthz.
    #[arg(value_name = "PATH")]
    pub path: String,
    /// The admin listener's address, read from the same PROXY_ADMIN_LISTEN the proxy uses.
    #[arg(long, env = "PROXY_ADMIN_LISTEN", hide = true)]
    pub admin_listen: Option<String>,
    /// Time allowed for the request, e.g. `3s`.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HEALTHCHECK_TIMEOUT, value_parser = duration_arg)]
    pub timeout: Duration,
}

/// Where a setting's value came from (a setting not listed came from its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Environment,
    EnvFile,
}

impl Source {
    /// How the start-up log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Environment => "environment",
            Source::EnvFile => "env file",
        }
    }
}

/// What reading the configuration found besides the settings: the env file read, where each
/// setting came from, and keys in the env file that look like a misspelt setting.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub env_file: Option<PathBuf>,
    /// Env names of the settings set by something other than their default, with their source.
    pub sources: Vec<(String, Source)>,
    pub warnings: Vec<String>,
}

impl Provenance {
    /// Logs the warnings, the env file read, and which settings came from where.
    pub fn log(&self) {
        for warning in &self.warnings {
            warn!(%warning, "env file");
        }
        let named = |source: Source| {
            let names: Vec<&str> = self
                .sources
                .iter()
                .filter(|(_, s)| *s == source)
                .map(|(name, _)| name.as_str())
                .collect();
            names.join(",")
        };
        let env_file = self
            .env_file
            .as_deref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        info!(
            %env_file,
            from_flags = %named(Source::Flag),
            from_environment = %named(Source::Environment),
            from_env_file = %named(Source::EnvFile),
            "settings read (the others have their defaults)"
        );
    }
}

/// Parses the command line with the env file and environment folded in (see [`parse_traced`]).
pub fn parse(argv: &[OsString], env: &HashMap<String, String>) -> Result<Cli, ConfigError> {
    parse_traced(argv, env).map(|(cli, _)| cli)
}

/// Parses the command line with the env file and environment folded in, and says where each
/// setting came from.
///
/// Precedence is flag > `env` > env file > default: values from the file and the environment are
/// turned into `--long=value` arguments placed *before* the user's arguments, and
/// `args_override_self` lets the last occurrence win. Keys that are not the env name of a
/// top-level setting (the original `.env` has `REDIS_URL`) are ignored, with a warning when they
/// are close to one. Empty values count as unset.
pub fn parse_traced(
    argv: &[OsString],
    env: &HashMap<String, String>,
) -> Result<(Cli, Provenance), ConfigError> {
    let command = Cli::command();
    // First pass over the user's own arguments only: it finds `--env-file` (and reports usage
    // errors, `--help` and `--version` exactly as the user typed them).
    let first_matches = command.clone().try_get_matches_from(argv)?;
    let first = Cli::from_arg_matches(&first_matches)?;
    let (env_path, named) = match first.proxy.env_file.clone() {
        Some(path) => (path, true),
        None => match env.get("PROXY_ENV_FILE").filter(|v| !v.is_empty()) {
            Some(path) => (PathBuf::from(path), true),
            None => (PathBuf::from(DEFAULT_ENV_FILE), false),
        },
    };
    let file = envfile::read(&env_path, named)?;
    let file_vars = file.as_ref().map_or(&[][..], |f| f.vars.as_slice());

    // (env name, long flag, clap id) of every top-level setting.
    let settings: Vec<(String, String, String)> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?;
            let long = arg.get_long()?;
            (long != "env-file")
                .then(|| (env.to_owned(), long.to_owned(), arg.get_id().to_string()))
        })
        .collect();
    let longs: HashMap<&str, &str> = settings
        .iter()
        .map(|(env, long, _)| (env.as_str(), long.as_str()))
        .collect();

    let mut provenance = Provenance {
        env_file: file.as_ref().map(|f| f.path.clone()),
        ..Provenance::default()
    };
    if let Some(file) = &file {
        let known = known_env_names(&command);
        provenance
            .warnings
            .extend(envfile::misspelt_keys(file, &known));
    }
    let mut full: Vec<OsString> = Vec::with_capacity(argv.len() + longs.len());
    full.push(argv.first().cloned().unwrap_or_else(|| "proxy".into()));
    let from_file = file_vars
        .iter()
        .filter(|(key, _)| env.get(key.as_str()).is_none_or(|v| v.is_empty()))
        .map(|(key, value)| (key, value, Source::EnvFile));
    let from_env = env
        .iter()
        .map(|(key, value)| (key, value, Source::Environment));
    let mut sources: HashMap<&str, Source> = HashMap::new();
    for (key, value, source) in from_file.chain(from_env) {
        if let (Some(long), false) = (longs.get(key.as_str()), value.is_empty()) {
            full.push(format!("--{long}={value}").into());
            sources.insert(key.as_str(), source);
        }
    }
    for (env_name, _, id) in &settings {
        if first_matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            sources.insert(env_name.as_str(), Source::Flag);
        }
    }
    provenance.sources = settings
        .iter()
        .filter_map(|(env_name, _, _)| Some((env_name.clone(), *sources.get(env_name.as_str())?)))
        .collect();
    full.extend(argv.iter().skip(1).cloned());
    let cli = Cli::from_arg_matches(&command.try_get_matches_from(full)?)?;
    Ok((cli, provenance))
}

/// Every env name a setting of the proxy or of one of its subcommands reads.
fn known_env_names(command: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| Some(arg.get_env()?.to_str()?.to_owned()))
        .collect();
    for sub in command.get_subcommands() {
        names.extend(known_env_names(sub));
    }
    names.sort_unstable();
    names.dedup();
    names
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

/// What a duration setting accepts, for error messages.
pub const DURATION_FORMS: &str =
    "use a positive duration such as 500ms, 10s, 2m or 1h (a bare number is seconds)";

/// [`parse_duration`] as a clap value parser.
fn duration_arg(value: &str) -> Result<Duration, String> {
    parse_duration(value).ok_or_else(|| format!("{value:?}: {DURATION_FORMS}"))
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
            ("s", None),
            ("-1s", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_duration(input), expected, "{input}");
        }
    }
}
