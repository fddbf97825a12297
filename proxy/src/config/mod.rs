//! Validated settings: what the command line says, checked and turned into typed values. Pure
//! functions of the parsed arguments. [`Settings`] is split into what a reload may change
//! ([`ReloadableSettings`]: the upstream and the CORS policy, swapped together) and what needs a
//! restart ([`FixedSettings`]). The upstream's forms are in `upstream`, the other typed values
//! (networks, timeouts, limits, request rules) and how they print in `values`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;

use crate::acme::AcmeSettings;
use crate::cli::{parse_duration, ProxyArgs, DURATION_FORMS};
use crate::client_auth::ClientAuthSettings;
use crate::cors::{CorsArgs, Policy};
use crate::error::ConfigError;

/// hyper refuses an HTTP/1.1 read buffer smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

mod upstream;
mod values;

pub use upstream::Upstream;
pub use values::{format_cidrs, format_duration, Cidr, Limits, RequestRules, Timeouts};

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
            return Err(ConfigError::invalid(
                "TLS_KEY_PASSWORD_FILE",
                &password_file.display().to_string(),
                "it is the password of TLS_KEY_FILE, which is not set: set that too, or remove this",
            ));
        }
        let tls_files = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::invalid(
                    "TLS_KEY_FILE",
                    "",
                    format!(
                        "TLS_CERT_FILE is set ({}): set the key that goes with it too",
                        cert.display()
                    ),
                ))
            }
            (None, Some(key)) => {
                return Err(ConfigError::invalid(
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
                        ConfigError::invalid(
                            "PROXY_REDIRECT_HTTPS_PORT",
                            v,
                            "use the port number (1-65535) clients reach HTTPS on, e.g. 443",
                        )
                    })
            })
            .transpose()?;
        if let (Some(port), None) = (redirect_https_port, redirect_http) {
            // Only the redirect listener uses it: alone it would be a setting that does nothing.
            return Err(ConfigError::invalid(
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
                    return Err(ConfigError::invalid(
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
            _ => {
                return Err(ConfigError::invalid(
                    "LOG_FORMAT",
                    &args.log_format,
                    "use text or json",
                ))
            }
        };
        let hsts = match args.hsts.as_deref() {
            None => None,
            Some(v) => {
                let secs: u64 = v.trim().parse().map_err(|_| {
                    ConfigError::invalid("PROXY_HSTS", v, "use a number of seconds, e.g. 31536000")
                })?;
                let value = format!("max-age={secs}");
                Some(
                    HeaderValue::from_str(&value)
                        .map_err(|e| ConfigError::invalid("PROXY_HSTS", v, e.to_string()))?,
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
                    ConfigError::invalid(
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
            return Err(ConfigError::invalid(
                "PROXY_MAX_HEADER_BYTES",
                &limits.max_header_bytes.to_string(),
                format!("must be at least {MIN_HEADER_BYTES}"),
            ));
        }
        if limits.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::invalid(
                "PROXY_MAX_CONNECTIONS",
                &limits.max_connections.to_string(),
                "too large",
            ));
        }
        if limits.upstream_max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::invalid(
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
        ConfigError::invalid(
            setting,
            value,
            "use IP:PORT, e.g. 0.0.0.0:8443 or [::]:8443",
        )
    })
}

fn positive(setting: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(setting, "0", "must be at least 1"));
    }
    Ok(value)
}

fn duration(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).ok_or_else(|| ConfigError::invalid(setting, value, DURATION_FORMS))
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
}
