//! The load generator: correctly signed Meta webhooks (text messages over
//! N tenants and M users, and status webhooks for the replies), sent at a
//! fixed rate or as fast as possible over keep-alive HTTP/1.1 connections,
//! and a report of what came out at the Graph API stand-in.
//!
//! Latency is measured from the moment a webhook was *scheduled* to be
//! sent (open loop, so a stalled server cannot hide its stall by slowing
//! the generator down: no coordinated omission) to the moment its reply
//! reached the stand-in, in an HdrHistogram. Replies are matched to
//! webhooks by `context.message_id`, which is the inbound wamid.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::graph::GraphStandIn;
use alphadome_admin::manifest::{self, Manifest};
use alphadome_core::crypto::Keyring;
use alphadome_core::meta;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sqlx::PgPool;
use uuid::Uuid;

/// A tenant the generator writes to.
#[derive(Debug, Clone)]
pub struct LoadTenant {
    pub id: Uuid,
    pub phone_number_id: String,
    /// The tenant's own Meta app secret (the generator signs with it).
    pub app_secret: String,
}

/// Words the synthetic FAQs are made of: a music shop's vocabulary.
const ITEMS: &[&str] = &[
    "guitar",
    "piano",
    "violin",
    "drums",
    "keyboard",
    "amplifier",
    "microphone",
    "ukulele",
    "saxophone",
    "trumpet",
    "flute",
    "cello",
    "harp",
    "banjo",
    "mandolin",
    "clarinet",
    "bass",
    "synthesizer",
    "speaker",
    "headphones",
    "cable",
    "strings",
    "picks",
    "capo",
    "tuner",
    "metronome",
    "stand",
    "pedal",
    "mixer",
    "case",
];
const ASPECTS: &[&str] = &[
    "price",
    "warranty",
    "delivery",
    "repair",
    "rental",
    "lessons",
    "stock",
    "colours",
    "sizes",
    "brands",
    "discount",
    "installments",
    "trade-in",
    "insurance",
    "setup",
    "tuning",
    "accessories",
    "returns",
    "shipping",
    "availability",
];
const QUESTIONS: &[&str] = &[
    "What is the {a} of the {i}?",
    "Do you offer {a} for a {i}?",
    "Tell me about {i} {a}",
    "How does {a} work for the {i}?",
    "Can I get {a} on a {i}?",
];

/// `n` distinct FAQ entries (question, answer) about a music shop, the
/// same for the same `n` and `seed`.
pub fn synthetic_faq(n: usize, seed: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|k| {
            let i = ITEMS[(k + seed) % ITEMS.len()];
            let a = ASPECTS[(k / ITEMS.len() + seed) % ASPECTS.len()];
            let q = QUESTIONS[(k / (ITEMS.len() * ASPECTS.len()) + seed) % QUESTIONS.len()];
            let question = q.replace("{i}", i).replace("{a}", a);
            let answer = format!(
                "About the {a} of our {i}s: ask at the counter or call us, entry {k}. \
                 We reply within the hour on weekdays."
            );
            (question, answer)
        })
        .collect()
}

/// Customer texts that hit the synthetic FAQ (reworded questions).
pub fn customer_text(k: usize) -> String {
    let i = ITEMS[k % ITEMS.len()];
    let a = ASPECTS[(k / 7) % ASPECTS.len()];
    match k % 4 {
        0 => format!("hi, what's the {a} of a {i}"),
        1 => format!("{i} {a} please"),
        2 => format!("do you have {a} for the {i}?"),
        _ => format!("Hello! I'd like to know about {a} for {i}s, thanks"),
    }
}

/// Creates `n` active tenants with `faq` synthetic FAQ entries each and
/// generous limits, through the manifest path (`jobs` at a time).
pub async fn create_tenants(
    pool: &PgPool,
    keyring: &Keyring,
    n: usize,
    faq: usize,
    jobs: usize,
) -> Result<Vec<LoadTenant>, String> {
    create_tenants_from(pool, keyring, 0, n, faq, None, jobs).await
}

