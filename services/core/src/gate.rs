//! One gate per key (a phone number, a tenant): at most `permits` holders
//! at once, the others wait asleep and in order, holding nothing anyone
//! else needs. The sender gates each number's rate limiter with it, the
//! responder each tenant's LLM calls.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

struct Gate {
    turns: Arc<Semaphore>,
    waiting: AtomicUsize,
}

pub struct KeyedGates<K> {
    permits: usize,
    gates: Mutex<HashMap<K, Arc<Gate>>>,
}

impl<K: Eq + Hash + Clone> KeyedGates<K> {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: permits.max(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    fn gate(&self, key: &K) -> Arc<Gate> {
        let fresh = || {
            Arc::new(Gate {
                turns: Arc::new(Semaphore::new(self.permits)),
                waiting: AtomicUsize::new(0),
            })
        };
        self.gates
            .lock()
            .map(|mut g| g.entry(key.clone()).or_insert_with(fresh).clone())
            .unwrap_or_else(|_| fresh())
    }

    /// Waits for a turn at `key`'s gate; the turn ends when the permit drops.
    pub async fn enter(&self, key: &K) -> Option<OwnedSemaphorePermit> {
        let gate = self.gate(key);
        gate.waiting.fetch_add(1, Ordering::SeqCst);
        let turn = gate.turns.clone().acquire_owned().await.ok();
        gate.waiting.fetch_sub(1, Ordering::SeqCst);
        turn
    }

    /// Like [`enter`](Self::enter), but `None` at once when `max_waiting`
    /// callers already wait at `key`'s gate: the caller can put its work
    /// back instead of holding a place others need.
    pub async fn enter_unless_crowded(
        &self,
        key: &K,
        max_waiting: usize,
    ) -> Option<OwnedSemaphorePermit> {
        let gate = self.gate(key);
        if let Ok(turn) = gate.turns.clone().try_acquire_owned() {
            return Some(turn);
        }
        if gate.waiting.fetch_add(1, Ordering::SeqCst) >= max_waiting {
            gate.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let turn = gate.turns.clone().acquire_owned().await.ok();
        gate.waiting.fetch_sub(1, Ordering::SeqCst);
        turn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_crowded_gate_turns_newcomers_away_and_other_keys_are_free() {
        let gates = Arc::new(KeyedGates::<u32>::new(1));
        let held = gates.enter(&1).await;
        assert!(held.is_some());
        // Two may wait at key 1; the third is turned away.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let g = gates.clone();
                tokio::spawn(async move { g.enter_unless_crowded(&1, 2).await.is_some() })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(gates.enter_unless_crowded(&1, 2).await.is_none());
        assert!(
            gates.enter_unless_crowded(&2, 2).await.is_some(),
            "key 2 is not crowded"
        );
        drop(held);
        for w in waiters {
            assert!(w.await.unwrap(), "a waiter gets its turn");
        }
        assert!(gates.enter_unless_crowded(&1, 2).await.is_some());
    }
}
