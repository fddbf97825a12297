//! Login throttling: failed logins slow down the next try, per (username, client address) and per
//! client address, with a bounded table of counters.
//!
//! Keying the username's counter by (username, address) rather than by username alone is the
//! choice that keeps a guessed-at user able to log in: a guesser at one address locks only its own
//! pair, so the real user, from any address that is not failing, is never made to wait. The
//! per-address counter slows a guesser who rotates usernames from one address; it allows
//! [`ADDRESS_FREE_FACTOR`] times the free failures, since one address (an office NAT) may carry many
//! honest users. IPv6 addresses count by their /64, the block one subscriber usually holds.
//!
//! A failure counts once its password check has failed, not when the attempt starts: counting
//! in-flight attempts would throttle a user's own concurrent logins. Guesses sent all at once can
//! therefore pass the check together, but they queue for the bounded password-check pool, so the
//! first failures land (and lock) within a few checks. Time is passed in, so the rules are tested
//! without waiting. Counters live in this process only: after a restart or
//! on the other backend of a swap a guesser starts afresh, still slowed by the argon2 cost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The per-address counter allows this many times the free failures of a (username, address) pair.
pub const ADDRESS_FREE_FACTOR: u32 = 4;
/// A counter with no failure for this long (or the backoff cap, if longer) is forgotten.
pub const QUIET_RESET: Duration = Duration::from_secs(15 * 60);

/// The throttle's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures of one (username, address) pair before any delay.
    pub free_failures: u32,
    /// The first delay; each further failure doubles it.
    pub backoff_base: Duration,
    /// The longest delay.
    pub backoff_cap: Duration,
    /// Most counters kept; past it the counter whose last failure is oldest is dropped.
    pub max_entries: usize,
}

/// The delay after the `failures`-th failure when `free` are free: none up to `free - 1`, then
/// `base`, doubling per failure, at most `cap`.
pub fn delay_after(failures: u32, free: u32, base: Duration, cap: Duration) -> Option<Duration> {
    let past_free = failures.checked_sub(free.max(1))?;
    let factor = 1u32.checked_shl(past_free).unwrap_or(u32::MAX);
    Some(base.saturating_mul(factor).min(cap))
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Pair(String, IpAddr),
    Address(IpAddr),
}

#[derive(Debug)]
struct Counter {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// An attempt that passed the throttle; report its outcome with [`Throttle::failed`] or
/// [`Throttle::succeeded`].
#[derive(Debug)]
pub struct Attempt {
    pair: Key,
    address: Key,
}

/// The login throttle, shared by all connections.
#[derive(Debug)]
pub struct Throttle {
    settings: ThrottleSettings,
    counters: Mutex<HashMap<Key, Counter>>,
}

impl Throttle {
    /// An empty throttle.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            counters: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a login attempt; `Err(wait)` when the pair or the address must wait that long first.
    pub fn begin(
        &self,
        username: &str,
        address: IpAddr,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let address = counting_address(address);
        let attempt = Attempt {
            pair: Key::Pair(username.to_owned(), address),
            address: Key::Address(address),
        };
        let counters = self.lock();
        let wait = [&attempt.pair, &attempt.address]
            .into_iter()
            .filter_map(|key| counters.get(key)?.locked_until)
            .map(|until| until.saturating_duration_since(now))
            .max()
            .filter(|wait| !wait.is_zero());
        match wait {
            Some(wait) => Err(wait),
            None => Ok(attempt),
        }
    }

    /// The attempt's password was wrong: both counters grow, and may lock.
    pub fn failed(&self, attempt: Attempt, now: Instant) {
        let mut counters = self.lock();
        let free = self.settings.free_failures;
        for (key, free) in [
            (attempt.pair, free),
            (attempt.address, free.saturating_mul(ADDRESS_FREE_FACTOR)),
        ] {
            self.make_room(&mut counters, &key, now);
            let counter = counters.entry(key).or_insert(Counter {
                failures: 0,
                last_failure: now,
                locked_until: None,
            });
            counter.failures = counter.failures.saturating_add(1);
            counter.last_failure = now;
            let delay = delay_after(
                counter.failures,
                free,
                self.settings.backoff_base,
                self.settings.backoff_cap,
            );
            counter.locked_until = delay.map(|delay| now + delay);
        }
    }

    /// The attempt logged in: the pair's failures are forgiven. The address's are not, so a
    /// guesser cannot clear its address by logging in to an account of its own.
    pub fn succeeded(&self, attempt: Attempt) {
        self.lock().remove(&attempt.pair);
    }

