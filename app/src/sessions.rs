//! In-memory login sessions: opaque random tokens, idle expiry, a bounded count, revocation.
//!
//! Time is passed in (`now`) rather than read here, so expiry and eviction are tested without sleeping.
//! When the store is full, a new login first drops expired sessions and then evicts the session idle
//! the longest: logins never fail for lack of room, and the evicted user simply logs in again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// The token as sent to the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug)]
struct Session {
    username: String,
    last_seen: Instant,
}

/// The session store, shared by all connections.
#[derive(Debug)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    idle_timeout: Duration,
    max_sessions: usize,
}

impl Sessions {
    /// An empty store; `max_sessions` is at least 1.
    pub fn new(idle_timeout: Duration, max_sessions: usize) -> Self {
        Self {
            by_token: Mutex::new(HashMap::new()),
            idle_timeout,
            max_sessions: max_sessions.max(1),
        }
    }

    /// Starts a session for `username`, evicting the longest-idle one if the store is full.
    pub fn create(&self, username: &str, now: Instant) -> Result<SessionToken, getrandom::Error> {
        let token = SessionToken::generate()?;
        let mut map = self.lock();
        if map.len() >= self.max_sessions {
            map.retain(|_, s| !self.expired(s, now));
        }
        if map.len() >= self.max_sessions {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
                tracing::info!(
                    max_sessions = self.max_sessions,
                    "session store full, evicted the longest-idle session"
                );
            }
        }
        map.insert(
            token.0.clone(),
            Session {
                username: username.to_owned(),
                last_seen: now,
            },
        );
        Ok(token)
    }

    /// The username of a live session, refreshing its idle clock; expired sessions are removed.
    pub fn touch(&self, token: &str, now: Instant) -> Option<String> {
        let mut map = self.lock();
        let session = map.get_mut(token)?;
        if self.expired(session, now) {
            map.remove(token);
            return None;
        }
        session.last_seen = now;
        Some(session.username.clone())
    }

    /// Ends a session; true if it was live (an expired one counts as not logged in).
    pub fn revoke(&self, token: &str, now: Instant) -> bool {
        self.lock()
            .remove(token)
            .is_some_and(|s| !self.expired(&s, now))
    }

    /// Number of stored sessions (live or not yet swept).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.last_seen) >= self.idle_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is one
        // insert or remove), so a poisoned lock is still safe to use.
        self.by_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn tokens_are_long_random_and_not_the_username() {
        let store = Sessions::new(IDLE, 10);
        let now = Instant::now();
        let a = store.create("a@x", now).unwrap();
        let b = store.create("a@x", now).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), TOKEN_BYTES * 2);
        assert!(!a.as_str().contains("a@x"));
        assert_eq!(store.touch(a.as_str(), now).as_deref(), Some("a@x"));
    }

    #[test]
    fn idle_expiry_and_refresh() {
        let store = Sessions::new(IDLE, 10);
        let t0 = Instant::now();
        let token = store.create("a@x", t0).unwrap();
        // Use at 50 s refreshes the clock, so it is still live at 100 s ...
        assert!(store
            .touch(token.as_str(), t0 + Duration::from_secs(50))
            .is_some());
        assert!(store
            .touch(token.as_str(), t0 + Duration::from_secs(100))
            .is_some());
        // ... but not 60 s after its last use, and it is gone for good afterwards.
        assert!(store
            .touch(token.as_str(), t0 + Duration::from_secs(160))
            .is_none());
        assert!(store.is_empty());
        assert!(store.touch(token.as_str(), t0).is_none());
    }

    #[test]
    fn revoke_reports_whether_it_was_live() {
        let store = Sessions::new(IDLE, 10);
        let t0 = Instant::now();
        let live = store.create("a@x", t0).unwrap();
        let stale = store.create("b@x", t0).unwrap();
        assert!(store.revoke(live.as_str(), t0));
        assert!(!store.revoke(live.as_str(), t0));
        assert!(!store.revoke(stale.as_str(), t0 + IDLE));
        assert!(!store.revoke("not-a-token", t0));
    }

    #[test]
    fn full_store_evicts_longest_idle() {
        let store = Sessions::new(IDLE, 2);
        let t0 = Instant::now();
        let a = store.create("a", t0).unwrap();
        let b = store.create("b", t0 + Duration::from_secs(1)).unwrap();
        // Using `a` makes `b` the longest idle.
        store.touch(a.as_str(), t0 + Duration::from_secs(2));
        let c = store.create("c", t0 + Duration::from_secs(3)).unwrap();
        let now = t0 + Duration::from_secs(4);
        assert_eq!(store.len(), 2);
        assert!(store.touch(b.as_str(), now).is_none());
        assert!(store.touch(a.as_str(), now).is_some());
        assert!(store.touch(c.as_str(), now).is_some());
    }

    #[test]
    fn full_store_prefers_dropping_expired() {
        let store = Sessions::new(IDLE, 2);
        let t0 = Instant::now();
        let _old = store.create("old", t0).unwrap();
        let fresh = store.create("fresh", t0 + IDLE).unwrap();
        let new = store.create("new", t0 + IDLE).unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.touch(fresh.as_str(), t0 + IDLE).is_some());
        assert!(store.touch(new.as_str(), t0 + IDLE).is_some());
    }
}
