//! sender: delivers replies through the Graph API with each tenant's own
//! token, exactly once where the protocol allows it.
//!
//! Before calling Meta it claims the reply's row in
//! `alphadome.outbound_messages` (keyed by the id derived from the inbound
//! wamid); a reply already sent is never sent again. Meta's errors are
//! handled by code: throughput, generic and server errors back off with
//! jitter; the pair rate limit backs off 4^n seconds; an invalid token
//! (190) holds the tenant's sends and raises an alert; permanent errors are
//! dead-lettered. Sends are paced per phone number id and per recipient.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use alphadome_core::batch::Coalescer;
use alphadome_core::bus::{Bus, ConsumerSettings, MessageMeta, Outcome, StreamKind};
use alphadome_core::config::Config;
use alphadome_core::crypto::{Keyring, SecretColumn};
use alphadome_core::events::v1::{Direction, LogEvent, OutboundMessage};
use alphadome_core::events::{now_ms, Message as _};
use alphadome_core::meta::{self, SendFailure, MAX_TEXT_CHARS};
use alphadome_core::telemetry;
use alphadome_core::tenant::{self, TenantCache};
use alphadome_core::CancellationToken;
use bytes::Bytes;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

/// The sender's durable consumer on the outbound stream.
pub const CONSUMER: &str = "sender";

/// What the sender knows about a tenant. The token is decrypted and held
/// for at most [`TOKEN_CACHE_AGE`].
pub struct SenderTenant {
    pub id: Uuid,
    pub phone_number_id: Option<String>,
    pub token: Option<SecretString>,
    pub token_invalid: bool,
    pub log_conversations: bool,
    pub log_errors: bool,
}

/// How long a decrypted token is cached before it is decrypted again.
pub const TOKEN_CACHE_AGE: Duration = Duration::from_secs(300);

async fn load_tenant(
    db: PgPool,
    keyring: Arc<Keyring>,
    id: Uuid,
) -> Result<Option<SenderTenant>, sqlx::Error> {
    let Some(mut t) = tenant::load_tenant_config(&db, id).await? else {
        return Ok(None);
    };
    t.whatsapp_access_token =
        tenant::load_credential(&db, id, SecretColumn::WhatsappAccessToken).await?;
    let mut tx = alphadome_core::db::scoped(&db, id).await?;
    let flags: Option<(bool, bool)> = sqlx::query_as(
        "SELECT log_conversations, log_errors FROM alphadome.bot_control_settings WHERE bot_tenant_id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let (log_conversations, log_errors) = flags.unwrap_or((true, true));
    let token = t.whatsapp_access_token.as_deref().and_then(|s| {
        keyring
            .decrypt(id, SecretColumn::WhatsappAccessToken, s)
            .map_err(|e| tracing::error!(tenant_id = %id, error = %e, "cannot decrypt the tenant's WhatsApp token"))
            .ok()
    });
    if token.is_some() {
        alphadome_core::audit::record_use(
            &db,
            id,
            SecretColumn::WhatsappAccessToken,
            "service:sender",
            "send replies (cache fill)",
        )
        .await;
    }
    Ok(Some(SenderTenant {
        id,
        phone_number_id: t.whatsapp_phone_number_id,
        token,
        token_invalid: t.whatsapp_token_invalid_at.is_some(),
        log_conversations,
        log_errors,
    }))
}

/// Outcome of claiming a reply before sending it.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// This worker may send, starting at part `parts_sent`.
    Mine {
        parts_sent: i32,
        first_wamid: Option<String>,
    },
    /// Already sent (with Meta's wamid): only make sure it is logged.
    Sent { wamid: Option<String>, parts: i32 },
    /// Already failed permanently.
    Failed,
    /// Another worker holds a live claim.
    Busy,
}

