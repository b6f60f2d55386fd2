//! Group commit for the per-message database calls.
//!
//! Every message costs a few small database calls (claim, record, handoff
//! check, limit check), each a round trip and, for writes, a commit. A
//! [`Coalescer`] gathers the calls made while earlier ones are in flight
//! and runs them as one batch call: one round trip and one commit for
//! all. Nothing waits to fill a batch: a call made when a slot is free goes
//! at once, alone, so a quiet system pays no latency for it; under load the
//! batches grow by themselves.
//!
//! A batch that fails (or returns no result for an item) leaves each of its
//! callers to make its own single call, so the caller's error handling sees
//! the real error of its own item and one bad item never fails the others.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::Report;

struct Pending<Req, Resp> {
    req: Req,
    reply: oneshot::Sender<Option<Resp>>,
}

/// Coalesces concurrent calls into batch calls.
pub struct Coalescer<Req, Resp> {
    queue: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Runs batches of at most `max_batch` items with `run`, at most
    /// `in_flight` at once. `run` returns one result per item, in order
    /// (`None`: no result for that item, its caller makes the call alone).
    /// `what` names the batch in logs. Needs a Tokio runtime.
    pub fn new<F, Fut, E>(what: &'static str, max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Option<Resp>>, E>> + Send + 'static,
        E: std::error::Error + 'static,
    {
        let (queue, mut rx) = mpsc::unbounded_channel::<Pending<Req, Resp>>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                // Everything that queued while the slots were busy goes now.
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    batch.retain(|p| !p.reply.is_closed());
                    if batch.is_empty() {
                        return;
                    }
                    let (reqs, replies): (Vec<Req>, Vec<_>) =
                        batch.into_iter().map(|p| (p.req, p.reply)).unzip();
                    let n = reqs.len();
                    match run(reqs).await {
                        Ok(results) if results.len() == n => {
                            for (reply, r) in replies.into_iter().zip(results) {
                                let _ = reply.send(r);
                            }
                        }
                        Ok(results) => tracing::warn!(
                            batch = what,
                            items = n,
                            results = results.len(),
                            "batch call returned the wrong number of results; its items go one by one"
                        ),
                        Err(e) => tracing::warn!(
                            batch = what,
                            items = n,
                            error = %Report(&e),
                            "batch call failed; its items go one by one"
                        ),
                    }
                });
            }
        });
        Self { queue }
    }

    /// The result for `req` from a batch, or `None` when the caller must
    /// make the call alone (the batch failed or had no result for it).
    pub async fn call(&self, req: Req) -> Option<Resp> {
        let (reply, rx) = oneshot::channel();
        self.queue.send(Pending { req, reply }).ok()?;
        rx.await.ok().flatten()
    }
}

/// Results in item order from rows numbered from 1 (as the batch
/// functions' `r_index`); items without a row get `None`.
pub fn by_index<T>(n: usize, rows: Vec<(i32, T)>) -> Vec<Option<T>> {
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (i, value) in rows {
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(value);
        }
    }
    out
}

/// Five-field items as five columns (the array parameters of a batch
/// function).
#[allow(clippy::type_complexity)]
pub fn unzip5<A, B, C, D, E>(
    items: Vec<(A, B, C, D, E)>,
) -> (Vec<A>, Vec<B>, Vec<C>, Vec<D>, Vec<E>) {
    let n = items.len();
    let mut cols = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (a, b, c, d, e) in items {
        cols.0.push(a);
        cols.1.push(b);
        cols.2.push(c);
        cols.3.push(d);
        cols.4.push(e);
    }
    cols
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn calls_made_while_a_batch_runs_share_the_next_one() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let c = Arc::new(Coalescer::new("test", 100, 1, move |reqs: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(reqs.len());
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>(reqs.into_iter().map(|r| Some(r * 2)).collect())
            }
        }));
        let calls: Vec<_> = (0..10u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.call(i).await })
            })
            .collect();
        let mut got = Vec::new();
        for h in calls {
            got.push(h.await.unwrap());
        }
        assert_eq!(got, (0..10).map(|i| Some(i * 2)).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.len() < 10, "no call was coalesced: {sizes:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_or_missing_result_leaves_the_call_to_its_caller() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let c = Coalescer::new("test", 10, 2, move |reqs: Vec<u32>| {
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                if reqs.contains(&13) {
                    return Err(std::io::Error::other("unlucky"));
                }
                Ok(reqs
                    .into_iter()
                    .map(|x| (x % 2 == 0).then_some(x))
                    .collect())
            }
        });
        assert_eq!(c.call(4).await, Some(4));
        assert_eq!(c.call(5).await, None);
        assert_eq!(c.call(13).await, None);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
