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
//! | `P_ACCOUNT`   | `p.account.<tenant>`  | workqueue | `logger-account`           |
//! | `P_DLQ`       | `p.dlq.<source>`      | limits    | (read by `alphadome dlq`)  |
//!
//! Tenant configuration changes are announced on core NATS subject
//! `p.tenant.changed` (payload: tenant id).
//!
//! [`consumer`] holds the consumer loop and [`settle`], the one place a
//! consumed message ends.

mod consumer;

pub use consumer::{
    hand_back, run_consumer, settle, ConsumerSettings, MessageMeta, Outcome, MAX_PULL_BATCH,
};

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::HeaderMap;
use bytes::Bytes;
use prost::Message as _;

use crate::events::v1::DeadLetter;
use crate::telemetry;

/// Any error of the NATS client, kept as the cause of a [`BusError`].
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Header of a message an operator re-drove from the dead-letter stream
/// (`alphadome dlq replay`); its value is the dead letter's sequence.
pub const REPLAY_HEADER: &str = "Alphadome-Replay";

/// A failure talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("JetStream set-up of {what} failed")]
    Setup {
        what: String,
        #[source]
        source: Cause,
    },
    #[error("publish to {subject} was not acknowledged")]
    Publish {
        subject: String,
        #[source]
        source: Cause,
    },
}

/// The streams the platform uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Inbound,
    Outbound,
    Log,
    Status,
    Account,
    DeadLetter,
}

impl StreamKind {
    pub const ALL: [StreamKind; 6] = [
        StreamKind::Inbound,
        StreamKind::Outbound,
        StreamKind::Log,
        StreamKind::Status,
        StreamKind::Account,
        StreamKind::DeadLetter,
    ];

    fn token(self) -> &'static str {
        match self {
            StreamKind::Inbound => "inbound",
            StreamKind::Outbound => "outbound",
            StreamKind::Log => "log",
            StreamKind::Status => "status",
            StreamKind::Account => "account",
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
                    source: e.into(),
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
                source: e.into(),
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
                source: e.into(),
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
        self.publish_with(subject, msg_id, payload, HeaderMap::new())
            .await
    }

    /// Re-drives dead letter `seq`'s payload to the subject it came from,
    /// marked with [`REPLAY_HEADER`] so its consumer knows an operator sent
    /// it again.
    pub async fn replay(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
        seq: u64,
    ) -> Result<bool, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(REPLAY_HEADER, seq.to_string().as_str());
        self.publish_with(subject, msg_id, payload, headers).await
    }

    async fn publish_with(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
        mut headers: HeaderMap,
    ) -> Result<bool, BusError> {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        telemetry::inject(&mut headers);
        let err = |source: Cause| BusError::Publish {
            subject: subject.clone(),
            source,
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| err(e.into()))?
            .await
            .map_err(|e| err(e.into()))?;
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