/// The running sender's state.
pub struct Sender {
    bus: Bus,
    db: PgPool,
    keyring: Arc<Keyring>,
    http: reqwest::Client,
    graph_url: String,
    tenants: Arc<TenantCache<SenderTenant>>,
    per_number: DefaultKeyedRateLimiter<String>,
    /// One waiter per number at the rate limiter; the rest queue here in
    /// order, asleep, so a flooded number costs no CPU and no other
    /// number's sends.
    number_gates: alphadome_core::gate::KeyedGates<String>,
    per_recipient: DefaultKeyedRateLimiter<String>,
    claim_lease: Duration,
    /// Claims and records made at the same moment share one call
    /// (`alphadome.claim_outbound_batch`, `record_outbound_progress_batch`).
    claims: Coalescer<ClaimRequest, ClaimRow>,
    records: Coalescer<RecordRequest, ()>,
    /// Graph API requests in flight at once ([`MAX_CONCURRENT_POSTS`]).
    posts: tokio::sync::Semaphore,
    /// How long a send that may have reached Meta waits for its status
    /// webhook before it is tried again (`ALPHADOME_SEND_RECONCILE_WAIT_MS`).
    reconcile_wait: Duration,
}

/// Most Graph API requests in flight at once per sender: each reuses a
/// kept-alive connection from a pool of this size instead of thousands of
/// sends in hand opening as many connections at once, and the request's
/// time-out runs only from the moment it has its slot, so waiting here is
/// never mistaken for a slow Graph API.
pub const MAX_CONCURRENT_POSTS: usize = 256;

/// One claim for the claim batch: tenant, outbound id, in reply to.
type ClaimRequest = (Uuid, String, String);
/// The claim function's answer: claimed, state, parts sent, first wamid.
type ClaimRow = (bool, String, i32, Option<String>);
/// One record for the record batch: tenant, outbound id, parts, wamid, total.
type RecordRequest = (Uuid, String, i32, Option<String>, i32);

/// Why a send may not go now.
enum Paced {
    /// The business number and customer pair's limit: try after this long.
    Pair(Duration),
    /// Too many sends already wait for this number's rate.
    Crowded,
}

/// Sends that may wait for one number's rate in one sender before more
/// go back to the stream (about three seconds at Meta's 80/s).
pub const NUMBER_WAITING: usize = 256;
/// Deliveries during which a send finding its number crowded goes back
/// (after 2, 4, 8, 16, then 30 s: about two and a half minutes of backlog
/// in all); after that it waits its turn. Below the sender's max_deliver.
const NUMBER_REQUEUES: i64 = 8;

/// Most items in one batch call.
const MAX_BATCH: usize = 256;
/// Batch calls of one kind in flight at once.
const BATCHES_IN_FLIGHT: usize = 2;

fn claim_batcher(db: PgPool, lease: Duration) -> Coalescer<ClaimRequest, ClaimRow> {
    let sticky = alphadome_core::db::Sticky::new(db, BATCHES_IN_FLIGHT);
    Coalescer::new(
        "claim",
        MAX_BATCH,
        BATCHES_IN_FLIGHT,
        move |reqs: Vec<ClaimRequest>| {
            let sticky = sticky.clone();
            async move {
                let mut conn = sticky.get().await?;
                let n = reqs.len();
                let (tenants, (ids, replies)): (Vec<Uuid>, (Vec<String>, Vec<String>)) = reqs
                    .into_iter()
                    .map(|(t, id, reply)| (t, (id, reply)))
                    .unzip();
                let rows: Vec<(i32, bool, String, i32, Option<String>)> =
                    sqlx::query_as("SELECT * FROM alphadome.claim_outbound_batch($1, $2, $3, $4)")
                        .bind(&tenants)
                        .bind(&ids)
                        .bind(&replies)
                        .bind(lease.as_secs_f64())
                        .fetch_all(&mut *conn)
                        .await?;
                conn.keep();
                Ok::<_, sqlx::Error>(alphadome_core::batch::by_index(
                    n,
                    rows.into_iter()
                        .map(|(i, claimed, state, parts, wamid)| {
                            (i, (claimed, state, parts, wamid))
                        })
                        .collect(),
                ))
            }
        },
    )
}

fn record_batcher(db: PgPool) -> Coalescer<RecordRequest, ()> {
    let sticky = alphadome_core::db::Sticky::new(db, BATCHES_IN_FLIGHT);
    Coalescer::new(
        "record",
        MAX_BATCH,
        BATCHES_IN_FLIGHT,
        move |reqs: Vec<RecordRequest>| {
            let sticky = sticky.clone();
            async move {
                let mut conn = sticky.get().await?;
                let n = reqs.len();
                let cols = alphadome_core::batch::unzip5(reqs);
                sqlx::query("SELECT alphadome.record_outbound_progress_batch($1, $2, $3, $4, $5)")
                    .bind(&cols.0)
                    .bind(&cols.1)
                    .bind(&cols.2)
                    .bind(&cols.3)
                    .bind(&cols.4)
                    .execute(&mut *conn)
                    .await?;
                conn.keep();
                Ok::<_, sqlx::Error>(vec![Some(()); n])
            }
        },
    )
}

