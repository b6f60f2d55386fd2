//! The consumer side: pulling from a durable consumer with a bounded
//! number of messages in hand, progress acks for long work, handing back
//! what was pulled but not started on shutdown, and [`settle`], where every
//! consumed message ends in exactly one of ack, nak-with-delay, or
//! dead-letter + term.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Bus, BusError, StreamKind};
use crate::events::{now_ms, v1::DeadLetter};
use crate::telemetry;
use crate::Report;

/// Tuning of one consumer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// Unacknowledged messages in flight across all instances.
    pub max_ack_pending: i64,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Messages one instance handles concurrently.
    pub concurrency: usize,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(15),
            max_ack_pending: 2048,
            max_deliver: 20,
            concurrency: 64,
        }
    }
}

/// How handling one message ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done (or nothing to do): acknowledge.
    Ack,
    /// Transient failure: redeliver after the delay (dead-lettered once
    /// `max_deliver` deliveries are used up).
    Retry { delay: Duration, reason: String },
    /// Can never succeed: dead-letter with the reason, then terminate.
    Poison { reason: String },
    /// Not yet, by design (a debounce): redeliver after the delay, without
    /// holding a worker meanwhile.
    Later { delay: Duration },
}

/// Identity of a message being handled, for logs and dead letters.
#[derive(Debug, Clone, Default)]
pub struct MessageMeta {
    pub subject: String,
    pub delivered: i64,
    pub headers: Option<HeaderMap>,
}

/// Pulls from the durable consumer `durable` on `kind`'s stream (created
/// if missing) and runs `handle` on each message, up to
/// `settings.concurrency` at a time, until `shutdown` fires; in-flight
/// messages are finished before it returns. Each message ends in exactly
/// one of ack, nak-with-delay, or dead-letter + term, decided here.
pub async fn run_consumer<F, Fut>(
    bus: Bus,
    kind: StreamKind,
    durable: &str,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
    handle: F,
) -> Result<(), BusError>
where
    F: Fn(Bytes, MessageMeta) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let stream_name = bus.stream_name(kind);
    let consumer = bus.consumer(kind, durable, settings).await?;
    loop {
        let messages = consumer
            .stream()
            // Pulled in modest batches: what is buffered but not started
            // costs memory and helps nobody.
            .max_messages_per_batch((settings.concurrency.max(1) * 2).min(MAX_PULL_BATCH))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(10))
            .messages()
            .await;
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(stream = %stream_name, error = %Report(&e), "pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut messages = std::pin::pin!(messages);
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut stream_ended = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = messages.next(), if in_flight.len() < settings.concurrency.max(1) => match next {
                    Some(Ok(msg)) => {
                        let (handle, bus, stream_name) = (handle.clone(), bus.clone(), stream_name.clone());
                        in_flight.push(async move {
                            let (meta, outcome) = work_on(&msg, &settings, handle).await;
                            settle(&bus, &stream_name, &settings, &msg, &meta, outcome).await;
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(stream = %stream_name, error = %Report(&e), "pull stream error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None => {
                        stream_ended = true;
                        break;
                    }
                },
            }
        }
        // Finish what was started, then hand back what was pulled but not
        // started, so another instance gets it now rather than after ack_wait.
        while in_flight.next().await.is_some() {}
        if !stream_ended {
            hand_back(&mut messages, settings.concurrency.max(1) * 2).await;
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// Runs `handle` on one message. Long work (a slow LLM, a send waiting for
/// its number's rate) tells JetStream it is alive every half `ack_wait`, so
/// the message is not redelivered meanwhile.
async fn work_on<F, Fut>(
    msg: &jetstream::Message,
    settings: &ConsumerSettings,
    handle: F,
) -> (MessageMeta, Outcome)
where
    F: Fn(Bytes, MessageMeta) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let meta = MessageMeta {
        subject: msg.subject.to_string(),
        delivered: msg.info().map(|i| i.delivered).unwrap_or(1),
        headers: msg.headers.clone(),
    };
    let work = handle(msg.payload.clone(), meta.clone());
    let mut work = std::pin::pin!(work);
    let every = (settings.ack_wait / 2).max(Duration::from_millis(100));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let outcome = loop {
        tokio::select! {
            o = &mut work => break o,
            _ = beat.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    };
    (meta, outcome)
}

/// The most messages one pull asks for.
pub const MAX_PULL_BATCH: usize = 256;

/// Naks every message already pulled into `messages` but not handled, so
/// another instance gets it in a moment rather than after `ack_wait`. The
/// short nak delay keeps the server from handing it straight back to this
/// still-open pull; at most `max` messages or one second are spent here.
pub async fn hand_back<S>(messages: &mut S, max: usize)
where
    S: futures_util::Stream<
            Item = Result<jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>,
        > + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut n = 0usize;
    while n < max {
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_millis(25));
        match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(Ok(msg))) => {
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
                n += 1;
            }
            _ => break,
        }
    }
    if n > 0 {
        tracing::info!(messages = n, "handed back unstarted messages");
    }
}

/// Ends one message per `outcome`: ack, nak with delay, or (when poisoned or
/// out of deliveries) dead-letter and terminate.
pub async fn settle(
    bus: &Bus,
    stream_name: &str,
    settings: &ConsumerSettings,
    msg: &jetstream::Message,
    meta: &MessageMeta,
    outcome: Outcome,
) {
    let reason = match outcome {
        Outcome::Ack => {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %Report(&*e), "ack failed; message will be redelivered");
            }
            return;
        }
        Outcome::Later { delay } if meta.delivered < settings.max_deliver => {
            tracing::debug!(subject = %meta.subject, ?delay, "comes back later");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %Report(&*e), "nak failed; message will be redelivered after ack_wait");
            }
            return;
        }
        Outcome::Later { .. } => format!("gave up after {} deliveries", meta.delivered),
        Outcome::Retry { delay, reason } if meta.delivered < settings.max_deliver => {
            tracing::info!(subject = %meta.subject, delivered = meta.delivered, %reason, "will retry");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %Report(&*e), "nak failed; message will be redelivered after ack_wait");
            }
            return;
        }
        Outcome::Retry { reason, .. } => {
            format!("gave up after {} deliveries: {reason}", meta.delivered)
        }
        Outcome::Poison { reason } => reason,
    };
    let (tenant_id, wamid) = ids_from_subject_and_headers(&meta.subject, meta.headers.as_ref());
    let letter = DeadLetter {
        tenant_id,
        wamid,
        source_stream: stream_name.to_owned(),
        source_subject: meta.subject.clone(),
        reason: reason.clone(),
        deliveries: meta.delivered.max(0) as u64,
        failed_at_ms: now_ms(),
        payload: msg.payload.to_vec(),
        trace: Some(telemetry::current_trace()),
    };
    let span = tracing::warn_span!("dead_letter", subject = %meta.subject);
    async {
        match bus.dead_letter(letter).await {
            Ok(()) => {
                tracing::warn!(%reason, "message dead-lettered");
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %Report(&*e), "term failed");
                }
            }
            Err(e) => {
                // Keep the message: without its dead letter it must not vanish.
                tracing::error!(error = %Report(&e), "dead-letter publish failed; message kept for redelivery");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(30)))).await;
            }
        }
    }
    .instrument(span)
    .await;
}

fn ids_from_subject_and_headers(subject: &str, headers: Option<&HeaderMap>) -> (String, String) {
    let tenant = subject.rsplit('.').next().unwrap_or_default().to_owned();
    let wamid = headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.to_string())
        .unwrap_or_default();
    (tenant, wamid)
}
