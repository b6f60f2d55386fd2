//! [`SourceGuard`]: refuses, before any work, client addresses that keep
//! failing authentication (bad or missing signatures, wrong verify tokens).
//! Past [`FAILURES_PER_SEC`] failures a second (bursts of
//! [`FAILURE_BURST`]) an address is refused with 429 for [`BLOCK_FOR`].
//! Correctly signed requests never count, so a flood of unsigned requests
//! cannot starve Meta's deliveries, which come from other addresses.
//! Addresses are forgotten once they stop failing: a scan from many
//! addresses leaves nothing behind.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alphadome_core::limiter::KeyedLimiter;
use axum::http::HeaderMap;
use governor::Quota;

/// Sustained authentication failures allowed per source and second.
pub const FAILURES_PER_SEC: u32 = 5;
/// Burst of authentication failures allowed per source.
pub const FAILURE_BURST: u32 = 20;
/// How long a source that exceeded the failure rate is refused.
pub const BLOCK_FOR: Duration = Duration::from_secs(60);

/// Failure counts and blocks per client address.
pub struct SourceGuard {
    failures: KeyedLimiter<IpAddr>,
    blocked: Mutex<Blocked>,
    trust_forwarded: bool,
}

/// Blocked addresses and when each block ends; ended blocks are swept out
/// as time passes.
#[derive(Default)]
struct Blocked {
    until: HashMap<IpAddr, Instant>,
    last_sweep: Option<Instant>,
}

impl Blocked {
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now < t + Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.until.retain(|_, until| *until > now);
    }
}

impl SourceGuard {
    /// A guard; with `trust_forwarded`, the client is the last
    /// `X-Forwarded-For` hop (behind a reverse proxy).
    pub fn new(trust_forwarded: bool) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(FAILURES_PER_SEC).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(FAILURE_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            failures: KeyedLimiter::new(quota),
            blocked: Mutex::new(Blocked::default()),
            trust_forwarded,
        }
    }

    /// The client address of a request.
    pub fn source(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        if self.trust_forwarded {
            let last = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok());
            if let Some(ip) = last {
                return ip;
            }
        }
        peer.ip()
    }

    /// Whether `ip` is refused now.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut b = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        b.sweep(now);
        b.until.get(&ip).is_some_and(|until| now < *until)
    }

    /// Counts one authentication failure of `ip`; past the allowance, `ip`
    /// is refused for [`BLOCK_FOR`].
    pub fn record_failure(&self, ip: IpAddr) {
        if self.failures.check_key(&ip).is_err() {
            let now = Instant::now();
            let mut b = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            b.sweep(now);
            b.until.insert(ip, now + BLOCK_FOR);
            drop(b);
            tracing::warn!(source = %ip, "source refused for {} s after repeated authentication failures", BLOCK_FOR.as_secs());
        }
    }

    /// Addresses held now: (counting failures, blocked).
    pub fn held(&self) -> (usize, usize) {
        let blocked = self
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .until
            .len();
        (self.failures.len(), blocked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_blocks_and_blocks_end() {
        let g = SourceGuard::new(false);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..FAILURE_BURST {
            g.record_failure(ip);
        }
        assert!(!g.is_blocked(ip), "within the burst");
        g.record_failure(ip);
        assert!(g.is_blocked(ip));
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        assert!(!g.is_blocked(other));
        // After the block, the address is forgotten at the next sweep.
        let later = Instant::now() + BLOCK_FOR + Duration::from_secs(2);
        assert!(!g.is_blocked_at(ip, later));
        assert_eq!(g.held().1, 0, "ended blocks are swept out");
    }

    #[test]
    fn a_scan_from_many_addresses_leaves_nothing_behind() {
        let g = SourceGuard::new(false);
        for i in 0..10_000u32 {
            g.record_failure(IpAddr::from(i.to_be_bytes()));
        }
        assert!(g.held().0 >= 10_000);
        // One failure each is replenished in a fifth of a second; the next
        // sweep (at most a second apart) forgets them.
        std::thread::sleep(Duration::from_millis(1_300));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..=64 {
            g.record_failure(ip);
        }
        assert!(g.held().0 < 100, "{} addresses still held", g.held().0);
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.1, 192.0.2.9".parse().unwrap(),
        );
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        assert_eq!(SourceGuard::new(false).source(peer, &h), peer.ip());
        assert_eq!(
            SourceGuard::new(true).source(peer, &h),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
    }
}