impl Sender {
    /// Builds the sender and keeps its tenant cache current until `shutdown`.
    pub async fn start(
        config: &Config,
        db: PgPool,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, sqlx::Error> {
        let tenants = TenantCache::new(|_: &SenderTenant| None, Some(TOKEN_CACHE_AGE));
        let keyring = config.keyring.clone();
        let load = {
            let keyring = keyring.clone();
            move |db: PgPool, id: Uuid| load_tenant(db, keyring.clone(), id)
        };
        tenants.refresh(&db, &load).await?;
        tenants.spawn_refresher(
            db.clone(),
            bus.clone(),
            config.tenant_refresh,
            shutdown,
            load,
        );
        let http = reqwest::Client::builder()
            .timeout(config.send_timeout)
            .pool_max_idle_per_host(MAX_CONCURRENT_POSTS)
            .build()
            .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
        // Meta's defaults: 80 messages/s per number; 1 per 6 s per
        // business number and customer pair, with bursts of up to 45
        // (protocols.md 2.9).
        let mps = NonZeroU32::new(config.send_mps).unwrap_or(NonZeroU32::MIN);
        let pair_burst = NonZeroU32::new(config.pair_burst).unwrap_or(NonZeroU32::MIN);
        let per_recipient = Quota::with_period(Duration::from_secs(6))
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
            .allow_burst(pair_burst);
        let claim_lease = config.send_timeout * 2 + Duration::from_secs(5);
        Ok(Arc::new(Self {
            bus,
            claims: claim_batcher(db.clone(), claim_lease),
            records: record_batcher(db.clone()),
            posts: tokio::sync::Semaphore::new(MAX_CONCURRENT_POSTS),
            reconcile_wait: config.send_reconcile_wait,
            db,
            keyring,
            http,
            graph_url: config.graph_url.clone(),
            tenants,
            per_number: RateLimiter::keyed(Quota::per_second(mps)),
            number_gates: alphadome_core::gate::KeyedGates::new(1),
            per_recipient: RateLimiter::keyed(per_recipient),
            // A claim outlives any request it covers (the timeout), with margin.
            claim_lease,
        }))
    }

    /// Consumes the outbound stream until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        settings: ConsumerSettings,
        shutdown: CancellationToken,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let me = self.clone();
        alphadome_core::bus::run_consumer(
            self.bus.clone(),
            StreamKind::Outbound,
            CONSUMER,
            settings,
            shutdown,
            move |payload, meta| {
                let me = me.clone();
                async move { me.handle(payload, meta).await }
            },
        )
        .await
    }

    async fn tenant(&self, id: Uuid) -> Result<Option<Arc<SenderTenant>>, sqlx::Error> {
        if let Some(t) = self.tenants.get(id) {
            return Ok(Some(t));
        }
        Ok(load_tenant(self.db.clone(), self.keyring.clone(), id)
            .await?
            .map(Arc::new))
    }

