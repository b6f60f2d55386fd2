//! Matching by meaning: the local embedding model on the responder's hot
//! path, and how its score joins the lexical one.
//!
//! - [`Model`] runs the model on a thread of its own. Requests from every
//!   message in flight queue there and are embedded together, up to
//!   [`MAX_BATCH`] texts at once, so a burst of messages costs one batched
//!   forward pass instead of one each.
//! - [`SemanticIndex`] holds a tenant's entry vectors: for each answerable
//!   row, its question and its question with its answer. They are computed
//!   when the tenant's training data changes (the context is rebuilt) and
//!   kept in `alphadome.training_embeddings`, so a restart or an unchanged
//!   entry costs no model run.
//! - [`Calibration`] combines the scores. An entry's semantic score is the
//!   better of its question's cosine and its question-with-answer's cosine
//!   (discounted); the combined score adds the lexical score with a weight;
//!   the best entry answers when its combined score reaches the threshold
//!   and leads the next entry by the margin. The constants are calibrated
//!   on `bench/data/faq-eval.yaml` (`alphadome-bench faq-eval`).
//! - A message the lexical matcher answers with a score of at least
//!   [`LEXICAL_SURE`] never reaches the model.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use alphadome_core::db::scoped;
use alphadome_core::training::{decode_vector, encode_vector};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::embed::{EmbedError, Embedder};

/// The model's name, as stored beside its vectors.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Texts embedded in one forward pass.
pub const MAX_BATCH: usize = 8;
/// A lexical score at which the answer is taken without the model.
pub const LEXICAL_SURE: f32 = 0.8;
/// Two unanswered questions are one training candidate from this cosine.
pub const SAME_MEANING: f32 = 0.75;
/// Requests waiting for the model before more are refused (and those
/// messages matched by their words only).
const QUEUE: usize = 4096;

/// How the lexical and semantic scores make one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Weight of the lexical score in the combined score.
    pub lexical_weight: f32,
    /// Discount of an entry's question-with-answer cosine against its
    /// question's.
    pub answer_weight: f32,
    /// Combined score an answer needs.
    pub threshold: f32,
    /// Lead the best entry needs over the next one.
    pub margin: f32,
}

/// The calibration in use (see `docs/benchmarks.md`, "Understanding
/// customers", for how it was chosen and what it gives).
pub const CALIBRATION: Calibration = Calibration {
    lexical_weight: 0.0,
    answer_weight: 1.0,
    threshold: 0.5,
    margin: 0.05,
};

/// Why a text could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    #[error("the embedding model failed: {0}")]
    Model(String),
    #[error("the embedding model is overloaded")]
    Busy,
    #[error("the embedding model did not answer within {0:?}")]
    Late(std::time::Duration),
    #[error("the embedding model stopped")]
    Stopped,
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Messages whose vectors are remembered: customers ask the same things
/// in the same words ("price?", "hi", "location"), and a remembered vector
/// costs a lookup instead of a forward pass.
const REMEMBERED: usize = 20_000;
/// Texts of entry vectors computed in one pass: small, so a message never
/// waits long behind a tenant's entries.
pub const BULK_BATCH: usize = 16;

/// Recent message vectors by text, the oldest forgotten first.
#[derive(Default)]
struct Remembered {
    by_text: HashMap<String, Arc<[f32]>>,
    order: std::collections::VecDeque<String>,
}

/// The model's two waiting lines: messages first, entries after.
#[derive(Default)]
struct Lanes {
    urgent: std::collections::VecDeque<Job>,
    bulk: std::collections::VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Queue {
    lanes: std::sync::Mutex<Lanes>,
    ready: std::sync::Condvar,
}

/// The embedding model, run on its own thread.
pub struct Model {
    queue: Arc<Queue>,
    remembered: std::sync::Mutex<Remembered>,
    /// Message vectors found among the remembered ones.
    pub remembered_hits: AtomicU64,
    /// How long a message waits for its vector before it is matched by its
    /// words alone (`ALPHADOME_EMBEDDING_BUDGET_MS`).
    budget: std::time::Duration,
    /// Messages whose vector did not come within the budget.
    pub late: AtomicU64,
    /// Texts embedded, and forward passes run.
    pub texts: Arc<AtomicU64>,
    pub batches: Arc<AtomicU64>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Model(all-MiniLM-L6-v2)")
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        if let Ok(mut l) = self.queue.lanes.lock() {
            l.closed = true;
        }
        self.queue.ready.notify_all();
    }
}

