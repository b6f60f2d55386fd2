//! One gate per key (a phone number, a tenant): at most `permits` holders
//! at once, the others wait asleep and in order, holding nothing anyone
//! else needs. The sender gates each number's rate limiter with it, the
//! responder each tenant's LLM calls.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct KeyedGates<K> {
    permits: usize,
    gates: Mutex<HashMap<K, Arc<Semaphore>>>,
}

impl<K: Eq + Hash + Clone> KeyedGates<K> {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: permits.max(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a turn at `key`'s gate; the turn ends when the permit drops.
    pub async fn enter(&self, key: &K) -> Option<OwnedSemaphorePermit> {
        let gate = self
            .gates
            .lock()
            .map(|mut g| {
                g.entry(key.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.permits)))
                    .clone()
            })
            .unwrap_or_else(|_| Arc::new(Semaphore::new(self.permits)));
        gate.acquire_owned().await.ok()
    }
}