/// Creates tenants `first..first + n` like [`create_tenants`]; with
/// `ai_base_url`, their AI answers whatever the FAQ cannot, through an
/// OpenAI-compatible server there.
pub async fn create_tenants_from(
    pool: &PgPool,
    keyring: &Keyring,
    first: usize,
    n: usize,
    faq: usize,
    ai_base_url: Option<&str>,
    jobs: usize,
) -> Result<Vec<LoadTenant>, String> {
    let next = AtomicUsize::new(first);
    let n = first + n;
    let out = Mutex::new(Vec::with_capacity(n));
    let worker = || async {
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= n {
                return Ok::<(), String>(());
            }
            let t = load_tenant(k);
            let mut y = format!(
                "tenant:\n  client_name: Load tenant {k}\n  client_phone: \"+2547{k:08}\"\n  \
                 whatsapp_phone_number_id: \"{pnid}\"\n  whatsapp_access_token: EAAG-load-{k}\n  \
                 whatsapp_app_secret: {secret}\n  is_active: true\n  webhook_verify_token: verify-load-{k}\n\
                 {ai}control_settings:\n  log_conversations: true\n  enable_ai_responses: {ai_on}\n  \
                 max_messages_per_hour: 1000000\n  max_messages_per_user_per_day: 1000000\n  \
                 debounce_ms: 0\n\
                 templates:\n  - template_name: default\n    is_default: true\n    system_prompt: You are a helpful assistant.\n",
                pnid = t.phone_number_id,
                secret = t.app_secret,
                ai = ai_base_url.map_or(String::new(), |u| format!(
                    "  ai_provider: openai_compatible\n  ai_base_url: {u}\n  ai_api_key: load-key-{k}\n  ai_model: load-model\n"
                )),
                ai_on = ai_base_url.is_some(),
            );
            if faq > 0 {
                y.push_str("training_data:\n");
                for (q, a) in synthetic_faq(faq, k) {
                    y.push_str(&format!(
                        "  - data_type: faq\n    question: {}\n    answer: {}\n",
                        serde_json::to_string(&q).unwrap_or_default(),
                        serde_json::to_string(&a).unwrap_or_default()
                    ));
                }
            }
            let m = Manifest::parse(&y, alphadome_core::config::DEFAULT_COUNTRY_CODE)
                .map_err(|e| format!("load manifest {k}: {e}"))?;
            let r = manifest::apply(pool, keyring, &m)
                .await
                .map_err(|e| format!("load tenant {k}: {e}"))?;
            if let Ok(mut o) = out.lock() {
                o.push(LoadTenant {
                    id: r.tenant_id,
                    ..t
                });
            }
        }
    };
    let results = futures_util::future::join_all((0..jobs.max(1)).map(|_| worker())).await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let mut v = out.into_inner().map_err(|e| e.to_string())?;
    v.sort_by(|a, b| a.phone_number_id.cmp(&b.phone_number_id));
    Ok(v)
}

/// Tenant `k`'s phone number id and app secret (its id comes from the
/// database).
pub fn load_tenant(k: usize) -> LoadTenant {
    LoadTenant {
        id: Uuid::nil(),
        phone_number_id: format!("9{k:014}"),
        app_secret: format!("load-app-secret-{k}"),
    }
}

/// The inbound wamid of message `seq` of run `run`.
pub fn wamid(run: &str, seq: usize) -> String {
    format!("wamid.load.{run}.{seq}")
}

/// The sequence number in a wamid made by [`wamid`] for `run`.
pub fn seq_of(run: &str, wamid: &str) -> Option<usize> {
    wamid
        .strip_prefix("wamid.load.")?
        .strip_prefix(run)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

/// One webhook to send: its body and signature, made before the clock
/// starts (signing is Meta's work, not the platform's).
#[derive(Clone)]
pub struct Shot {
    pub body: Bytes,
    pub signature: String,
}

impl Shot {
    pub fn new(secret: &str, body: String) -> Self {
        Self {
            signature: meta::sign(secret.as_bytes(), body.as_bytes()),
            body: Bytes::from(body),
        }
    }
}

/// `messages` text webhooks spread round-robin over `tenants` and
/// `users` users per tenant (one message per webhook, as Meta sends them).
pub fn text_shots(run: &str, tenants: &[LoadTenant], users: usize, messages: usize) -> Vec<Shot> {
    (0..messages)
        .map(|seq| {
            let t = &tenants[seq % tenants.len()];
            let user = (seq / tenants.len()) % users.max(1);
            let from = format!("2547{:08}", user);
            let body = crate::webhooks::text_webhook(
                &t.phone_number_id,
                &from,
                &wamid(run, seq),
                &customer_text(seq),
            );
            Shot::new(&t.app_secret, body)
        })
        .collect()
}

/// How to send.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Webhooks per second; `None` for as fast as the server takes them.
    pub rate: Option<f64>,
    /// Connections (and requests in flight).
    pub connections: usize,
}

/// What the sending side saw.
pub struct Sent {
    pub started: Instant,
    pub finished: Instant,
    /// When each webhook was due (fixed rate) or started (as fast as possible).
    pub due: Vec<Instant>,
    /// HTTP status of each webhook (0: no answer).
    pub status: Vec<u16>,
    /// Why webhooks got no answer, and how often.
    pub errors: BTreeMap<String, u64>,
    /// Webhook POST round trips, in microseconds.
    pub post_us: Histogram<u64>,
}