impl Model {
    /// Loads the model in `dir` and starts its thread; a message waits at
    /// most `budget` for its vector.
    pub fn start(dir: &Path, budget: std::time::Duration) -> Result<Arc<Self>, EmbedError> {
        let embedder = Embedder::load(dir)?;
        let queue = Arc::new(Queue::default());
        let texts = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let (q, t, b) = (queue.clone(), texts.clone(), batches.clone());
        std::thread::Builder::new()
            .name("embedding-model".into())
            .spawn(move || run(embedder, q, t, b))
            .map_err(|source| EmbedError::Read {
                path: "a thread for the model".into(),
                source,
            })?;
        Ok(Arc::new(Self {
            queue,
            remembered: Default::default(),
            remembered_hits: AtomicU64::new(0),
            budget,
            late: AtomicU64::new(0),
            texts,
            batches,
        }))
    }

    async fn submit(
        &self,
        texts: Vec<String>,
        urgent: bool,
    ) -> Result<Vec<Vec<f32>>, SemanticError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        {
            let mut l = self
                .queue
                .lanes
                .lock()
                .map_err(|_| SemanticError::Stopped)?;
            if l.closed {
                return Err(SemanticError::Stopped);
            }
            let lane = if urgent { &mut l.urgent } else { &mut l.bulk };
            if lane.len() >= QUEUE {
                return Err(SemanticError::Busy);
            }
            lane.push_back(Job { texts, reply });
        }
        self.queue.ready.notify_one();
        rx.await
            .map_err(|_| SemanticError::Stopped)?
            .map_err(SemanticError::Model)
    }

    /// The embeddings of `texts` (a tenant's entries), in order: computed
    /// [`BULK_BATCH`] at a time, after the messages waiting.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, SemanticError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BULK_BATCH) {
            out.extend(self.submit(chunk.to_vec(), false).await?);
        }
        Ok(out)
    }

    /// The embedding of one message, batched with the other messages
    /// waiting (remembered for the next message with the same text);
    /// [`SemanticError::Late`] past the budget (the text is then dropped
    /// from the model's line).
    pub async fn query(&self, text: &str) -> Result<Arc<[f32]>, SemanticError> {
        let text: String = text.trim().chars().take(1000).collect();
        if let Some(v) = self
            .remembered
            .lock()
            .ok()
            .and_then(|r| r.by_text.get(&text).cloned())
        {
            self.remembered_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        let v: Arc<[f32]> =
            tokio::time::timeout(self.budget, self.submit(vec![text.clone()], true))
                .await
                .map_err(|_| {
                    self.late.fetch_add(1, Ordering::Relaxed);
                    SemanticError::Late(self.budget)
                })??
                .pop()
                .ok_or_else(|| SemanticError::Model("no vector returned".into()))?
                .into();
        if let Ok(mut r) = self.remembered.lock() {
            if r.by_text.insert(text.clone(), v.clone()).is_none() {
                r.order.push_back(text);
                while r.order.len() > REMEMBERED {
                    if let Some(old) = r.order.pop_front() {
                        r.by_text.remove(&old);
                    }
                }
            }
        }
        Ok(v)
    }
}

/// The model's thread: embeds every message waiting (up to [`MAX_BATCH`]
/// texts) in one pass; when no message waits, one job of entries; until
/// the model is dropped.
fn run(embedder: Embedder, queue: Arc<Queue>, texts: Arc<AtomicU64>, batches: Arc<AtomicU64>) {
    loop {
        let jobs: Vec<Job> = {
            let Ok(mut l) = queue.lanes.lock() else {
                return;
            };
            while l.urgent.is_empty() && l.bulk.is_empty() && !l.closed {
                l = match queue.ready.wait(l) {
                    Ok(l) => l,
                    Err(_) => return,
                };
            }
            if l.closed {
                return;
            }
            // Messages whose sender stopped waiting are not embedded.
            l.urgent.retain(|j| !j.reply.is_closed());
            let mut jobs = Vec::new();
            let mut n = 0;
            while let Some(j) = l.urgent.front() {
                if n > 0 && n + j.texts.len() > MAX_BATCH {
                    break;
                }
                n += j.texts.len();
                jobs.extend(l.urgent.pop_front());
            }
            if jobs.is_empty() {
                jobs.extend(l.bulk.pop_front());
            }
            jobs
        };
        let all: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        batches.fetch_add(1, Ordering::Relaxed);
        let out = embedder.embed(&all).map_err(|e| e.to_string());
        texts.fetch_add(all.len() as u64, Ordering::Relaxed);
        let mut vectors = out.map(|v| v.into_iter());
        for job in jobs {
            let k = job.texts.len();
            let mine = match vectors.as_mut() {
                Ok(it) => Ok(it.by_ref().take(k).collect()),
                Err(e) => Err(e.clone()),
            };
            let _ = job.reply.send(mine);
        }
    }
}

