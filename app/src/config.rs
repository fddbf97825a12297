//! Settings: the pure [`Config`] the server runs with, and the command line (clap, with env vars)
//! that builds it. Parsing takes values, never the process environment, so tests build configs directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use thiserror::Error;

use crate::listen::{parse_socket_mode, ListenAddr, DEFAULT_SOCKET_MODE};
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
    /// Log format (filter with RUST_LOG, default `info`).
    #[arg(long, env = "APP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
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
