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
use std::sync::{mpsc, Arc};

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
pub const MAX_BATCH: usize = 64;
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
    #[error("the embedding model stopped")]
    Stopped,
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// The embedding model, run on its own thread.
pub struct Model {
    jobs: mpsc::SyncSender<Job>,
    /// Texts embedded, and forward passes run.
    pub texts: Arc<AtomicU64>,
    pub batches: Arc<AtomicU64>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Model(all-MiniLM-L6-v2)")
    }
}

impl Model {
    /// Loads the model in `dir` and starts its thread.
    pub fn start(dir: &Path) -> Result<Arc<Self>, EmbedError> {
        let embedder = Embedder::load(dir)?;
        let (jobs, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let texts = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let (t, b) = (texts.clone(), batches.clone());
        std::thread::Builder::new()
            .name("embedding-model".into())
            .spawn(move || run(embedder, rx, t, b))
            .map_err(|source| EmbedError::Read {
                path: "a thread for the model".into(),
                source,
            })?;
        Ok(Arc::new(Self {
            jobs,
            texts,
            batches,
        }))
    }

    /// The embeddings of `texts`, in order, batched with whatever else is
    /// waiting.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, SemanticError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .try_send(Job { texts, reply })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => SemanticError::Busy,
                mpsc::TrySendError::Disconnected(_) => SemanticError::Stopped,
            })?;
        rx.await
            .map_err(|_| SemanticError::Stopped)?
            .map_err(SemanticError::Model)
    }

    /// The embedding of one message.
    pub async fn query(&self, text: &str) -> Result<Vec<f32>, SemanticError> {
        let text: String = text.chars().take(1000).collect();
        self.embed(vec![text])
            .await?
            .pop()
            .ok_or_else(|| SemanticError::Model("no vector returned".into()))
    }
}

/// The model's thread: takes every job waiting (up to [`MAX_BATCH`] texts)
/// and embeds them in one pass, until every sender is gone.
fn run(
    embedder: Embedder,
    rx: mpsc::Receiver<Job>,
    texts: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut n = jobs[0].texts.len();
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.texts.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let all: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let mut out: Result<Vec<Vec<f32>>, String> = Ok(Vec::with_capacity(all.len()));
        for chunk in all.chunks(MAX_BATCH) {
            batches.fetch_add(1, Ordering::Relaxed);
            match embedder.embed(chunk) {
                Ok(v) => {
                    if let Ok(o) = out.as_mut() {
                        o.extend(v)
                    }
                }
                Err(e) => {
                    out = Err(e.to_string());
                    break;
                }
            }
        }
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

/// A tenant's entry vectors, in the order of its FAQ index.
#[derive(Debug, Default)]
pub struct SemanticIndex {
    dim: usize,
    /// Each entry's question, row after row.
    questions: Vec<f32>,
    /// Each entry's question with its answer.
    answers: Vec<f32>,
}

impl SemanticIndex {
    /// The index of `questions` and `answers` (one vector per entry each).
    pub fn new(questions: &[Vec<f32>], answers: &[Vec<f32>]) -> Self {
        let dim = questions.first().map(Vec::len).unwrap_or(0);
        Self {
            dim,
            questions: questions.concat(),
            answers: answers.concat(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.questions.len().checked_div(self.dim).unwrap_or(0)
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
        let dot = |rows: &[f32], i: usize| -> f32 {
            rows[i * self.dim..(i + 1) * self.dim]
                .iter()
                .zip(q)
                .map(|(a, b)| a * b)
                .sum()
        };
        (0..self.len())
            .map(|i| dot(&self.questions, i).max(cal.answer_weight * dot(&self.answers, i)))
            .collect()
    }
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
/// the rest embedded and stored; vectors of texts the tenant no longer has
/// are removed.
pub async fn vectors_of(
    db: &PgPool,
    model: &Model,
    tenant: Uuid,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, VectorsError> {
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
    let mut fresh: Vec<(Vec<u8>, Vec<f32>)> = Vec::new();
    for chunk in missing.chunks(MAX_BATCH) {
        let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
        let vectors = model.embed(batch).await?;
        for (&i, v) in chunk.iter().zip(vectors) {
            fresh.push((hashes[i].clone(), v));
        }
    }
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
    Ok(hashes
        .iter()
        .map(|h| known.get(h).cloned().unwrap_or_default())
        .collect())
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
        assert_eq!(combine(&[1.0], &[0.0, 1.0], &CAL), vec![0.5, 0.5]);
    }
}