/// Vectors kept as bytes: each component scaled to -127..=127 by the
/// vector's largest, with that scale kept beside it. A quarter of the
/// memory of `f32` (a thousand tenants with a hundred entries each hold
/// 77 MB instead of 307 MB); cosines move by well under 0.01.
#[derive(Debug, Default)]
struct Quantized {
    dim: usize,
    rows: Vec<i8>,
    scales: Vec<f32>,
}

impl Quantized {
    fn new(vectors: &[Vec<f32>], dim: usize) -> Self {
        let mut rows = Vec::with_capacity(vectors.len() * dim);
        let mut scales = Vec::with_capacity(vectors.len());
        for v in vectors {
            let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            rows.extend((0..dim).map(|k| {
                let x = v.get(k).copied().unwrap_or(0.0) / scale;
                x.round().clamp(-127.0, 127.0) as i8
            }));
            scales.push(scale);
        }
        Self { dim, rows, scales }
    }

    fn dot(&self, i: usize, q: &[f32]) -> f32 {
        let row = &self.rows[i * self.dim..(i + 1) * self.dim];
        row.iter().zip(q).map(|(&a, b)| a as f32 * b).sum::<f32>() * self.scales[i]
    }
}

/// A tenant's entry vectors, in the order of its FAQ index.
#[derive(Debug, Default)]
pub struct SemanticIndex {
    dim: usize,
    /// Each entry's question.
    questions: Quantized,
    /// Each entry's question with its answer.
    answers: Quantized,
}

impl SemanticIndex {
    /// The index of `questions` and `answers` (one vector per entry each).
    pub fn new(questions: &[Vec<f32>], answers: &[Vec<f32>]) -> Self {
        let dim = questions.first().map(Vec::len).unwrap_or(0);
        Self {
            dim,
            questions: Quantized::new(questions, dim),
            answers: Quantized::new(answers, dim),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.questions.scales.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each entry's semantic score for query vector `q`.
    pub fn scores(&self, q: &[f32], cal: &Calibration) -> Vec<f32> {
        if q.len() != self.dim || self.dim == 0 {
            return vec![0.0; self.len()];
        }
        (0..self.len())
            .map(|i| {
                let a = if i < self.answers.scales.len() {
                    self.answers.dot(i, q)
                } else {
                    0.0
                };
                self.questions.dot(i, q).max(cal.answer_weight * a)
            })
            .collect()
    }
}

/// The mean of `vectors` (a tenant's entries' vectors): what they all
/// share, which says nothing about which entry a message means.
pub fn centre_of(vectors: &[Vec<f32>]) -> Vec<f32> {
    let mut mean = vec![0.0f32; vectors.first().map_or(0, Vec::len)];
    for v in vectors {
        for (m, x) in mean.iter_mut().zip(v) {
            *m += x / vectors.len() as f32;
        }
    }
    mean
}

/// `v` less `centre`, normalised.
pub fn centred(v: &[f32], centre: &[f32]) -> Vec<f32> {
    let mut out: Vec<f32> = v
        .iter()
        .zip(centre.iter().chain(std::iter::repeat(&0.0)))
        .map(|(x, c)| x - c)
        .collect();
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        out.iter_mut().for_each(|x| *x /= norm);
    }
    out
}

/// Combined scores of every entry: semantic and lexical, weighted.
pub fn combine(lexical: &[f32], semantic: &[f32], cal: &Calibration) -> Vec<f32> {
    semantic
        .iter()
        .zip(lexical.iter().chain(std::iter::repeat(&0.0)))
        .map(|(s, l)| (1.0 - cal.lexical_weight) * s + cal.lexical_weight * l)
        .collect()
}

/// The entry that answers, from the combined scores: the best when it
/// reaches the threshold and leads the next by the margin.
pub fn choose(combined: &[f32], cal: &Calibration) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    let mut second = f32::NEG_INFINITY;
    for (i, &s) in combined.iter().enumerate() {
        match best {
            Some((_, b)) if s <= b => second = second.max(s),
            _ => {
                if let Some((_, b)) = best {
                    second = second.max(b);
                }
                best = Some((i, s));
            }
        }
    }
    best.filter(|&(_, s)| s >= cal.threshold && s - second >= cal.margin)
}

