//! The in-memory session store: idle expiry, a bounded count, revocation; lost on restart.
//!
//! Time is passed in (`now`) rather than read here, so expiry and eviction are tested without sleeping.
//! When the store is full, a new login first drops expired sessions and then evicts the session idle
//! the longest: logins never fail for lack of room, and the evicted user simply logs in again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::SessionToken;

#[derive(Debug)]
struct Session {
    username: String,
    last_seen: Instant,
}

/// Sessions in this process's memory, shared by all connections.
#[derive(Debug)]
pub struct MemoryStore {
    by_token: Mutex<HashMap<String, Session>>,
    idle_timeout: Duration,
    max_sessions: usize,
}

impl MemoryStore {
    /// An empty store; `max_sessions` is at least 1.
    pub fn new(idle_timeout: Duration, max_sessions: usize) -> Self {
        Self {
            by_token: Mutex::new(HashMap::new()),
            idle_timeout,
            max_sessions: max_sessions.max(1),
        }
    }

    /// Starts a session for `username`, evicting the longest-idle one if the store is full.
    pub fn create(&self, token: &SessionToken, username: &str, now: Instant) {
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
            token.as_str().to_owned(),
            Session {
                username: username.to_owned(),
                last_seen: now,
            },
        );
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

    fn create(store: &MemoryStore, username: &str, now: Instant) -> SessionToken {
        let token = SessionToken::generate().unwrap();
        store.create(&token, username, now);
        token
    }

    #[test]
    fn two_sessions_of_one_user_are_distinct() {
        let store = MemoryStore::new(IDLE, 10);
        let now = Instant::now();
        let a = create(&store, "a@x", now);
        let b = create(&store, "a@x", now);
        assert_ne!(a, b);
        assert_eq!(store.touch(a.as_str(), now).as_deref(), Some("a@x"));
    }

    #[test]
    fn idle_expiry_and_refresh() {
        let store = MemoryStore::new(IDLE, 10);
        let t0 = Instant::now();
        let token = create(&store, "a@x", t0);
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
        let store = MemoryStore::new(IDLE, 10);
        let t0 = Instant::now();
        let live = create(&store, "a@x", t0);
        let stale = create(&store, "b@x", t0);
        assert!(store.revoke(live.as_str(), t0));
        assert!(!store.revoke(live.as_str(), t0));
        assert!(!store.revoke(stale.as_str(), t0 + IDLE));
        assert!(!store.revoke("not-a-token", t0));
    }

    #[test]
    fn full_store_evicts_longest_idle() {
        let store = MemoryStore::new(IDLE, 2);
        let t0 = Instant::now();
        let a = create(&store, "a", t0);
        let b = create(&store, "b", t0 + Duration::from_secs(1));
        // Using `a` makes `b` the longest idle.
        store.touch(a.as_str(), t0 + Duration::from_secs(2));
        let c = create(&store, "c", t0 + Duration::from_secs(3));
        let now = t0 + Duration::from_secs(4);
        assert_eq!(store.len(), 2);
        assert!(store.touch(b.as_str(), now).is_none());
        assert!(store.touch(a.as_str(), now).is_some());
        assert!(store.touch(c.as_str(), now).is_some());
    }

    #[test]
    fn full_store_prefers_dropping_expired() {
        let store = MemoryStore::new(IDLE, 2);
        let t0 = Instant::now();
        let _old = create(&store, "old", t0);
        let fresh = create(&store, "fresh", t0 + IDLE);
        let new = create(&store, "new", t0 + IDLE);
        assert_eq!(store.len(), 2);
        assert!(store.touch(fresh.as_str(), t0 + IDLE).is_some());
        assert!(store.touch(new.as_str(), t0 + IDLE).is_some());
    }
}
