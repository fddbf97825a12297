//! The Redis session store (the original app's choice): sessions shared by any number of app
//! processes on any hosts.
//!
//! A session is a key `app:session:<token>` holding the username with a `PX` expiry of the idle
//! timeout, so Redis itself expires idle sessions; the sorted set `app:sessions:idle` scores each
//! token by its last use, which is what the bound on sessions evicts by. Each operation is one Lua
//! script, so the key and the index change together, and time is Redis's own clock (`TIME`), the
//! one clock every app process shares. Scripts touch keys they build from the token, which
//! standalone Redis allows (a Redis Cluster would not; this store does not target one).
//!
//! Every operation is bounded by [`OPERATION_TIMEOUT`]: a Redis that is down or stuck makes the
//! request fail fast as "unavailable" (503), never hang. The connection is made on first use and
//! dropped after any failure, so the next request reconnects once Redis is back.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, FromRedisValue, Script};
use tokio::sync::Mutex;

use super::{SessionToken, StoreError};

/// Longest a Redis operation (including connecting) may take before the store counts as down.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

const KEY_PREFIX: &str = "app:session:";
const INDEX_KEY: &str = "app:sessions:idle";

/// Shared by the scripts: Redis's clock in milliseconds.
const NOW_MS: &str =
    "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) ";

/// KEYS: index, session. ARGV: token, username, idle ms, max sessions, key prefix.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
        local count = redis.call('ZCARD', KEYS[1])
        local max = tonumber(ARGV[4])
        if count >= max then
            local oldest = redis.call('ZPOPMIN', KEYS[1], count - max + 1)
            for i = 1, #oldest, 2 do redis.call('DEL', ARGV[5] .. oldest[i]) end
        end
        redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
        redis.call('ZADD', KEYS[1], now, ARGV[1])
        return 1"
    ))
});

/// KEYS: index, session. ARGV: token, idle ms. Returns the username, or nil when not live.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}
        local username = redis.call('GET', KEYS[2])
        if not username then
            redis.call('ZREM', KEYS[1], ARGV[1])
            return false
        end
        redis.call('PEXPIRE', KEYS[2], ARGV[2])
        redis.call('ZADD', KEYS[1], now, ARGV[1])
        return username"
    ))
});

/// KEYS: index, session. ARGV: token. Returns 1 when a live session was deleted.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('ZREM', KEYS[1], ARGV[1])
        return redis.call('DEL', KEYS[2])",
    )
});

/// Sessions in a Redis server.
#[derive(Debug)]
pub struct RedisStore {
    client: Client,
    /// The shared connection, made on first use; `None` after a failure, so the next use reconnects.
    connection: Mutex<Option<MultiplexedConnection>>,
    idle_ms: u64,
    max_sessions: usize,
}

impl RedisStore {
    /// A store for the server at `url`; does not connect yet.
    pub fn new(
        url: &str,
        idle_timeout: Duration,
        max_sessions: usize,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: Client::open(url)?,
            connection: Mutex::new(None),
            idle_ms: u64::try_from(idle_timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            max_sessions,
        })
    }

    /// Stores a new session, evicting the longest idle when full.
    pub async fn create(&self, token: &SessionToken, username: &str) -> Result<(), StoreError> {
        let mut invocation = CREATE.prepare_invoke();
        invocation
            .key(INDEX_KEY)
            .key(key(token))
            .arg(token.as_str())
            .arg(username)
            .arg(self.idle_ms)
            .arg(self.max_sessions)
            .arg(KEY_PREFIX);
        self.invoke::<i64>(invocation).await.map(drop)
    }

    /// The username of a live session, sliding its idle timeout.
    pub async fn touch(&self, token: &SessionToken) -> Result<Option<String>, StoreError> {
        let mut invocation = TOUCH.prepare_invoke();
        invocation
            .key(INDEX_KEY)
            .key(key(token))
            .arg(token.as_str())
            .arg(self.idle_ms);
        self.invoke(invocation).await
    }

    /// Deletes a session; true if it was live (Redis has already dropped an expired one).
    pub async fn revoke(&self, token: &SessionToken) -> Result<bool, StoreError> {
        let mut invocation = REVOKE.prepare_invoke();
        invocation
            .key(INDEX_KEY)
            .key(key(token))
            .arg(token.as_str());
        self.invoke::<i64>(invocation)
            .await
            .map(|deleted| deleted > 0)
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let attempt = async {
            let mut connection = self.connection().await?;
            invocation.invoke_async(&mut connection).await
        };
        let outcome = match tokio::time::timeout(OPERATION_TIMEOUT, attempt).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {OPERATION_TIMEOUT:?}"),
        };
        // Whatever failed, start from a fresh connection next time. A busy slot means another
        // request is connecting right now, which is a fresh connection already.
        if let Ok(mut slot) = self.connection.try_lock() {
            *slot = None;
        }
        Err(StoreError::Unavailable {
            store: "redis",
            reason: outcome,
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

fn key(token: &SessionToken) -> String {
    format!("{KEY_PREFIX}{}", token.as_str())
}