/// The texts embedded for one entry: its question, and its question with
/// its answer.
pub fn entry_texts(question: &str, answer: &str) -> [String; 2] {
    [question.to_owned(), format!("{question}\n{answer}")]
}

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// The vectors of `texts` for tenant `tenant`: those stored are read,
/// the rest embedded and stored, when at most `max_inline` are missing
/// (`Err(missing)` otherwise, nothing embedded); vectors of texts the
/// tenant no longer has are removed.
pub async fn vectors_of(
    db: &PgPool,
    model: &Model,
    tenant: Uuid,
    texts: &[String],
    max_inline: usize,
) -> Result<Result<Vec<Vec<f32>>, usize>, VectorsError> {
    let hashes: Vec<Vec<u8>> = texts.iter().map(|t| sha256(t)).collect();
    let mut tx = scoped(db, tenant).await?;
    let stored: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT text_sha256, vector FROM alphadome.training_embeddings WHERE bot_tenant_id = $1 AND model = $2",
    )
    .bind(tenant)
    .bind(MODEL_NAME)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut known: HashMap<Vec<u8>, Vec<f32>> = stored
        .into_iter()
        .filter_map(|(h, v)| decode_vector(&v).map(|v| (h, v)))
        .collect();
    let stale: Vec<Vec<u8>> = known
        .keys()
        .filter(|h| !hashes.contains(h))
        .cloned()
        .collect();
    let missing: Vec<usize> = (0..texts.len())
        .filter(|&i| !known.contains_key(&hashes[i]))
        .collect();
    if missing.len() > max_inline {
        return Ok(Err(missing.len()));
    }
    let batch: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
    let vectors = model.embed(batch).await?;
    let fresh: Vec<(Vec<u8>, Vec<f32>)> = missing
        .iter()
        .zip(vectors)
        .map(|(&i, v)| (hashes[i].clone(), v))
        .collect();
    if !fresh.is_empty() || !stale.is_empty() {
        let mut tx = scoped(db, tenant).await?;
        if !stale.is_empty() {
            sqlx::query(
                "DELETE FROM alphadome.training_embeddings WHERE bot_tenant_id = $1 AND model = $2 AND text_sha256 = ANY($3)",
            )
            .bind(tenant)
            .bind(MODEL_NAME)
            .bind(&stale)
            .execute(&mut *tx)
            .await?;
        }
        if !fresh.is_empty() {
            let (h, v): (Vec<Vec<u8>>, Vec<Vec<u8>>) = fresh
                .iter()
                .map(|(h, v)| (h.clone(), encode_vector(v)))
                .unzip();
            sqlx::query(
                "INSERT INTO alphadome.training_embeddings (bot_tenant_id, model, text_sha256, vector) \
                 SELECT $1, $2, h, v FROM unnest($3::bytea[], $4::bytea[]) AS u(h, v) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(MODEL_NAME)
            .bind(&h)
            .bind(&v)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    known.extend(fresh);
    Ok(Ok(hashes
        .iter()
        .map(|h| known.get(h).cloned().unwrap_or_default())
        .collect()))
}

/// Entry texts embedded while a tenant's context loads (after start-up);
/// a tenant missing more gets them in the background ([`Backfill`]) and is
/// matched by words until they are stored.
pub const INLINE_TEXTS: usize = 64;

/// Computes tenants' missing entry vectors in the background, one tenant
/// at a time each, then touches the tenant and announces the change so
/// every responder reloads it with its vectors.
pub struct Backfill {
    db: PgPool,
    bus: alphadome_core::bus::Bus,
    model: Arc<Model>,
    running: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Whether the start-up load of every tenant is over: until then
    /// nothing is computed inline, so a first start with many tenants is
    /// not held up by the model.
    started: std::sync::atomic::AtomicBool,
}

impl Backfill {
    pub fn new(db: PgPool, bus: alphadome_core::bus::Bus, model: Arc<Model>) -> Arc<Self> {
        Arc::new(Self {
            db,
            bus,
            model,
            running: Default::default(),
            started: Default::default(),
        })
    }

    /// Marks the start-up load over: from now on a few missing texts are
    /// computed while a tenant's context loads.
    pub fn started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Texts a context load may embed itself.
    pub fn inline_limit(&self) -> usize {
        if self.started.load(Ordering::Relaxed) {
            INLINE_TEXTS
        } else {
            0
        }
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Computes and stores `texts`' missing vectors for `tenant` (unless
    /// that is already under way), then touches the tenant.
    pub fn start(self: &Arc<Self>, tenant: Uuid, texts: Vec<String>) {
        let fresh = self.running.lock().is_ok_and(|mut r| r.insert(tenant));
        if !fresh {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = async {
                // (with no limit on what is embedded, the result is always the vectors)
                let _vectors = vectors_of(&me.db, &me.model, tenant, &texts, usize::MAX).await?;
                let mut tx = scoped(&me.db, tenant).await?;
                sqlx::query(
                    "UPDATE alphadome.bot_tenants SET updated_at = clock_timestamp() WHERE id = $1",
                )
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                alphadome_core::tenant::announce_change(&me.bus, tenant).await;
                Ok::<_, VectorsError>(())
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::info!(tenant_id = %tenant, texts = texts.len(), secs = started.elapsed().as_secs_f32(), "entry vectors computed")
                }
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, error = %alphadome_core::Report(&e), "entry vectors not computed; matching this tenant by words until its next change")
                }
            }
            if let Ok(mut r) = me.running.lock() {
                r.remove(&tenant);
            }
        });
    }
}