impl Sent {
    pub fn accepted(&self) -> usize {
        self.status.iter().filter(|s| **s == 200).count()
    }
    pub fn per_sec(&self) -> f64 {
        self.status.len() as f64 / (self.finished - self.started).as_secs_f64().max(1e-9)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

/// Sends every shot to `addr` (`path` e.g. `/webhook`) at `pace`.
pub async fn send(addr: SocketAddr, path: &str, shots: Arc<Vec<Shot>>, pace: Pace) -> Sent {
    let n = shots.len();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..pace.connections.max(1) {
        let (next, shots, path) = (next.clone(), shots.clone(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut mine: Vec<(usize, Instant, u16)> = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut post_us = histogram();
            let mut conn: Option<Conn> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let due = match pace.rate {
                    Some(r) => {
                        let due = started + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let shot = &shots[i];
                let t0 = Instant::now();
                let status = post(&mut conn, addr, &path, shot).await;
                let _ = post_us.record(t0.elapsed().as_micros() as u64);
                match status {
                    Ok(s) => mine.push((i, due, s)),
                    Err(e) => {
                        *errors.entry(e).or_default() += 1;
                        mine.push((i, due, 0));
                    }
                }
            }
            (mine, errors, post_us)
        }));
    }
    let mut due = vec![started; n];
    let mut status = vec![0u16; n];
    let mut errors = BTreeMap::new();
    let mut post_us = histogram();
    for t in tasks {
        if let Ok((mine, errs, h)) = t.await {
            for (i, d, s) in mine {
                due[i] = d;
                status[i] = s;
            }
            for (e, c) in errs {
                *errors.entry(e).or_default() += c;
            }
            let _ = post_us.add(h);
        }
    }
    Sent {
        started,
        finished: Instant::now(),
        due,
        status,
        errors,
        post_us,
    }
}

async fn post(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    path: &str,
    shot: &Shot,
) -> Result<u16, String> {
    for attempt in 0..2 {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = Some(connect(addr).await.map_err(|e| format!("connect: {e}"))?);
        }
        let Some(c) = conn.as_mut() else { continue };
        if c.ready().await.is_err() {
            *conn = None;
            continue;
        }
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &shot.signature)
            .body(Full::new(shot.body.clone()))
            .map_err(|e| e.to_string())?;
        match c.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the body so the connection can be reused.
                let _ = resp.into_body().collect().await;
                return Ok(status);
            }
            Err(e) if attempt == 0 && e.is_canceled() => *conn = None,
            Err(e) => {
                *conn = None;
                return Err(format!("request: {e}"));
            }
        }
    }
    Err("connection closed twice".into())
}

/// What came out at the Graph API stand-in for a run.
pub struct Replies {
    /// Distinct webhooks answered.
    pub replied: usize,
    /// Webhooks accepted (200) but never answered.
    pub missing: usize,
    /// Replies beyond the first for the same webhook.
    pub duplicated: usize,
    /// Webhook due to reply received, in microseconds.
    pub latency_us: Histogram<u64>,
    /// When the last reply arrived.
    pub last: Option<Instant>,
    /// The slowest reply of each second of the run (by when its webhook was
    /// due), in microseconds: where in the run a tail comes from (a stall
    /// of a few hundred milliseconds shows as one or two bad seconds, a
    /// saturated machine as many).
    pub worst_per_second_us: Vec<u64>,
}

impl Replies {
    /// The `n` slowest seconds of the run, slowest first: (second since the
    /// first webhook was due, its slowest reply in microseconds).
    pub fn slowest_seconds(&self, n: usize) -> Vec<(usize, u64)> {
        let mut s: Vec<(usize, u64)> = self
            .worst_per_second_us
            .iter()
            .copied()
            .enumerate()
            .collect();
        s.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        s.truncate(n);
        s
    }
}

/// Matches the stand-in's requests to the webhooks of `run`.
pub fn replies(run: &str, sent: &Sent, graph: &GraphStandIn) -> Replies {
    let mut count = vec![0u32; sent.due.len()];
    let mut latency_us = histogram();
    let mut last: Option<Instant> = None;
    let first_due = sent.due.iter().min().copied();
    let mut worst_per_second_us: Vec<u64> = Vec::new();
    for r in graph.received() {
        let Some(seq) = seq_of(run, &r.in_reply_to()) else {
            continue;
        };
        let Some(c) = count.get_mut(seq) else {
            continue;
        };
        *c += 1;
        if *c == 1 {
            let us =
                r.at.saturating_duration_since(sent.due[seq])
                    .as_micros()
                    .max(1) as u64;
            let _ = latency_us.record(us);
            last = Some(last.map_or(r.at, |l| l.max(r.at)));
            if let Some(first) = first_due {
                let second = sent.due[seq].saturating_duration_since(first).as_secs() as usize;
                if worst_per_second_us.len() <= second {
                    worst_per_second_us.resize(second + 1, 0);
                }
                worst_per_second_us[second] = worst_per_second_us[second].max(us);
            }
        }
    }
    let replied = count.iter().filter(|c| **c > 0).count();
    let missing = count
        .iter()
        .zip(&sent.status)
        .filter(|(c, s)| **c == 0 && **s == 200)
        .count();
    let duplicated = count.iter().map(|c| c.saturating_sub(1) as usize).sum();
    Replies {
        replied,
        missing,
        duplicated,
        latency_us,
        last,
        worst_per_second_us,
    }
}