    /// Number of counters held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Before adding `key`, keeps the table within its bound: forgotten counters go first, then the
    /// one whose last failure is oldest.
    fn make_room(&self, counters: &mut HashMap<Key, Counter>, key: &Key, now: Instant) {
        if counters.contains_key(key) || counters.len() < self.settings.max_entries.max(2) {
            return;
        }
        let forget_after = QUIET_RESET.max(self.settings.backoff_cap);
        counters.retain(|_, c| now.saturating_duration_since(c.last_failure) < forget_after);
        if counters.len() >= self.settings.max_entries.max(2) {
            let oldest = counters
                .iter()
                .min_by_key(|(_, c)| c.last_failure)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                counters.remove(&oldest);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Counter>> {
        // Every update leaves each counter whole, so a poisoned lock is still safe to use (the
        // session store's policy).
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The address a counter is kept for: IPv4 as is, IPv6 by its /64.
fn counting_address(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            free_failures: 5,
            backoff_base: SECOND,
            backoff_cap: 8 * SECOND,
            max_entries: 100,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// One failed attempt, or the wait that refused it.
    fn fail(
        throttle: &Throttle,
        username: &str,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), Duration> {
        let attempt = throttle.begin(username, address, now)?;
        throttle.failed(attempt, now);
        Ok(())
    }

    #[test]
    fn delay_table() {
        let cases: &[(u32, u32, Option<u64>)] = &[
            (1, 5, None),
            (4, 5, None),
            (5, 5, Some(1)),
            (6, 5, Some(2)),
            (7, 5, Some(4)),
            (8, 5, Some(8)),
            (9, 5, Some(8)),
            (u32::MAX, 5, Some(8)),
            (1, 0, Some(1)),
        ];
        for &(failures, free, want) in cases {
            assert_eq!(
                delay_after(failures, free, SECOND, 8 * SECOND),
                want.map(Duration::from_secs),
                "{failures} failures, {free} free"
            );
        }
    }

    #[test]
    fn a_guesser_gets_five_free_tries_then_doubling_waits() {
        let throttle = Throttle::new(settings());
        let guesser = ip("192.0.2.1");
        let mut now = Instant::now();
        for _ in 0..4 {
            fail(&throttle, "a@x", guesser, now).unwrap();
        }
        // The fifth failure is free too, and sets the first wait.
        fail(&throttle, "a@x", guesser, now).unwrap();
        for want in [1, 2, 4, 8, 8] {
            let wait = fail(&throttle, "a@x", guesser, now).unwrap_err();
            assert_eq!(wait, Duration::from_secs(want));
            // One millisecond early is still too early.
            assert!(throttle
                .begin("a@x", guesser, now + wait - Duration::from_millis(1))
                .is_err());
            now += wait;
            fail(&throttle, "a@x", guesser, now).unwrap();
        }
    }

    #[test]
    fn the_real_user_logs_in_from_an_address_that_is_not_failing() {
        let throttle = Throttle::new(settings());
        let now = Instant::now();
        for _ in 0..6 {
            let _ = fail(&throttle, "a@x", ip("192.0.2.1"), now);
        }
        assert!(fail(&throttle, "a@x", ip("192.0.2.1"), now).is_err());
        let real = throttle.begin("a@x", ip("198.51.100.7"), now).unwrap();
        throttle.succeeded(real);
        // A success forgives its own pair only: the guesser still waits.
        assert!(fail(&throttle, "a@x", ip("192.0.2.1"), now).is_err());
    }

    #[test]
    fn rotating_usernames_from_one_address_is_slowed_by_the_address_counter() {
        let throttle = Throttle::new(settings());
        let now = Instant::now();
        let free = settings().free_failures * ADDRESS_FREE_FACTOR;
        for n in 0..free {
            fail(&throttle, &format!("user{n}"), ip("192.0.2.1"), now).unwrap();
        }
        assert_eq!(
            fail(&throttle, "fresh", ip("192.0.2.1"), now).unwrap_err(),
            SECOND
        );
        assert!(fail(&throttle, "fresh", ip("192.0.2.2"), now).is_ok());
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let throttle = Throttle::new(settings());
        let now = Instant::now();
        for n in 0..6 {
            let _ = fail(&throttle, "a@x", ip(&format!("2001:db8:0:1::{n}")), now);
        }
        assert!(throttle
            .begin("a@x", ip("2001:db8:0:1:ffff::1"), now)
            .is_err());
        assert!(fail(&throttle, "a@x", ip("2001:db8:0:2::1"), now).is_ok());
        assert_eq!(counting_address(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn success_forgives_the_pair_only() {
        let throttle = Throttle::new(settings());
        let now = Instant::now();
        for _ in 0..4 {
            fail(&throttle, "a@x", ip("192.0.2.1"), now).unwrap();
        }
        let attempt = throttle.begin("a@x", ip("192.0.2.1"), now).unwrap();
        throttle.succeeded(attempt);
        // The pair starts over: five more free failures.
        for _ in 0..5 {
            fail(&throttle, "a@x", ip("192.0.2.1"), now).unwrap();
        }
        assert!(fail(&throttle, "a@x", ip("192.0.2.1"), now).is_err());
        // The address kept its nine failures plus the pair's new ones: past its own 20 free it locks.
        for n in 0..11 {
            let _ = fail(&throttle, &format!("other{n}"), ip("192.0.2.1"), now);
        }
        assert!(throttle.begin("fresh", ip("192.0.2.1"), now).is_err());
    }

    #[test]
    fn checking_alone_counts_nothing() {
        let throttle = Throttle::new(settings());
        let now = Instant::now();
        for _ in 0..50 {
            throttle.begin("a@x", ip("192.0.2.1"), now).unwrap();
        }
        assert!(throttle.is_empty());
    }

    #[test]
    fn the_table_is_bounded_dropping_the_oldest() {
        let throttle = Throttle::new(ThrottleSettings {
            max_entries: 10,
            ..settings()
        });
        let t0 = Instant::now();
        for n in 0..6 {
            let _ = fail(
                &throttle,
                "a@x",
                ip("192.0.2.1"),
                t0 + n * Duration::from_millis(1),
            );
        }
        for n in 0..50u8 {
            let _ = fail(
                &throttle,
                "b@x",
                IpAddr::from([198, 51, 100, n]),
                t0 + SECOND,
            );
            assert!(throttle.len() <= 10, "{}", throttle.len());
        }
        // The oldest counters (the first guesser's) were dropped to make room.
        assert!(fail(&throttle, "a@x", ip("192.0.2.1"), t0 + SECOND).is_ok());
    }
}
