//! Settings: the pure [`Config`] the server runs with, and the command line (clap, with env vars)
//! that builds it. Parsing takes values, never the process environment, so tests build configs directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use thiserror::Error;

use crate::client::{TrustedProxies, DEFAULT_TRUSTED_PROXIES};
use crate::listen::{parse_socket_mode, ListenAddr, DEFAULT_SOCKET_MODE};
use crate::sessions::StoreSpec;
use crate::throttle::ThrottleSettings;
use crate::users::{Users, UsersFileError};

/// Default listen address: loopback, since only the proxy talks to the app.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// Default idle time after which a session expires, in seconds (30 minutes).
pub const DEFAULT_SESSION_IDLE_TIMEOUT_SECS: u64 = 30 * 60;
/// Default bound on the number of live sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default request body limit in bytes; a login form is well under 1 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
/// Default time allowed to receive request headers, in seconds. On HTTP/1 keep-alive connections it
/// also bounds the idle wait for the next request, so a pooling proxy must idle out sooner.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Default time allowed to receive a request body, in seconds.
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 30;
/// Default grace period for in-flight requests at shutdown, in seconds.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Default failed logins of one (username, address) pair before the throttle adds a delay.
pub const DEFAULT_LOGIN_FREE_FAILURES: u32 = 5;
/// Default first throttle delay, in milliseconds; each further failure doubles it.
pub const DEFAULT_LOGIN_BACKOFF_BASE_MS: u64 = 1000;
/// Default longest throttle delay, in seconds (5 minutes).
pub const DEFAULT_LOGIN_BACKOFF_CAP_SECS: u64 = 5 * 60;
/// Default bound on throttle counters; each is about 100 bytes, so 50 000 hold about 5 MB.
pub const DEFAULT_LOGIN_THROTTLE_MAX_ENTRIES: usize = 50_000;

/// Everything the server needs; built by [`Config::from_args`] or directly in tests.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address `main` binds (the library's `run` takes an already bound listener).
    pub listen: ListenAddr,
    /// Mode of the socket when `listen` is one.
    pub socket_mode: u32,
    /// Who can log in.
    pub users: Users,
    /// A session unused this long is gone.
    pub session_idle_timeout: Duration,
    /// At most this many sessions are kept; a new login evicts the longest-idle one.
    pub max_sessions: usize,
    /// Request bodies past this many bytes get 413.
    pub max_body_bytes: usize,
    /// Time to receive request headers (and, on HTTP/1 keep-alive, to wait for the next request).
    pub header_read_timeout: Duration,
    /// Time to receive a request body; past it the request gets 408.
    pub body_read_timeout: Duration,
    /// After shutdown is requested, in-flight requests get this long before connections are dropped.
    pub shutdown_grace: Duration,
    /// Where sessions are kept.
    pub sessions: StoreSpec,
    /// Peers whose forwarding headers name the client (for the login throttle).
    pub trusted_proxies: TrustedProxies,
    /// The login throttle's thresholds and bound.
    pub throttle: ThrottleSettings,
    /// Password-check threads, each holding one argon2 memory buffer.
    pub hash_workers: usize,
}

/// The default number of password-check threads: one per core.
pub fn default_hash_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ListenAddr::Tcp(DEFAULT_LISTEN.parse().expect("valid default address")),
            socket_mode: 0o660,
            users: Users::demo(),
            session_idle_timeout: Duration::from_secs(DEFAULT_SESSION_IDLE_TIMEOUT_SECS),
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            body_read_timeout: Duration::from_secs(DEFAULT_BODY_READ_TIMEOUT_SECS),
            shutdown_grace: Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
            sessions: StoreSpec::Memory,
            trusted_proxies: TrustedProxies::parse(DEFAULT_TRUSTED_PROXIES)
                .expect("valid default trusted proxies"),
            throttle: ThrottleSettings {
                free_failures: DEFAULT_LOGIN_FREE_FAILURES,
                backoff_base: Duration::from_millis(DEFAULT_LOGIN_BACKOFF_BASE_MS),
                backoff_cap: Duration::from_secs(DEFAULT_LOGIN_BACKOFF_CAP_SECS),
                max_entries: DEFAULT_LOGIN_THROTTLE_MAX_ENTRIES,
            },
            hash_workers: default_hash_workers(),
        }
    }
}

