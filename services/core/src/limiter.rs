//! Keyed rate limits (GCRA, `governor`) that forget their keys.
//!
//! A keyed limiter keeps a state per key it has seen. Keyed by customer
//! (the sender's pair limit) or by client address (the ingress's
//! authentication failures), that is one entry per customer ever written
//! to and per address that ever failed: memory would grow without end. A
//! [`KeyedLimiter`] drops, at most once per [`SWEEP_EVERY`], every key
//! whose state is back to that of a key never seen (its quota fully
//! replenished), so it holds only the keys that are being limited.

use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{NotUntil, Quota, RateLimiter};

/// How often, at most, forgotten keys are swept out.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Checks between two looks at the clock for a sweep.
const CHECKS_PER_LOOK: u32 = 64;

type Inner<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A keyed rate limit that forgets keys no longer limited.
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    inner: Inner<K, C>,
    checks: AtomicU32,
    last_sweep: Mutex<C::Instant>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter of `quota` per key, on the real clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, DefaultClock::default())
    }

    /// Waits until `key` may go.
    pub async fn until_key_ready(&self, key: &K) {
        self.maybe_sweep();
        self.inner.until_key_ready(key).await;
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    /// A limiter of `quota` per key on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        let now = clock.now();
        Self {
            inner: RateLimiter::dashmap_with_clock(quota, clock),
            checks: AtomicU32::new(0),
            last_sweep: Mutex::new(now),
        }
    }

    /// Whether `key` may go now; if not, how long until it may.
    pub fn check_key(&self, key: &K) -> Result<(), Duration> {
        self.maybe_sweep();
        self.inner
            .check_key(key)
            .map_err(|not_until: NotUntil<C::Instant>| {
                not_until.wait_time_from(self.inner.clock().now())
            })
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    fn maybe_sweep(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % CHECKS_PER_LOOK != 0 {
            return;
        }
        let now = self.inner.clock().now();
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return; // another caller is sweeping
        };
        if Duration::from(now.duration_since(*last)) < SWEEP_EVERY {
            return;
        }
        *last = now;
        drop(last);
        let before = self.inner.len();
        self.inner.retain_recent();
        if self.inner.len() < before / 2 {
            self.inner.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn keys_are_forgotten_once_their_quota_is_back() {
        let clock = FakeRelativeClock::default();
        let limiter =
            KeyedLimiter::with_clock(Quota::per_second(nz(5)).allow_burst(nz(20)), clock.clone());
        // A scan from 10,000 addresses, each failing once.
        for i in 0..10_000u32 {
            assert!(limiter.check_key(&i).is_ok());
        }
        assert!(limiter.len() >= 10_000);
        // One address keeps failing past its burst: it is limited.
        for _ in 0..20 {
            let _ = limiter.check_key(&u32::MAX);
        }
        assert!(limiter.check_key(&u32::MAX).is_err());
        // Long after, the scanners' keys are back to fresh and go at the
        // next sweep; a key still limited would stay.
        clock.advance(Duration::from_secs(10));
        for _ in 0..=CHECKS_PER_LOOK {
            let _ = limiter.check_key(&7);
        }
        assert!(
            limiter.len() < 10,
            "{} keys held after every quota was replenished",
            limiter.len()
        );
    }

    #[test]
    fn limited_keys_stay_limited_across_sweeps() {
        let clock = FakeRelativeClock::default();
        let limiter = KeyedLimiter::with_clock(
            Quota::with_period(Duration::from_secs(6))
                .unwrap()
                .allow_burst(nz(2)),
            clock.clone(),
        );
        assert!(limiter.check_key(&"pair").is_ok());
        assert!(limiter.check_key(&"pair").is_ok());
        assert!(limiter.check_key(&"pair").is_err());
        clock.advance(Duration::from_secs(2));
        for _ in 0..=CHECKS_PER_LOOK {
            let _ = limiter.check_key(&"other");
        }
        let wait = limiter.check_key(&"pair").unwrap_err();
        assert!(
            wait > Duration::from_secs(3),
            "the pair's limit was forgotten: {wait:?}"
        );
    }
}