/// Waits until every accepted webhook of `run` has a reply, or `timeout`.
pub async fn wait_for_replies(run: &str, sent: &Sent, graph: &GraphStandIn, timeout: Duration) {
    let want = sent.accepted();
    let deadline = Instant::now() + timeout;
    // Only the replies received since the last look are copied and parsed:
    // copying all of them every 50 ms held the stand-in's lock long enough,
    // at 50,000 replies, to stall its answers past the sender's time-out.
    // Distinct messages answered: a repeated reply must not end the wait
    // while another message is still unanswered.
    let mut answered = vec![false; sent.due.len()];
    let (mut cursor, mut got) = (0, 0);
    while Instant::now() < deadline {
        let new = graph.received_from(cursor);
        cursor += new.len();
        for r in &new {
            if let Some(seen) = seq_of(run, &r.in_reply_to()).and_then(|s| answered.get_mut(s)) {
                got += usize::from(!std::mem::replace(seen, true));
            }
        }
        if got >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connections the status webhooks go out on (Meta sends them promptly,
/// from many connections; one connection fell tens of seconds behind the
/// replies at 2,000/s).
const STATUS_CONNECTIONS: usize = 16;

/// Sends `per_reply` status webhooks (sent, delivered, read) for every
/// reply the stand-in accepts, echoing the reply's callback data, until
/// `stop`; returns how many were sent and how many were not accepted. A
/// reply's statuses go out in order, on one connection.
pub async fn follow_with_statuses(
    addr: SocketAddr,
    graph: Arc<GraphStandIn>,
    tenants: Arc<Vec<LoadTenant>>,
    per_reply: usize,
    stop: tokio_util::sync::CancellationToken,
) -> (u64, u64) {
    let (lanes, posters): (Vec<_>, Vec<_>) = (0..STATUS_CONNECTIONS)
        .map(|_| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Shot>();
            let poster = tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                let (mut sent, mut refused) = (0u64, 0u64);
                while let Some(shot) = rx.recv().await {
                    sent += 1;
                    if post(&mut conn, addr, "/webhook", &shot).await != Ok(200) {
                        refused += 1;
                    }
                }
                (sent, refused)
            });
            (tx, poster)
        })
        .unzip();
    let by_pnid: std::collections::HashMap<&str, &LoadTenant> = tenants
        .iter()
        .map(|t| (t.phone_number_id.as_str(), t))
        .collect();
    let mut cursor = 0usize;
    loop {
        let batch = graph.received_from(cursor);
        for (k, r) in batch.iter().enumerate() {
            let Some(t) = by_pnid.get(r.phone_number_id.as_str()) else {
                continue;
            };
            let lane = &lanes[(cursor + k) % STATUS_CONNECTIONS];
            for status in ["sent", "delivered", "read"].iter().take(per_reply) {
                let body = crate::webhooks::with_callback(
                    &crate::webhooks::status_webhook(
                        &t.phone_number_id,
                        &r.wamid,
                        status,
                        1_700_000_000,
                        None,
                    ),
                    r.body["biz_opaque_callback_data"]
                        .as_str()
                        .unwrap_or_default(),
                );
                let _ = lane.send(Shot::new(&t.app_secret, body));
            }
        }
        cursor += batch.len();
        if batch.is_empty() {
            if stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(lanes);
    let (mut sent, mut refused) = (0u64, 0u64);
    for p in posters {
        if let Ok((s, r)) = p.await {
            sent += s;
            refused += r;
        }
    }
    (sent, refused)
}

/// Percentiles of a microsecond histogram, in milliseconds.
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            count: h.len(),
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n={})",
            self.p50, self.p99, self.p999, self.max, self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_seconds_come_first_and_ties_keep_run_order() {
        let r = Replies {
            replied: 0,
            missing: 0,
            duplicated: 0,
            latency_us: histogram(),
            last: None,
            worst_per_second_us: vec![900, 40_000, 0, 40_000, 587_000, 1_200],
        };
        assert_eq!(
            r.slowest_seconds(3),
            vec![(4, 587_000), (1, 40_000), (3, 40_000)]
        );
        assert_eq!(r.slowest_seconds(10).len(), 6);
        let empty = Replies {
            worst_per_second_us: Vec::new(),
            ..r
        };
        assert!(empty.slowest_seconds(3).is_empty());
    }
}