/// A configuration that cannot be used; `main` prints it and exits with 64.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The users file could not be read.
    #[error("--users / APP_USERS_FILE: cannot read {path}: {source}")]
    ReadUsers {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The users file is malformed.
    #[error("--users / APP_USERS_FILE: {path}: {source}")]
    BadUsers {
        path: PathBuf,
        source: UsersFileError,
    },
    /// The session store setting names no usable store.
    #[error("--sessions / APP_SESSIONS (or REDIS_URL when that is unset): {0}")]
    Sessions(String),
    /// The throttle's cap is below its base.
    #[error("--login-backoff-cap-secs / APP_LOGIN_BACKOFF_CAP_SECS: {cap_secs} s is below the base delay of {base_ms} ms; give a cap at least as long")]
    BackoffCap { cap_secs: u64, base_ms: u64 },
}

/// Command line of the `app` binary.
#[derive(Debug, Parser)]
#[command(
    name = "app",
    version,
    about = "Minimal backend with the tutorial's login routes",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Helper commands; without one, the app serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serving settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Helper subcommands beside serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a password from stdin (first line) and print its argon2id PHC hash for a users file.
    HashPassword,
    /// Check that the app answers HTTP on its listen address; exit 0 when healthy, 1 when not.
    /// For container health checks: needs no shell or curl.
    Healthcheck(HealthcheckArgs),
}

/// Settings of `app healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address to check (IP:PORT or unix:/path); defaults to the app's own listen address.
    #[arg(long, env = "APP_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub addr: ListenAddr,
    /// Seconds allowed for connecting and for the answer.
    #[arg(long, default_value_t = DEFAULT_HEALTHCHECK_TIMEOUT_SECS, value_name = "SECS")]
    pub timeout_secs: u64,
}

/// Default time `app healthcheck` waits for connecting and for the answer, in seconds.
pub const DEFAULT_HEALTHCHECK_TIMEOUT_SECS: u64 = 3;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Serving settings, each with a flag and an environment variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT, or unix:/absolute/path.sock for a UNIX socket (a stale
    /// socket file there is replaced; the app removes its own at exit).
    #[arg(long, env = "APP_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: ListenAddr,
    /// Mode (octal) of the socket when listening on unix:/path; 660 lets the owner and group
    /// connect.
    #[arg(long, env = "APP_SOCKET_MODE", default_value = DEFAULT_SOCKET_MODE,
          value_parser = parse_socket_mode, value_name = "OCTAL")]
    pub socket_mode: u32,
    /// Users file (`email:first_name:last_name:argon2id_hash` per line); default: the demo users.
    #[arg(long, env = "APP_USERS_FILE", value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Seconds a session may stay unused before it expires.
    #[arg(long, env = "APP_SESSION_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_SESSION_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "SECS")]
    pub session_idle_timeout_secs: u64,
    /// Most sessions kept at once; a new login past it evicts the longest-idle session.
    #[arg(long, env = "APP_MAX_SESSIONS", default_value_t = DEFAULT_MAX_SESSIONS,
          value_parser = parse_positive_usize, value_name = "N")]
    pub max_sessions: usize,
    /// Largest request body accepted, in bytes (413 past it).
    #[arg(long, env = "APP_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_parser = parse_positive_usize, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Seconds to receive request headers; also the HTTP/1 keep-alive idle timeout.
    #[arg(long, env = "APP_HEADER_READ_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "SECS")]
    pub header_read_timeout_secs: u64,
    /// Seconds to receive a request body (408 past it).
    #[arg(long, env = "APP_BODY_READ_TIMEOUT_SECS", default_value_t = DEFAULT_BODY_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "SECS")]
    pub body_read_timeout_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "APP_SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS,
          value_name = "SECS")]
    pub shutdown_grace_secs: u64,
    /// Session store: `memory` (default; lost on restart), `sqlite:PATH` (a file; survives restarts,
    /// shared by backends on one host), or `redis://HOST[:PORT][/DB]`. Unset: REDIS_URL if set.
    #[arg(long, env = "APP_SESSIONS", value_name = "STORE")]
    pub sessions: Option<String>,
    /// Redis URL as in the original app's `.env`; used only when --sessions / APP_SESSIONS is unset.
    #[arg(long, env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Peers trusted to name the client in X-Forwarded-For / Forwarded (comma-separated
    /// ADDR or ADDR/PREFIX; empty trusts none).
    #[arg(long, env = "APP_TRUSTED_PROXIES", default_value = DEFAULT_TRUSTED_PROXIES,
          value_parser = TrustedProxies::parse, value_name = "NETS")]
    pub trusted_proxies: TrustedProxies,
    /// Failed logins of one (username, client address) before each further try must wait.
    #[arg(long, env = "APP_LOGIN_FREE_FAILURES", default_value_t = DEFAULT_LOGIN_FREE_FAILURES,
          value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub login_free_failures: u32,
    /// First wait after the free failures, in milliseconds; doubles with each further failure.
    #[arg(long, env = "APP_LOGIN_BACKOFF_BASE_MS", default_value_t = DEFAULT_LOGIN_BACKOFF_BASE_MS,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "MS")]
    pub login_backoff_base_ms: u64,
    /// Longest wait between failed logins, in seconds.
    #[arg(long, env = "APP_LOGIN_BACKOFF_CAP_SECS", default_value_t = DEFAULT_LOGIN_BACKOFF_CAP_SECS,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "SECS")]
    pub login_backoff_cap_secs: u64,
    /// Most login-failure counters kept in memory; past it the stalest is dropped.
    #[arg(long, env = "APP_LOGIN_THROTTLE_MAX_ENTRIES", default_value_t = DEFAULT_LOGIN_THROTTLE_MAX_ENTRIES,
          value_parser = parse_positive_usize, value_name = "N")]
    pub login_throttle_max_entries: usize,
    /// Password-check threads (each keeps one argon2 buffer, 19 MiB with default hashes);
    /// default: one per CPU core.
    #[arg(long, env = "APP_HASH_WORKERS", value_parser = parse_positive_usize, value_name = "N")]
    pub hash_workers: Option<usize>,
    /// Log format: text or json (filter with RUST_LOG, default `info`).
    // The values are named in the help line, so `--help` keeps the one-line layout the proxy's has.
    #[arg(long, env = "APP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, hide_possible_values = true)]
    pub log_format: LogFormat,
}

