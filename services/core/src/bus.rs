//! JetStream plumbing: stream and consumer names, idempotent set-up,
//! publishing with `Nats-Msg-Id` and trace headers, and the one place where
//! every consumed message ends in exactly one of ack, delayed nak or
//! dead-letter + term.
//!
//! Streams (prefix `P` = `ALPHADOME_NATS_PREFIX` upper-cased, subjects use
//! the prefix as given):
//!
//! | stream        | subjects              | retention | consumers (durable, pull)  |
//! |---------------|-----------------------|-----------|----------------------------|
//! | `P_INBOUND`   | `p.inbound.<tenant>`  | workqueue | `responder`                |
//! | `P_OUTBOUND`  | `p.outbound.<tenant>` | workqueue | `sender`                   |
//! | `P_LOG`       | `p.log.<tenant>`      | workqueue | `logger`                   |
//! | `P_STATUS`    | `p.status.<tenant>`   | workqueue | `logger-status`            |
//! | `P_DLQ`       | `p.dlq.<source>`      | limits    | (read by `alphadome dlq`)  |
//!
//! Tenant configuration changes are announced on core NATS subject
//! `p.tenant.changed` (payload: tenant id).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::{now_ms, v1::DeadLetter};
use crate::telemetry;

/// A failure talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("JetStream set-up of {what} failed: {reason}")]
    Setup { what: String, reason: String },
    #[error("publish to {subject} was not acknowledged: {reason}")]
    Publish { subject: String, reason: String },
}

/// The streams the platform uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Inbound,
    Outbound,
    Log,
    Status,
    DeadLetter,
}

impl StreamKind {
    pub const ALL: [StreamKind; 5] = [
        StreamKind::Inbound,
        StreamKind::Outbound,
        StreamKind::Log,
        StreamKind::Status,
        StreamKind::DeadLetter,
    ];

    fn token(self) -> &'static str {
        match self {
            StreamKind::Inbound => "inbound",
            StreamKind::Outbound => "outbound",
            StreamKind::Log => "log",
            StreamKind::Status => "status",
            StreamKind::DeadLetter => "dlq",
        }
    }
}

/// Connection to NATS plus the naming scheme of one deployment.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    prefix: Arc<str>,
}

impl Bus {
    /// Connects to `url`; names are derived from `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("alphadome")
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|source| BusError::Connect {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self::new(client, prefix))
    }

    /// Wraps an existing client.
    pub fn new(client: async_nats::Client, prefix: &str) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(10));
        Self {
            client,
            js,
            prefix: prefix.into(),
        }
    }

    /// Subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stream name of `kind`.
    pub fn stream_name(&self, kind: StreamKind) -> String {
        format!(
            "{}_{}",
            self.prefix.to_uppercase().replace('-', "_"),
            kind.token().to_uppercase()
        )
    }

    /// Subject of `kind` for `key` (usually a tenant id).
    pub fn subject(&self, kind: StreamKind, key: &str) -> String {
        format!("{}.{}.{}", self.prefix, kind.token(), key)
    }

    /// Core NATS subject announcing tenant configuration changes.
    pub fn tenant_changed_subject(&self) -> String {
        format!("{}.tenant.changed", self.prefix)
    }

    /// Creates every stream if missing (idempotent; safe from every instance).
    pub async fn ensure_streams(&self, duplicate_window: Duration) -> Result<(), BusError> {
        for kind in StreamKind::ALL {
            let name = self.stream_name(kind);
            let mut cfg = StreamConfig {
                name: name.clone(),
                subjects: vec![format!("{}.{}.>", self.prefix, kind.token())],
                storage: StorageType::File,
                duplicate_window,
                ..Default::default()
            };
            if kind == StreamKind::DeadLetter {
                cfg.retention = RetentionPolicy::Limits;
                cfg.max_age = Duration::from_secs(30 * 24 * 3600);
            } else {
                cfg.retention = RetentionPolicy::WorkQueue;
                cfg.max_age = Duration::from_secs(7 * 24 * 3600);
            }
            self.js
                .get_or_create_stream(cfg)
                .await
                .map_err(|e| BusError::Setup {
                    what: name,
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The durable pull consumer `durable` on `kind`'s stream, created if
    /// missing. Every instance of a service uses the same one.
    pub async fn consumer(
        &self,
        kind: StreamKind,
        durable: &str,
        settings: ConsumerSettings,
    ) -> Result<PullConsumer, BusError> {
        let stream_name = self.stream_name(kind);
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|e| BusError::Setup {
                what: stream_name.clone(),
                reason: e.to_string(),
            })?;
        stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: settings.ack_wait,
                    max_ack_pending: settings.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::Setup {
                what: format!("{stream_name}/{durable}"),
                reason: e.to_string(),
            })
    }

    /// Publishes `payload` to `subject` with `Nats-Msg-Id` = `msg_id` and the
    /// current trace context, and waits for JetStream's acknowledgement.
    /// Returns whether it was a duplicate.
    pub async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<bool, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        telemetry::inject(&mut headers);
        let err = |reason: String| BusError::Publish {
            subject: subject.clone(),
            reason,
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(ack.duplicate)
    }

    /// Keeps a message that could not be processed in the dead-letter stream.
    pub async fn dead_letter(&self, letter: DeadLetter) -> Result<(), BusError> {
        let source = letter.source_stream.to_lowercase();
        let id = format!(
            "{}:{}:{}",
            letter.source_subject, letter.wamid, letter.failed_at_ms
        );
        self.publish(
            self.subject(StreamKind::DeadLetter, &source),
            &id,
            letter.encode_to_vec().into(),
        )
        .await
        .map(|_| ())
    }
}

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
                tracing::warn!(stream = %stream_name, error = %e, "pull failed; retrying");
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
                        let handle = handle.clone();
                        let bus = bus.clone();
                        let stream_name = stream_name.clone();
                        in_flight.push(async move {
                            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                            let meta = MessageMeta {
                                subject: msg.subject.to_string(),
                                delivered,
                                headers: msg.headers.clone(),
                            };
                            // Long work (a slow LLM, a send waiting for its
                            // number's rate) tells JetStream it is alive, so
                            // the message is not redelivered meanwhile.
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
                            settle(&bus, &stream_name, &settings, &msg, &meta, outcome).await;
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(stream = %stream_name, error = %e, "pull stream error");
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
                tracing::warn!(error = %e, "ack failed; message will be redelivered");
            }
            return;
        }
        Outcome::Retry { delay, reason } if meta.delivered < settings.max_deliver => {
            tracing::info!(subject = %meta.subject, delivered = meta.delivered, %reason, "will retry");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %e, "nak failed; message will be redelivered after ack_wait");
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
                    tracing::warn!(error = %e, "term failed");
                }
            }
            Err(e) => {
                // Keep the message: without its dead letter it must not vanish.
                tracing::error!(error = %e, "dead-letter publish failed; message kept for redelivery");
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