    async fn handle(&self, payload: Bytes, meta: MessageMeta) -> Outcome {
        let msg = match OutboundMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Poison {
                    reason: format!("undecodable OutboundMessage: {e}"),
                }
            }
        };
        let span = tracing::info_span!("sender.message", tenant_id = %msg.tenant_id, wamid = %msg.in_reply_to);
        telemetry::set_parent_from_headers(&span, meta.headers.as_ref());
        self.deliver(msg, meta.delivered).instrument(span).await
    }

    async fn deliver(&self, msg: OutboundMessage, delivered: i64) -> Outcome {
        let Ok(tenant_id) = Uuid::parse_str(&msg.tenant_id) else {
            return Outcome::Poison {
                reason: format!("tenant id {:?} is not a uuid", msg.tenant_id),
            };
        };
        let tenant = match self.tenant(tenant_id).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Outcome::Poison {
                    reason: format!("tenant {tenant_id} does not exist"),
                }
            }
            Err(e) => return retry(delivered, format!("loading tenant: {e}")),
        };
        if tenant.token_invalid {
            return Outcome::Retry {
                delay: Duration::from_secs(60),
                reason: "the tenant's WhatsApp token is marked invalid (Meta error 190); sends are held until it is replaced".into(),
            };
        }
        let (Some(token), Some(pnid)) = (tenant.token.as_ref(), tenant.phone_number_id.as_deref())
        else {
            return Outcome::Retry {
                delay: Duration::from_secs(60),
                reason: "the tenant has no usable WhatsApp access token or phone number id".into(),
            };
        };
        let recipient = if msg.to.is_empty() {
            msg.to_user_id.clone()
        } else {
            msg.to.clone()
        };
        // Paced before claiming, so no claim lease runs out in a queue.
        match self
            .pace(pnid, &recipient, delivered <= NUMBER_REQUEUES)
            .await
        {
            Ok(()) => {}
            Err(Paced::Pair(wait)) => {
                return Outcome::Retry {
                    delay: wait,
                    reason: "pair rate limit: this customer was sent many messages from this number just now".into(),
                }
            }
            Err(Paced::Crowded) => {
                let n = (delivered - 1).clamp(0, NUMBER_REQUEUES) as u32;
                return Outcome::Retry {
                    delay: jitter(Duration::from_secs((2u64 << n).min(30))),
                    reason: "this number's send rate is taken: many sends wait for it".into(),
                };
            }
        }
        let claim = match self.claim(&msg, tenant_id).await {
            Ok(c) => c,
            Err(e) => return retry(delivered, format!("claiming the reply: {e}")),
        };
        let (mut parts_sent, mut first_wamid) = match claim {
            Claim::Mine {
                parts_sent,
                first_wamid,
            } => (parts_sent, first_wamid),
            Claim::Sent { wamid, parts } => {
                tracing::info!("reply already sent; not sending again");
                return self
                    .log_sent(&tenant, &msg, wamid.unwrap_or_default(), parts, delivered)
                    .await;
            }
            Claim::Failed => return Outcome::Ack,
            Claim::Busy => {
                return Outcome::Retry {
                    delay: Duration::from_secs(5),
                    reason: "another sender holds this reply".into(),
                }
            }
        };
        let parts = meta::split_text(&msg.text, MAX_TEXT_CHARS);
        if parts_sent > 0 && parts_sent as usize >= parts.len() {
            // Every part went out, as their status webhooks showed after
            // sends whose answers never came: record it, send nothing.
            tracing::info!("reply found sent from its status webhooks; not sending again");
            if let Err(e) = self
                .record_sent(
                    tenant.id,
                    &msg.outbound_id,
                    parts_sent,
                    first_wamid.as_deref(),
                    parts.len(),
                )
                .await
            {
                return retry(delivered, format!("recording the send: {e}"));
            }
        }
        let mut paced = true;
        while (parts_sent as usize) < parts.len() {
            let i = parts_sent as usize;
            if !std::mem::take(&mut paced) {
                if let Err(Paced::Pair(wait)) = self.pace(pnid, &recipient, false).await {
                    // The parts sent so far are recorded; the rest comes later.
                    self.release(tenant.id, &msg.outbound_id, "pair rate limit")
                        .await;
                    return Outcome::Retry {
                        delay: wait,
                        reason: "pair rate limit between the parts of a long reply".into(),
                    };
                }
            }
            // Only the first part quotes the customer's message.
            let context = if i == 0 { msg.in_reply_to.as_str() } else { "" };
            let body = meta::text_reply_body(
                &msg.to,
                &msg.to_user_id,
                &parts[i],
                context,
                // Echoed in the part's status webhooks: how a send whose
                // answer never came is found to have gone out.
                &callback_data(&msg.outbound_id, i),
            );
            match self.post(pnid, token, &body).await {
                Ok(wamid) => {
                    parts_sent += 1;
                    first_wamid.get_or_insert(wamid);
                    if let Err(e) = self
                        .record_sent(
                            tenant.id,
                            &msg.outbound_id,
                            parts_sent,
                            first_wamid.as_deref(),
                            parts.len(),
                        )
                        .await
                    {
                        // Sent but not recorded even after waiting: the one
                        // window where a redelivery may repeat this part.
                        tracing::error!(error = %e, "send succeeded but could not be recorded");
                        return retry(delivered, format!("recording the send: {e}"));
                    }
                }
                Err(Failure::Transport { reason, maybe_sent }) => {
                    self.release(tenant.id, &msg.outbound_id, &reason).await;
                    return self.after_failure(delivered, reason, maybe_sent);
                }
                Err(Failure::Meta(SendFailure::Retry, err, true)) => {
                    let reason = format!(
                        "Graph API error {}: {} (fbtrace_id {})",
                        err.code,
                        err.message,
                        err.fbtrace_id.unwrap_or_default()
                    );
                    self.release(tenant.id, &msg.outbound_id, &reason).await;
                    return self.after_failure(delivered, reason, true);
                }
                Err(Failure::Meta(class, err, _)) => {
                    let reason = format!(
                        "Graph API error {}: {} (fbtrace_id {})",
                        err.code,
                        err.message,
                        err.fbtrace_id.unwrap_or_default()
                    );
                    return self
                        .on_meta_error(&tenant, &msg, class, reason, delivered)
                        .await;
                }
            }
        }
        self.log_sent(
            &tenant,
            &msg,
            first_wamid.unwrap_or_default(),
            parts.len() as i32,
            delivered,
        )
        .await
    }

    async fn on_meta_error(
        &self,
        tenant: &SenderTenant,
        msg: &OutboundMessage,
        class: SendFailure,
        reason: String,
        delivered: i64,
    ) -> Outcome {
        match class {
            SendFailure::Retry => {
                self.release(tenant.id, &msg.outbound_id, &reason).await;
                retry(delivered, reason)
            }
            SendFailure::PairRate => {
                self.release(tenant.id, &msg.outbound_id, &reason).await;
                let n = (delivered - 1).clamp(0, 4) as u32;
                Outcome::Retry {
                    delay: jitter(Duration::from_secs(4u64.pow(n))),
                    reason,
                }
            }
            SendFailure::TokenInvalid => {
                self.release(tenant.id, &msg.outbound_id, &reason).await;
                self.hold_tenant(tenant.id).await;
                Outcome::Retry {
                    delay: Duration::from_secs(60),
                    reason,
                }
            }
            SendFailure::Permanent => {
                let r = self
                    .execute_for(
                        tenant.id,
                        sqlx::query(
                            "UPDATE alphadome.outbound_messages SET state = 'failed', claimed_until = NULL, last_error = $2, updated_at = now() WHERE outbound_id = $1",
                        )
                        .bind(&msg.outbound_id)
                        .bind(&reason),
                    )
                    .await;
                if let Err(e) = r {
                    return retry(delivered, format!("recording a permanent failure: {e}"));
                }
                if tenant.log_conversations {
                    let err = if tenant.log_errors {
                        reason.clone()
                    } else {
                        "send failed".to_owned()
                    };
                    if let Err(e) = self.publish_log(msg, String::new(), 0, err).await {
                        return retry(delivered, e.to_string());
                    }
                }
                Outcome::Poison { reason }
            }
        }
    }

    /// Marks the tenant's token invalid (Meta error 190): its sends are held
    /// until the token is replaced, and the alert is raised.
    async fn hold_tenant(&self, id: Uuid) {
        let r = self
            .execute_for(
                id,
                sqlx::query(
                    "UPDATE alphadome.bot_tenants SET whatsapp_token_invalid_at = now() WHERE id = $1 AND whatsapp_token_invalid_at IS NULL",
                )
                .bind(id),
            )
            .await;
        match r {
            Ok(done) if done > 0 => {
                tracing::error!(tenant_id = %id, alert = "whatsapp_token_invalid", "ALERT: Meta rejected the tenant's WhatsApp token (190); its sends are held until `alphadome tenant apply` sets a new token");
                tenant::announce_change(&self.bus, id).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(tenant_id = %id, error = %e, "could not mark the tenant's token invalid")
            }
        }
    }

    /// Runs one statement as `tenant` (row-level security scope); returns
    /// the rows it affected.
    async fn execute_for(
        &self,
        tenant: Uuid,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = alphadome_core::db::scoped(&self.db, tenant).await?;
        let n = q.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
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
    async fn pace(&self, pnid: &str, recipient: &str, may_requeue: bool) -> Result<(), Paced> {
        let pair = format!("{pnid}:{recipient}");
        if let Err(not_until) = self.per_recipient.check_key(&pair) {
            let now = self.per_recipient.clock().now();
            return Err(Paced::Pair(
                not_until
                    .wait_time_from(now)
                    .max(Duration::from_millis(100)),
            ));
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

    async fn claim(&self, msg: &OutboundMessage, tenant_id: Uuid) -> Result<Claim, sqlx::Error> {
        // Usually in a batch with the claims made at the same moment; alone
        // (alphadome.claim_outbound, one round trip) when the batch had no
        // answer for it.
        let batched = self
            .claims
            .call((tenant_id, msg.outbound_id.clone(), msg.in_reply_to.clone()))
            .await;
        let row: Option<ClaimRow> = match batched {
            Some(row) => Some(row),
            None => {
                sqlx::query_as("SELECT * FROM alphadome.claim_outbound($1, $2, $3, $4)")
                    .bind(tenant_id)
                    .bind(&msg.outbound_id)
                    .bind(&msg.in_reply_to)
                    .bind(self.claim_lease.as_secs_f64())
                    .fetch_optional(&self.db)
                    .await?
            }
        };
        let Some((claimed, state, parts_sent, wamid)) = row else {
            return Ok(Claim::Busy);
        };
        Ok(match (claimed, state.as_str()) {
            (true, _) => Claim::Mine {
                parts_sent,
                first_wamid: wamid,
            },
            (false, "sent") => Claim::Sent {
                wamid,
                parts: parts_sent,
            },
            (false, "failed") => Claim::Failed,
            _ => Claim::Busy,
        })
    }

    /// Records a send Meta accepted. Only this process knows it happened,
    /// so a database outage is waited out here (the message keeps telling
    /// JetStream it is being worked on) rather than handed back, which
    /// would send it again once the claim expired.
    async fn record_sent(
        &self,
        tenant: Uuid,
        id: &str,
        parts_sent: i32,
        wamid: Option<&str>,
        total: usize,
    ) -> Result<(), sqlx::Error> {
        let deadline = std::time::Instant::now() + RECORD_PATIENCE;
        let mut wait = Duration::from_millis(200);
        loop {
            match self
                .record_progress(tenant, id, parts_sent, wamid, total)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() + wait > deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "send succeeded; recording it failed, trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn record_progress(
        &self,
        tenant: Uuid,
        id: &str,
        parts_sent: i32,
        wamid: Option<&str>,
        total: usize,
    ) -> Result<(), sqlx::Error> {
        let req = (
            tenant,
            id.to_owned(),
            parts_sent,
            wamid.map(str::to_owned),
            total as i32,
        );
        if self.records.call(req).await.is_some() {
            return Ok(());
        }
        sqlx::query("SELECT alphadome.record_outbound_progress($1, $2, $3, $4, $5)")
            .bind(tenant)
            .bind(id)
            .bind(parts_sent)
            .bind(wamid)
            .bind(total as i32)
            .execute(&self.db)
            .await
            .map(|_| ())
    }

    /// What to do with a send that failed without a usable answer. When
    /// Meta may have it (`maybe_sent`: a time-out, a 5xx), the next try
    /// waits at least `reconcile_wait`, time for the part's status webhook
    /// to show it went out (`alphadome.apply_status_batch`), so the try
    /// sends only what Meta does not have; without a status by then it
    /// is sent again, since a lost reply is worse than a repeated one.
    fn after_failure(&self, delivered: i64, reason: String, maybe_sent: bool) -> Outcome {
        match retry(delivered, reason) {
            Outcome::Retry { delay, reason } if maybe_sent => Outcome::Retry {
                delay: delay.max(self.reconcile_wait),
                reason,
            },
            other => other,
        }
    }

    async fn release(&self, tenant: Uuid, id: &str, reason: &str) {
        let r = self
            .execute_for(
                tenant,
                sqlx::query("UPDATE alphadome.outbound_messages SET claimed_until = NULL, last_error = $2, updated_at = now() WHERE outbound_id = $1 AND state = 'sending'")
                    .bind(id)
                    .bind(reason),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not release the claim; it expires by itself");
        }
    }

    async fn post(
        &self,
        pnid: &str,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> Result<String, Failure> {
        let url = format!("{}/{}/messages", self.graph_url, pnid);
        let _slot = self.posts.acquire().await.ok();
        let resp = self
            .http
            .post(url)
            .bearer_auth(token.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|e| Failure::Transport {
                reason: format!("Graph API request failed: {}", without_url(&e)),
                maybe_sent: !e.is_connect(),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| Failure::Transport {
            reason: format!("Graph API response unreadable: {}", without_url(&e)),
            maybe_sent: true,
        })?;
        if (200..300).contains(&status) {
            return meta::sent_wamid(&bytes).ok_or_else(|| Failure::Transport {
                reason: "Graph API answered 2xx without messages[0].id".into(),
                maybe_sent: true,
            });
        }
        let (class, err) = meta::classify_send_error(status, &bytes);
        Err(Failure::Meta(class, err, status >= 500))
    }

    async fn log_sent(
        &self,
        tenant: &SenderTenant,
        msg: &OutboundMessage,
        wamid: String,
        parts: i32,
        delivered: i64,
    ) -> Outcome {
        if tenant.log_conversations {
            if let Err(e) = self.publish_log(msg, wamid, parts, String::new()).await {
                return retry(delivered, e.to_string());
            }
        }
        Outcome::Ack
    }

    async fn publish_log(
        &self,
        msg: &OutboundMessage,
        wamid: String,
        parts: i32,
        error: String,
    ) -> Result<(), alphadome_core::bus::BusError> {
        let mut metadata: serde_json::Value =
            serde_json::from_str(&msg.metadata_json).unwrap_or_else(|_| serde_json::json!({}));
        if !metadata.is_object() {
            metadata = serde_json::json!({});
        }
        metadata["in_reply_to"] = serde_json::Value::String(msg.in_reply_to.clone());
        metadata["outbound_id"] = serde_json::Value::String(msg.outbound_id.clone());
        metadata["parts"] = serde_json::json!(parts);
        if msg.inbound_received_at_ms > 0 {
            metadata["latency_ms"] = serde_json::json!(now_ms() - msg.inbound_received_at_ms);
        }
        let key = if msg.in_reply_to.is_empty() {
            msg.outbound_id.clone()
        } else {
            msg.in_reply_to.clone()
        };
        let log = LogEvent {
            tenant_id: msg.tenant_id.clone(),
            direction: Direction::Outgoing as i32,
            dedup_key: format!("out:{key}"),
            wamid,
            user_phone: msg.to.clone(),
            message_text: msg.text.clone(),
            ai_processed: msg.ai_processed,
            ai_response: if msg.ai_processed {
                msg.text.clone()
            } else {
                String::new()
            },
            error_message: error,
            template_used: msg.template_used.clone(),
            training_data_id: msg.training_data_id.clone(),
            metadata_json: metadata.to_string(),
            occurred_at_ms: now_ms(),
            raw_json: String::new(),
            trace: Some(telemetry::current_trace()),
        };
        let id = log.dedup_key.clone();
        self.bus
            .publish(
                self.bus.subject(StreamKind::Log, &msg.tenant_id),
                &id,
                log.encode_to_vec().into(),
            )
            .await
            .map(|_| ())
    }
}

enum Failure {
    /// No usable answer (timeout, connection, unreadable body).
    /// `maybe_sent`: the request may have reached Meta (anything but a
    /// failed connection), so Meta may have the message.
    Transport { reason: String, maybe_sent: bool },
    /// Meta answered with an error; `maybe_sent` for a 5xx, after which
    /// Meta may or may not have sent it (protocols.md, sending).
    Meta(SendFailure, meta::GraphError, bool),
}

/// reqwest errors carry the URL; keep it out of logs (it names the number).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request error"
    };
    kind.to_owned()
}

/// Exponential backoff with jitter: 1 s, 2 s, 4 s ... up to 60 s.
/// How long a send Meta accepted keeps trying to be recorded through a
/// database outage.
pub const RECORD_PATIENCE: Duration = Duration::from_secs(600);

/// The `biz_opaque_callback_data` of part `part` of reply `outbound_id`
/// (read back by the logger: `alphadome.apply_status_batch`).
pub fn callback_data(outbound_id: &str, part: usize) -> String {
    format!("{outbound_id}#{part}")
}

fn retry(delivered: i64, reason: String) -> Outcome {
    let n = (delivered - 1).clamp(0, 6) as u32;
    Outcome::Retry {
        delay: jitter(Duration::from_secs(1u64 << n).min(Duration::from_secs(60))),
        reason,
    }
}

fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.8..1.2);
    d.mul_f64(f)
}
