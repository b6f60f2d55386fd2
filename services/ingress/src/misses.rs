//! [`Misses`]: the ids (phone number ids, business account ids) that named
//! no tenant a moment ago. A body with a bad signature may name thousands
//! of made-up ids; each is looked up in the database at most once per
//! [`MISS_FOR`], so such a body costs a bounded number of lookups. A tenant
//! created meanwhile is found anyway: the tenant cache follows the
//! database within seconds and is asked first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an id that named no tenant is not looked up again.
pub const MISS_FOR: Duration = Duration::from_secs(10);
/// Ids remembered at most; past it, the oldest half goes.
pub const MAX_MISSES: usize = 10_000;

/// Recently looked-up ids that named no tenant.
#[derive(Default)]
pub struct Misses {
    until: Mutex<HashMap<String, Instant>>,
}

impl Misses {
    /// Whether `key` named no tenant within [`MISS_FOR`].
    pub fn remembers(&self, key: &str) -> bool {
        self.remembers_at(key, Instant::now())
    }

    fn remembers_at(&self, key: &str, now: Instant) -> bool {
        let m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).is_some_and(|until| now < *until)
    }

    /// Remembers that `key` named no tenant.
    pub fn remember(&self, key: String) {
        self.remember_at(key, Instant::now());
    }

    fn remember_at(&self, key: String, now: Instant) {
        let mut m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_MISSES {
            m.retain(|_, until| *until > now);
            if m.len() >= MAX_MISSES {
                let mut ages: Vec<Instant> = m.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                m.retain(|_, until| *until > cut);
            }
        }
        m.insert(key, now + MISS_FOR);
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.until.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_remembered_for_a_while_and_bounded() {
        let m = Misses::default();
        let t0 = Instant::now();
        m.remember_at("pnid:1".into(), t0);
        assert!(m.remembers_at("pnid:1", t0 + Duration::from_secs(1)));
        assert!(!m.remembers_at("pnid:1", t0 + MISS_FOR + Duration::from_millis(1)));
        assert!(!m.remembers_at("pnid:2", t0));
        for i in 0..(MAX_MISSES + 100) {
            m.remember_at(format!("pnid:x{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert!(m.len() <= MAX_MISSES, "{} held", m.len());
        assert!(
            m.remembers_at(&format!("pnid:x{}", MAX_MISSES + 99), t0),
            "the newest stay"
        );
    }
}
