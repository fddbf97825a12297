//! Login sessions: opaque random tokens, and the store that maps them to users, chosen by one
//! setting ([`StoreSpec`]): this process's memory, a SQLite file, or a Redis server.
//!
//! Every store keeps the same rules, so the routes never ask which one they have: a session unused
//! for the idle timeout is gone; a touch slides that timeout; logout revokes; and when the store
//! holds `max_sessions`, a new login evicts the longest-idle session (logins never fail for lack of
//! room). A store that cannot answer (Redis down, a SQLite file that cannot be written) reports
//! [`StoreError::Unavailable`], which the routes answer with 503 until it is back.

mod memory;
mod redis;
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use sqlite::SqliteStore;

/// The longest a Redis operation may take before the store counts as down.
pub fn redis_operation_timeout() -> Duration {
    redis::OPERATION_TIMEOUT
}

/// Bytes of OS randomness in a token: 256 bits, well past the 128 the spec asks for.
const TOKEN_BYTES: usize = 32;

/// An opaque session token (hex of OS random bytes); it says nothing about the user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionToken(String);

impl SessionToken {
    /// A fresh token from the OS random number generator.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A token as a client sent it back, if it has the shape of one (so anything else, however
    /// long, never reaches a store's query or key space).
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == TOKEN_BYTES * 2
            && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| Self(text.to_owned()))
    }

    /// The token as sent to the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which store holds the sessions: the value of `--sessions` / `APP_SESSIONS`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// This process's memory: lost on restart, not shared.
    Memory,
    /// A SQLite file: survives restarts, shared by processes on one host (blue and green).
    Sqlite(PathBuf),
    /// A Redis server URL (`redis://[user:password@]host[:port][/db]`): shared by any number of hosts.
    Redis(String),
}

impl fmt::Debug for StoreSpec {
    /// Never prints a Redis password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Redis(url) => write!(f, "{}", redact(url)),
        }
    }
}

/// A Redis URL with any password replaced by `***`, for logs and messages.
fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        let (userinfo, host) = rest.split_once('@')?;
        let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
        Some(format!("{scheme}://{user}:***@{host}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_owned(),
    }
}

/// What `--sessions` accepts, for error messages.
pub const STORE_SPEC_ACCEPTED: &str =
    "expected `memory`, `sqlite:PATH` (a file path) or `redis://HOST[:PORT][/DB]`";

impl StoreSpec {
    /// Parses a `--sessions` / `APP_SESSIONS` value; the error says what is accepted.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(path) = value.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(format!("`{value}` names no file; {STORE_SPEC_ACCEPTED}"));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("redis://") {
            // Parsing the URL is pure (no connection): a malformed one fails here, at start-up.
            return ::redis::Client::open(value)
                .map(|_| Self::Redis(value.to_owned()))
                .map_err(|e| {
                    format!(
                        "`{}` is not a usable Redis URL ({e}); {STORE_SPEC_ACCEPTED}",
                        redact(value)
                    )
                });
        }
        Err(format!(
            "`{}` is not a session store; {STORE_SPEC_ACCEPTED}",
            redact(value)
        ))
    }

    /// The store from the settings: `--sessions` / `APP_SESSIONS` when given; otherwise `REDIS_URL`
    /// when set (the original app's `.env` names its Redis that way, so that file works unchanged);
    /// otherwise memory.
    pub fn resolve(sessions: Option<&str>, redis_url: Option<&str>) -> Result<Self, String> {
        match (sessions, redis_url) {
            (Some(sessions), _) => Self::parse(sessions),
            (None, Some(url)) if !url.is_empty() => Self::parse(url),
            (None, _) => Ok(Self::Memory),
        }
    }
}

/// Why a store could not answer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store is unreachable or failing; the request may succeed later.
    #[error("session store {store} unavailable: {reason}")]
    Unavailable {
        /// Which store (`sqlite`, `redis`).
        store: &'static str,
        /// What failed.
        reason: String,
    },
    /// The OS random number generator failed while making a token.
    #[error("session token: {0}")]
    Rng(getrandom::Error),
}

/// Why a store could not be opened at start-up.
#[derive(Debug, Error)]
#[error("--sessions / APP_SESSIONS: {spec:?}: {reason}")]
pub struct OpenError {
    spec: StoreSpec,
    reason: String,
}

/// The session store the app runs with.
#[derive(Debug)]
pub enum SessionStore {
    /// In memory.
    Memory(MemoryStore),
    /// A SQLite file.
    Sqlite(SqliteStore),
    /// A Redis server.
    Redis(RedisStore),
}