fn parse_positive_usize(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (expected a positive integer)")),
    }
}

impl Config {
    /// Builds the configuration from parsed flags; `users_text` reads a users file (injected so tests
    /// need no files).
    pub fn from_args_with(
        args: &ServeArgs,
        users_text: impl FnOnce(&Path) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        let users = match &args.users {
            None => Users::demo(),
            Some(path) => {
                let text = users_text(path).map_err(|source| ConfigError::ReadUsers {
                    path: path.clone(),
                    source,
                })?;
                Users::parse(&text).map_err(|source| ConfigError::BadUsers {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let sessions = StoreSpec::resolve(args.sessions.as_deref(), args.redis_url.as_deref())
            .map_err(ConfigError::Sessions)?;
        if args.login_backoff_cap_secs.saturating_mul(1000) < args.login_backoff_base_ms {
            return Err(ConfigError::BackoffCap {
                cap_secs: args.login_backoff_cap_secs,
                base_ms: args.login_backoff_base_ms,
            });
        }
        Ok(Self {
            listen: args.listen.clone(),
            socket_mode: args.socket_mode,
            users,
            session_idle_timeout: Duration::from_secs(args.session_idle_timeout_secs),
            max_sessions: args.max_sessions,
            max_body_bytes: args.max_body_bytes,
            header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(args.body_read_timeout_secs),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            sessions,
            trusted_proxies: args.trusted_proxies.clone(),
            throttle: ThrottleSettings {
                free_failures: args.login_free_failures,
                backoff_base: Duration::from_millis(args.login_backoff_base_ms),
                backoff_cap: Duration::from_secs(args.login_backoff_cap_secs),
                max_entries: args.login_throttle_max_entries,
            },
            hash_workers: args.hash_workers.unwrap_or_else(default_hash_workers),
        })
    }

    /// Builds the configuration from parsed flags, reading the users file from disk.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::from_args_with(args, |path| std::fs::read_to_string(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("app").chain(argv.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_config_default() {
        let cli = parse(&[]).unwrap();
        assert!(cli.command.is_none());
        let from_cli = Config::from_args_with(&cli.serve, |_| unreachable!()).unwrap();
        let default = Config::default();
        assert_eq!(from_cli.listen, default.listen);
        assert_eq!(from_cli.socket_mode, default.socket_mode);
        assert_eq!(from_cli.users, default.users);
        assert_eq!(from_cli.session_idle_timeout, Duration::from_secs(1800));
        assert_eq!(from_cli.max_sessions, default.max_sessions);
        assert_eq!(from_cli.max_body_bytes, default.max_body_bytes);
        assert_eq!(from_cli.sessions, StoreSpec::Memory);
        assert_eq!(from_cli.trusted_proxies, default.trusted_proxies);
        assert_eq!(from_cli.throttle, default.throttle);
        assert_eq!(from_cli.hash_workers, default.hash_workers);
    }

    #[test]
    fn store_and_throttle_flags_are_applied() {
        let cli = parse(&[
            "--sessions",
            "sqlite:/data/s.db",
            "--redis-url",
            "redis://ignored",
            "--trusted-proxies",
            "10.0.0.0/8",
            "--login-free-failures",
            "3",
            "--login-backoff-base-ms",
            "250",
            "--login-backoff-cap-secs",
            "60",
            "--login-throttle-max-entries",
            "7",
            "--hash-workers",
            "2",
        ])
        .unwrap();
        let config = Config::from_args_with(&cli.serve, |_| unreachable!()).unwrap();
        assert_eq!(config.sessions, StoreSpec::Sqlite("/data/s.db".into()));
        assert!(config.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(!config
            .trusted_proxies
            .contains("127.0.0.1".parse().unwrap()));
        assert_eq!(
            config.throttle,
            ThrottleSettings {
                free_failures: 3,
                backoff_base: Duration::from_millis(250),
                backoff_cap: Duration::from_secs(60),
                max_entries: 7,
            }
        );
        assert_eq!(config.hash_workers, 2);
        let redis = parse(&["--redis-url", "redis://cache:6379"]).unwrap();
        let config = Config::from_args_with(&redis.serve, |_| unreachable!()).unwrap();
        assert_eq!(
            config.sessions,
            StoreSpec::Redis("redis://cache:6379".into())
        );
    }

    #[test]
    fn bad_store_or_backoff_names_the_setting_value_and_what_is_accepted() {
        let cli = parse(&["--sessions", "postgres://db"]).unwrap();
        let message = Config::from_args_with(&cli.serve, |_| unreachable!())
            .unwrap_err()
            .to_string();
        for needle in ["APP_SESSIONS", "postgres://db", "sqlite:PATH", "memory"] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        let cli = parse(&[
            "--login-backoff-base-ms",
            "5000",
            "--login-backoff-cap-secs",
            "2",
        ])
        .unwrap();
        let message = Config::from_args_with(&cli.serve, |_| unreachable!())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("APP_LOGIN_BACKOFF_CAP_SECS") && message.contains("5000 ms"),
            "{message}"
        );
    }

    #[test]
    fn flags_are_applied() {
        let cli = parse(&[
            "--listen",
            "0.0.0.0:9000",
            "--session-idle-timeout-secs",
            "5",
            "--max-sessions",
            "3",
            "--max-body-bytes",
            "100",
        ])
        .unwrap();
        let config = Config::from_args_with(&cli.serve, |_| unreachable!()).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.session_idle_timeout, Duration::from_secs(5));
        assert_eq!((config.max_sessions, config.max_body_bytes), (3, 100));
        let cli = parse(&["--listen", "unix:/run/app/app.sock", "--socket-mode", "600"]).unwrap();
        let config = Config::from_args_with(&cli.serve, |_| unreachable!()).unwrap();
        assert_eq!(config.listen, "unix:/run/app/app.sock".parse().unwrap());
        assert_eq!(config.socket_mode, 0o600);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for argv in [
            &["--listen", "localhost"][..],
            &["--max-sessions", "0"],
            &["--session-idle-timeout-secs", "0"],
            &["--max-body-bytes", "lots"],
            &["--listen", "unix:app.sock"],
            &["--socket-mode", "999"],
            &["--trusted-proxies", "localhost"],
            &["--login-free-failures", "0"],
            &["--hash-workers", "0"],
        ] {
            let err = parse(argv).unwrap_err();
            assert!(err.to_string().contains(argv[0]), "{argv:?}: {err}");
        }
    }

    #[test]
    fn hash_password_subcommand_takes_no_serve_flags() {
        assert!(matches!(
            parse(&["hash-password"]).unwrap().command,
            Some(Command::HashPassword)
        ));
        assert!(parse(&["--listen", "127.0.0.1:1", "hash-password"]).is_err());
    }

    #[test]
    fn bad_users_file_names_the_setting_path_and_line() {
        let cli = parse(&["--users", "/etc/app/users"]).unwrap();
        let err = Config::from_args_with(&cli.serve, |_| Ok("a@x:A:B\n".to_owned())).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("APP_USERS_FILE"), "{message}");
        assert!(message.contains("/etc/app/users"), "{message}");
        assert!(message.contains("line 1"), "{message}");
        let err = Config::from_args_with(&cli.serve, |_| {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::ReadUsers { .. }), "{err}");
    }
}
