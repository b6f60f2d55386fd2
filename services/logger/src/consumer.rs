//! The logger's transport: its durable consumers (log rows, statuses,
//! account events),
//! pulled in big batches and written a batch at a time, several batches at
//! once; every message settled by the batch's outcome for it.

use std::time::Duration;

use alphadome_core::bus::{self, Bus, ConsumerSettings, MessageMeta, StreamKind};
use alphadome_core::{CancellationToken, Report};
use async_nats::jetstream;
use futures_util::StreamExt;
use sqlx::PgPool;

use crate::write;

/// Most messages in one batch.
pub const BATCH: usize = 1000;

/// How long a batch waits for more messages after its first.
pub const LINGER: Duration = Duration::from_millis(20);

/// Batches written at once by one consumer.
pub const PARALLEL_BATCHES: usize = 4;

/// The logger's consumer settings: big batches, and practically unlimited
/// deliveries, since its failures are database outages, not bad messages.
pub fn settings() -> ConsumerSettings {
    ConsumerSettings {
        ack_wait: Duration::from_secs(15),
        max_ack_pending: 20_000,
        max_deliver: 10_000,
        concurrency: 1000,
    }
}

/// Pulls from `consumer` and writes what it gets until `shutdown`.
pub async fn consume(
    db: PgPool,
    bus: Bus,
    kind: StreamKind,
    consumer: jetstream::consumer::PullConsumer,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    let stream_name = bus.stream_name(kind);
    while !shutdown.is_cancelled() {
        let messages = match consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(10))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(stream = %stream_name, error = %Report(&e), "pull failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut messages = std::pin::pin!(messages);
        let writer = Writer {
            db: &db,
            bus: &bus,
            stream_name: &stream_name,
            kind,
        };
        writer.drain(&mut messages, &shutdown).await;
        if shutdown.is_cancelled() {
            bus::hand_back(&mut messages, BATCH).await;
        }
    }
    Ok(())
}

/// Where one consumer's batches go.
struct Writer<'a> {
    db: &'a PgPool,
    bus: &'a Bus,
    stream_name: &'a str,
    kind: StreamKind,
}

impl Writer<'_> {
    /// Gathers messages of one pull into batches and writes them, until the
    /// pull ends or `shutdown`; what was gathered is written before it
    /// returns (graceful shutdown finishes the work in hand).
    ///
    /// Up to PARALLEL_BATCHES batches are written at once, each in its own
    /// transaction, so the database is never idle while a batch's acks go
    /// out or the next one is pulled. Order does not matter: rows carry
    /// their own time, statuses never regress.
    ///
    /// A batch goes when it is full, or LINGER after its first message: a
    /// log row is nobody's reply, and one statement for 40 rows costs the
    /// database a fraction of 40 statements. Messages are taken one at a
    /// time into `pending`, outside the select, so a branch that wins never
    /// drops a half-gathered batch.
    async fn drain<S>(&self, messages: &mut S, shutdown: &CancellationToken)
    where
        S: futures_util::Stream<
                Item = Result<jetstream::Message, jetstream::consumer::pull::MessagesError>,
            > + Unpin,
    {
        let mut writing = futures_util::stream::FuturesUnordered::new();
        let mut pending: Vec<jetstream::Message> = Vec::new();
        let mut due: Option<tokio::time::Instant> = None;
        let mut ended = false;
        loop {
            let ready = !pending.is_empty()
                && (pending.len() >= BATCH
                    || ended
                    || due.is_some_and(|d| d <= tokio::time::Instant::now()));
            if ready && writing.len() < PARALLEL_BATCHES {
                due = None;
                writing.push(self.write_and_settle(std::mem::take(&mut pending)));
                continue;
            }
            if ended && pending.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = writing.next(), if !writing.is_empty() => {}
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() && !ready => {}
                m = messages.next(), if pending.len() < BATCH && !ended => match m {
                    Some(Ok(m)) => {
                        if pending.is_empty() {
                            due = Some(tokio::time::Instant::now() + LINGER);
                        }
                        pending.push(m);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(stream = %self.stream_name, error = %Report(&e), "pull stream error");
                    }
                    None => ended = true,
                },
            }
        }
        if !pending.is_empty() {
            writing.push(self.write_and_settle(pending));
        }
        while writing.next().await.is_some() {}
    }

    /// Writes one batch and acks (or naks, or dead-letters) each message.
    async fn write_and_settle(&self, batch: Vec<jetstream::Message>) {
        let s = settings();
        let outcomes = match self.kind {
            StreamKind::Status => write::apply_statuses(self.db, &batch).await,
            StreamKind::Account => write::write_account_events(self.db, &batch).await,
            _ => write::write_logs(self.db, &batch).await,
        };
        let settle = batch.iter().zip(outcomes).map(|(msg, outcome)| {
            let meta = MessageMeta {
                subject: msg.subject.to_string(),
                delivered: msg.info().map(|i| i.delivered).unwrap_or(1),
                headers: msg.headers.clone(),
            };
            async move { bus::settle(self.bus, self.stream_name, &s, msg, &meta, outcome).await }
        });
        futures_util::future::join_all(settle).await;
    }
}