impl SessionStore {
    /// Opens the store `spec` names. SQLite opens (and creates) its file now; Redis connects on first
    /// use, so the app starts while Redis is down and serves logins once it is up.
    pub async fn open(
        spec: &StoreSpec,
        idle_timeout: Duration,
        max_sessions: usize,
    ) -> Result<Arc<Self>, OpenError> {
        let max_sessions = max_sessions.max(1);
        let fail = |reason: String| OpenError {
            spec: spec.clone(),
            reason,
        };
        let store = match spec {
            StoreSpec::Memory => Self::Memory(MemoryStore::new(idle_timeout, max_sessions)),
            StoreSpec::Sqlite(path) => {
                let path = path.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    SqliteStore::open(&path, idle_timeout, max_sessions)
                })
                .await
                .map_err(|e| fail(e.to_string()))?;
                Self::Sqlite(opened.map_err(|e| fail(format!("{e}; give a writable file path")))?)
            }
            StoreSpec::Redis(url) => Self::Redis(
                RedisStore::new(url, idle_timeout, max_sessions)
                    .map_err(|e| fail(e.to_string()))?,
            ),
        };
        Ok(Arc::new(store))
    }

    /// Starts a session for `username`.
    pub async fn create(&self, username: &str) -> Result<SessionToken, StoreError> {
        let token = SessionToken::generate().map_err(StoreError::Rng)?;
        match self {
            Self::Memory(store) => store.create(&token, username, now()),
            Self::Sqlite(store) => store.create(&token, username).await?,
            Self::Redis(store) => store.create(&token, username).await?,
        }
        Ok(token)
    }

    /// The username of a live session, sliding its idle timeout; `None` when unknown or expired.
    pub async fn touch(&self, token: &SessionToken) -> Result<Option<String>, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.touch(token.as_str(), now())),
            Self::Sqlite(store) => store.touch(token).await,
            Self::Redis(store) => store.touch(token).await,
        }
    }

    /// Ends a session; true if it was live.
    pub async fn revoke(&self, token: &SessionToken) -> Result<bool, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.revoke(token.as_str(), now())),
            Self::Sqlite(store) => store.revoke(token).await,
            Self::Redis(store) => store.revoke(token).await,
        }
    }
}

/// The memory store's clock: tokio's, so tests with paused time move it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_hex_and_parse_back() {
        let a = SessionToken::generate().unwrap();
        let b = SessionToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), TOKEN_BYTES * 2);
        assert_eq!(SessionToken::parse(a.as_str()), Some(a.clone()));
        for bad in [
            "",
            "stale",
            &a.as_str().to_uppercase(),
            &a.as_str()[1..],
            &format!("{}0", a.as_str()),
        ] {
            assert_eq!(SessionToken::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn store_spec_parsing() {
        let cases: &[(&str, Result<StoreSpec, &str>)] = &[
            ("memory", Ok(StoreSpec::Memory)),
            (
                "sqlite:/data/sessions.db",
                Ok(StoreSpec::Sqlite("/data/sessions.db".into())),
            ),
            ("sqlite:rel.db", Ok(StoreSpec::Sqlite("rel.db".into()))),
            (
                "redis://127.0.0.1:6379/0",
                Ok(StoreSpec::Redis("redis://127.0.0.1:6379/0".into())),
            ),
            ("sqlite:", Err("names no file")),
            ("Memory", Err("is not a session store")),
            ("postgres://x", Err("is not a session store")),
            ("redis://:secret@[bad", Err("not a usable Redis URL")),
        ];
        for (value, want) in cases {
            match (StoreSpec::parse(value), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{value}"),
                (Err(got), Err(want)) => {
                    assert!(
                        got.contains(want) && got.contains(STORE_SPEC_ACCEPTED),
                        "{value}: {got}"
                    );
                    assert!(!got.contains("secret"), "{got}");
                }
                (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sessions_setting_wins_over_redis_url_which_wins_over_memory() {
        let url = "redis://cache:6379";
        assert_eq!(StoreSpec::resolve(None, None), Ok(StoreSpec::Memory));
        assert_eq!(StoreSpec::resolve(None, Some("")), Ok(StoreSpec::Memory));
        assert_eq!(
            StoreSpec::resolve(None, Some(url)),
            Ok(StoreSpec::Redis(url.into()))
        );
        assert_eq!(
            StoreSpec::resolve(Some("memory"), Some(url)),
            Ok(StoreSpec::Memory)
        );
        assert_eq!(
            StoreSpec::resolve(Some("sqlite:s.db"), Some(url)),
            Ok(StoreSpec::Sqlite("s.db".into()))
        );
    }

    #[test]
    fn debug_hides_redis_passwords() {
        let spec = StoreSpec::parse("redis://user:hunter2@cache:6379/1").unwrap();
        assert_eq!(format!("{spec:?}"), "redis://user:***@cache:6379/1");
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
