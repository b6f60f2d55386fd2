//! Pacing sends to Meta's limits (protocols.md 2.9): per business phone
//! number (80 messages a second by default) and per business number and
//! customer pair (one per 6 seconds sustained, bursts of 45). A number's
//! sends queue in order, asleep, behind one gate per number, so a flooded
//! number costs no CPU and no other number's sends; the pair limit never
//! makes a worker wait: it says how long instead.

use std::num::NonZeroU32;
use std::time::Duration;

use alphadome_core::gate::KeyedGates;
use alphadome_core::limiter::KeyedLimiter;
use governor::Quota;

/// Sends that may wait for one number's rate in one sender before more
/// go back to the stream (about three seconds at Meta's 80/s).
pub const NUMBER_WAITING: usize = 256;

/// Why a send may not go now.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced {
    /// The business number and customer pair's limit: try after this long.
    Pair(Duration),
    /// Too many sends already wait for this number's rate.
    Crowded,
}

/// The send limits of one sender.
pub struct Pacer {
    per_number: KeyedLimiter<String>,
    /// One waiter per number at the rate limiter; the rest queue here.
    number_gates: KeyedGates<String>,
    per_recipient: KeyedLimiter<String>,
}

impl Pacer {
    /// `mps` sends a second per number; bursts of `pair_burst` per pair.
    pub fn new(mps: u32, pair_burst: u32) -> Self {
        let mps = NonZeroU32::new(mps).unwrap_or(NonZeroU32::MIN);
        let pair_burst = NonZeroU32::new(pair_burst).unwrap_or(NonZeroU32::MIN);
        let per_recipient = Quota::with_period(Duration::from_secs(6))
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
            .allow_burst(pair_burst);
        Self {
            per_number: KeyedLimiter::new(Quota::per_second(mps)),
            number_gates: KeyedGates::new(1),
            per_recipient: KeyedLimiter::new(per_recipient),
        }
    }

    /// Takes a sending slot for `pnid` → `recipient`: waits for the number's
    /// rate (short waits), but when the pair's limit says wait, says how
    /// long instead of holding a worker, so one busy conversation never
    /// delays the others.
    ///
    /// With `may_requeue`, a number flooded past its send rate (more than
    /// [`NUMBER_WAITING`] sends already waiting for it) answers
    /// [`Paced::Crowded`] at once: those sends would otherwise fill the
    /// in-hand window and every other number would wait behind them.
    pub async fn pace(&self, pnid: &str, recipient: &str, may_requeue: bool) -> Result<(), Paced> {
        let pair = format!("{pnid}:{recipient}");
        if let Err(wait) = self.per_recipient.check_key(&pair) {
            return Err(Paced::Pair(wait.max(Duration::from_millis(100))));
        }
        let number = pnid.to_owned();
        let _turn = if may_requeue {
            Some(
                self.number_gates
                    .enter_unless_crowded(&number, NUMBER_WAITING)
                    .await
                    .ok_or(Paced::Crowded)?,
            )
        } else {
            self.number_gates.enter(&number).await
        };
        self.per_number.until_key_ready(&number).await;
        Ok(())
    }

    /// Customer pairs whose limit is held now (the rest are forgotten).
    pub fn pairs_held(&self) -> usize {
        self.per_recipient.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pair_limit_says_how_long_and_other_pairs_go() {
        let p = Pacer::new(1000, 2);
        assert_eq!(p.pace("100", "a", true).await, Ok(()));
        assert_eq!(p.pace("100", "a", true).await, Ok(()));
        match p.pace("100", "a", true).await {
            Err(Paced::Pair(wait)) => assert!(wait > Duration::from_secs(4), "{wait:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.pace("100", "b", true).await, Ok(()));
        assert_eq!(p.pairs_held(), 2);
    }
}