/// Why a tenant's vectors could not be had.
#[derive(Debug, thiserror::Error)]
pub enum VectorsError {
    #[error("the database")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Model(#[from] SemanticError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAL: Calibration = Calibration {
        lexical_weight: 0.5,
        answer_weight: 0.5,
        threshold: 0.5,
        margin: 0.1,
    };

    #[test]
    fn the_best_entry_answers_only_above_the_threshold_and_clear_of_the_next() {
        assert_eq!(choose(&[0.2, 0.9, 0.6], &CAL), Some((1, 0.9)));
        assert_eq!(choose(&[0.2, 0.4, 0.3], &CAL), None, "below the threshold");
        assert_eq!(
            choose(&[0.85, 0.9, 0.6], &CAL),
            None,
            "too close to the next"
        );
        assert_eq!(choose(&[0.9], &CAL), Some((0, 0.9)));
        assert_eq!(choose(&[], &CAL), None);
    }

    #[test]
    fn scores_take_the_better_of_question_and_discounted_answer() {
        let idx = SemanticIndex::new(
            &[vec![1.0, 0.0], vec![0.0, 1.0]],
            &[vec![0.0, 1.0], vec![0.0, 1.0]],
        );
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.scores(&[1.0, 0.0], &CAL), vec![1.0, 0.0]);
        assert_eq!(idx.scores(&[0.0, 1.0], &CAL), vec![0.5, 1.0]);
        assert_eq!(idx.scores(&[1.0], &CAL), vec![0.0, 0.0], "wrong dimension");
        // Kept as bytes, a vector's cosines move by little.
        let v: Vec<f32> = (0..384)
            .map(|k| ((k * 37 % 101) as f32 - 50.0) / 400.0)
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let v: Vec<f32> = v.iter().map(|x| x / norm).collect();
        let w: Vec<f32> = v.iter().rev().copied().collect();
        let exact: f32 = v.iter().zip(&w).map(|(a, b)| a * b).sum();
        let idx = SemanticIndex::new(std::slice::from_ref(&v), std::slice::from_ref(&v));
        assert!((idx.scores(&v, &CAL)[0] - 1.0).abs() < 0.01);
        assert!((idx.scores(&w, &CAL)[0] - exact).abs() < 0.01);
        assert_eq!(combine(&[1.0], &[0.0, 1.0], &CAL), vec![0.5, 0.5]);
    }
}
