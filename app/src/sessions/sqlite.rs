//! The SQLite session store: one table in a file, so sessions survive a restart, and two processes
//! on one host (the blue and green backends on a shared volume) see the same sessions.
//!
//! Time is the wall clock in milliseconds since the Unix epoch, the one clock both processes share.
//! Every statement runs on tokio's blocking pool (SQLite calls block), one at a time per process
//! (the connection sits behind a mutex); across processes, WAL mode lets readers run beside the
//! writer, and the busy timeout makes a writer wait its turn instead of failing at once.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{SessionToken, StoreError};

/// How long a statement waits for another process's write lock before the store counts as down.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS sessions (
        token TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS sessions_by_last_seen ON sessions (last_seen_ms);
";

/// Sessions in a SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    idle_ms: i64,
    max_sessions: i64,
}

impl SqliteStore {
    /// Opens (creating if needed) the file and its table. Blocking: call it off the async threads.
    pub fn open(
        path: &Path,
        idle_timeout: Duration,
        max_sessions: usize,
    ) -> Result<Self, rusqlite::Error> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            idle_ms: i64::try_from(idle_timeout.as_millis()).unwrap_or(i64::MAX),
            max_sessions: i64::try_from(max_sessions).unwrap_or(i64::MAX),
        })
    }

    /// Stores a new session, first dropping expired ones and, when full, the longest idle.
    pub async fn create(&self, token: &SessionToken, username: &str) -> Result<(), StoreError> {
        let (token, username) = (token.as_str().to_owned(), username.to_owned());
        let (idle_ms, max) = (self.idle_ms, self.max_sessions);
        self.run(move |connection| {
            let now = now_ms();
            // IMMEDIATE: take the write lock first, so two processes cannot both see room for one.
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM sessions WHERE last_seen_ms <= ?1",
                params![now.saturating_sub(idle_ms)],
            )?;
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM sessions", [], |row| row.get(0))?;
            if count >= max {
                let evicted = tx.execute(
                    "DELETE FROM sessions WHERE token IN
                     (SELECT token FROM sessions ORDER BY last_seen_ms LIMIT ?1)",
                    params![count - max + 1],
                )?;
                tracing::info!(
                    max_sessions = max,
                    evicted,
                    "session store full, evicted the longest-idle sessions"
                );
            }
            tx.execute(
                "INSERT INTO sessions (token, username, last_seen_ms) VALUES (?1, ?2, ?3)",
                params![token, username, now],
            )?;
            tx.commit()
        })
        .await
    }

    /// The username of a live session, sliding its idle timeout; an expired one is deleted.
    pub async fn touch(&self, token: &SessionToken) -> Result<Option<String>, StoreError> {
        let token = token.as_str().to_owned();
        let idle_ms = self.idle_ms;
        self.run(move |connection| {
            let now = now_ms();
            let username = connection
                .query_row(
                    "UPDATE sessions SET last_seen_ms = ?2
                     WHERE token = ?1 AND last_seen_ms > ?3 RETURNING username",
                    params![token, now, now.saturating_sub(idle_ms)],
                    |row| row.get::<_, String>(0),
                )
                .optional()?;
            if username.is_none() {
                connection.execute("DELETE FROM sessions WHERE token = ?1", params![token])?;
            }
            Ok(username)
        })
        .await
    }

    /// Deletes a session; true if it was live.
    pub async fn revoke(&self, token: &SessionToken) -> Result<bool, StoreError> {
        let token = token.as_str().to_owned();
        let idle_ms = self.idle_ms;
        self.run(move |connection| {
            let last_seen: Option<i64> = connection
                .query_row(
                    "DELETE FROM sessions WHERE token = ?1 RETURNING last_seen_ms",
                    params![token],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(last_seen.is_some_and(|last| last > now_ms().saturating_sub(idle_ms)))
        })
        .await
    }

    /// Runs `work` with the connection on the blocking pool; any SQLite failure is "unavailable".
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        let unavailable = |reason: String| StoreError::Unavailable {
            store: "sqlite",
            reason,
        };
        tokio::task::spawn_blocking(move || work(&mut lock(&connection)))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))
    }
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // The same policy as the memory store: a panic mid-statement leaves SQLite's own transaction
    // state consistent (an open transaction is rolled back when dropped), so the lock stays usable.
    connection.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
