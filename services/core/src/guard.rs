//! [`SourceGuard`]: refuses, before any work, client addresses that keep
//! failing authentication (bad or missing webhook signatures, wrong verify
//! tokens, wrong admin tokens), and bounds the requests one address has in
//! flight. Past [`FAILURES_PER_SEC`] failures a second (bursts of
//! [`FAILURE_BURST`]) an address is refused with 429 for [`BLOCK_FOR`].
//! Authenticated requests never count, so a flood of unsigned requests
//! cannot starve Meta's deliveries. A request that never finishes (dropped
//! by the request time-out, or cut by its client) before it authenticated
//! counts as a failure: slowness is no way around the count. Addresses are
//! forgotten once they stop failing: a scan from many addresses leaves
//! nothing behind.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::Quota;
use http::HeaderMap;

use crate::limiter::KeyedLimiter;

/// Sustained authentication failures allowed per source and second.
pub const FAILURES_PER_SEC: u32 = 5;
/// Burst of authentication failures allowed per source.
pub const FAILURE_BURST: u32 = 20;
/// How long a source that exceeded the failure rate is refused.
pub const BLOCK_FOR: Duration = Duration::from_secs(60);

/// Failure counts, blocks and requests in flight per client address.
pub struct SourceGuard {
    failures: KeyedLimiter<IpAddr>,
    blocked: Mutex<Blocked>,
    in_flight: Mutex<HashMap<IpAddr, usize>>,
    max_in_flight: usize,
    trust_forwarded: bool,
}

/// Why a request was refused before any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address failed authentication too often: refused for a while.
    Blocked,
    /// The address has as many requests in flight as it may.
    Busy,
}

/// One request in flight from an address. Dropped before
/// [`finish`](Flight::finish), and before its request authenticated, it
/// counts as an authentication failure of the address.
pub struct Flight {
    guard: Arc<SourceGuard>,
    ip: IpAddr,
    authenticated: Arc<AtomicBool>,
    finished: bool,
}

impl Flight {
    /// What the request's handler marks once the request authenticated.
    pub fn authenticated(&self) -> Arc<AtomicBool> {
        self.authenticated.clone()
    }

    /// The request ended with an answer (whatever the handler counted).
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        {
            let mut f = self
                .guard
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = f.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    f.remove(&self.ip);
                }
            }
        }
        if !self.finished && !self.authenticated.load(Ordering::Acquire) {
            tracing::warn!(source = %self.ip, "request dropped before it authenticated (timed out or cut)");
            self.guard.record_failure(self.ip);
        }
    }
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
    /// A guard letting each address have `max_in_flight` requests at once;
    /// with `trust_forwarded`, the client is the last `X-Forwarded-For` hop
    /// (behind a reverse proxy).
    pub fn new(trust_forwarded: bool, max_in_flight: usize) -> Arc<Self> {
        let quota = Quota::per_second(NonZeroU32::new(FAILURES_PER_SEC).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(FAILURE_BURST).unwrap_or(NonZeroU32::MIN));
        Arc::new(Self {
            failures: KeyedLimiter::new(quota),
            blocked: Mutex::new(Blocked::default()),
            in_flight: Mutex::new(HashMap::new()),
            max_in_flight: max_in_flight.max(1),
            trust_forwarded,
        })
    }

    /// Admits a request from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Flight, Refusal> {
        if self.is_blocked(ip) {
            return Err(Refusal::Blocked);
        }
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(ip).or_insert(0);
        if *n >= self.max_in_flight {
            return Err(Refusal::Busy);
        }
        *n += 1;
        drop(f);
        Ok(Flight {
            guard: self.clone(),
            ip,
            authenticated: Arc::new(AtomicBool::new(false)),
            finished: false,
        })
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

    /// Addresses held now: (counting failures, blocked, with requests in
    /// flight).
    pub fn held(&self) -> (usize, usize, usize) {
        let blocked = self
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .until
            .len();
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        (self.failures.len(), blocked, in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_in_flight_are_bounded_and_a_dropped_one_is_a_failure() {
        let g = SourceGuard::new(false, 2);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let a = g.admit(ip).unwrap();
        let b = g.admit(ip).unwrap();
        assert_eq!(g.admit(ip).err(), Some(Refusal::Busy));
        assert!(
            g.admit("203.0.113.10".parse().unwrap()).is_ok(),
            "other addresses go"
        );
        a.finish();
        let c = g.admit(ip).unwrap();
        c.authenticated().store(true, Ordering::Release);
        drop(c); // authenticated: no failure
        for _ in 0..FAILURE_BURST {
            drop(g.admit(ip).unwrap()); // dropped unfinished: a failure each
        }
        drop(b);
        assert_eq!(g.admit(ip).err(), Some(Refusal::Blocked));
        assert_eq!(g.held().2, 0, "nothing in flight is left behind");
    }

    #[test]
    fn a_burst_of_failures_blocks_and_blocks_end() {
        let g = SourceGuard::new(false, 16);
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
        let g = SourceGuard::new(false, 16);
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
        assert_eq!(SourceGuard::new(false, 1).source(peer, &h), peer.ip());
        assert_eq!(
            SourceGuard::new(true, 1).source(peer, &h),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
    }
}
