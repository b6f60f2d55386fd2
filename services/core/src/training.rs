//! Training mode's store (`alphadome.training_candidates`): questions the
//! bot could not answer with confidence, grouped by meaning, and the
//! answers a tenant teaches. The responder records candidates and runs the
//! WhatsApp teach flow; the API and the CLI list and teach them. Every
//! function runs in the caller's transaction, acting for `tenant`.
//!
//! Vectors are L2-normalised `f32` embeddings stored as little-endian
//! bytes ([`encode_vector`]); two phrasings belong to one candidate when
//! their cosine reaches the caller's threshold, or, without vectors, when
//! their folded text is the same.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Phrasings kept per candidate.
pub const EXAMPLES_KEPT: usize = 5;
/// Open candidates compared with a new question (the most recent).
const COMPARED: i64 = 500;

/// A vector as stored.
pub fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A stored vector (`None` when its length is not whole `f32`s).
pub fn decode_vector(b: &[u8]) -> Option<Vec<f32>> {
    if b.len() % 4 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// The cosine of two normalised vectors (0 when their lengths differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Lower case, letters and digits only, single spaces: how two phrasings
/// are compared without vectors.
pub fn fold(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A candidate as people see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Candidate {
    pub id: Uuid,
    /// The first phrasing.
    pub question: String,
    /// A few phrasings, newest last.
    pub examples: Vec<String>,
    pub ask_count: i32,
    pub first_asked_at: DateTime<Utc>,
    pub last_asked_at: DateTime<Utc>,
    /// `open`, `taught` or `dismissed`.
    pub status: String,
    /// The FAQ entry its answer became.
    pub training_data_id: Option<Uuid>,
    pub taught_by: Option<String>,
    pub taught_at: Option<DateTime<Utc>>,
    /// An answer given on WhatsApp that waits for the contact's "YES".
    pub proposed_answer: Option<String>,
}

const CANDIDATE_COLUMNS: &str = "id, question, examples, ask_count, first_asked_at, \
    last_asked_at, status, training_data_id, taught_by, taught_at, proposed_answer";

/// What recording a question did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new candidate.
    New(Uuid),
    /// Folded into an open candidate of the same meaning.
    Joined(Uuid),
    /// This message was recorded before (a redelivery): nothing changed.
    /// `created`: it was the message that started the candidate.
    Again { id: Uuid, created: bool },
}

impl Recorded {
    /// The candidate's id.
    pub fn id(self) -> Uuid {
        match self {
            Recorded::New(id) | Recorded::Joined(id) | Recorded::Again { id, .. } => id,
        }
    }
}

/// Records that message `wamid` asked `text`, which the bot could not
/// answer: into the open candidate nearest in meaning (cosine at least
/// `same_meaning`) or a new one. Counts each message once. Holds a
/// per-tenant lock until the caller's transaction ends.
pub async fn record_ask(
    conn: &mut PgConnection,
    tenant: Uuid,
    wamid: &str,
    text: &str,
    vector: Option<&[f32]>,
    same_meaning: f32,
) -> Result<Recorded, sqlx::Error> {
    let text: String = text.trim().chars().take(1000).collect();
    // One question of a tenant at a time, so two at once of the same
    // meaning make one candidate.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('alphadome.training:' || $1::text, 0))",
    )
    .bind(tenant)
    .execute(&mut *conn)
    .await?;
    if let Some((id, created)) = sqlx::query_as::<_, (Uuid, bool)>(
        "SELECT a.candidate_id, c.first_asked_at = a.asked_at FROM alphadome.training_candidate_asks a \
         JOIN alphadome.training_candidates c ON c.id = a.candidate_id \
         WHERE a.bot_tenant_id = $1 AND a.wamid = $2",
    )
    .bind(tenant)
    .bind(wamid)
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok(Recorded::Again { id, created });
    }
    let open: Vec<(Uuid, String, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, question, vector FROM alphadome.training_candidates \
         WHERE bot_tenant_id = $1 AND status = 'open' ORDER BY last_asked_at DESC LIMIT $2",
    )
    .bind(tenant)
    .bind(COMPARED)
    .fetch_all(&mut *conn)
    .await?;
    let folded = fold(&text);
    let nearest = open
        .iter()
        .filter_map(|(id, question, stored)| {
            let by_meaning = match (vector, stored.as_deref().and_then(decode_vector)) {
                (Some(v), Some(s)) => Some(cosine(v, &s)),
                _ => None,
            };
            let same_words = fold(question) == folded;
            match by_meaning {
                _ if same_words => Some((*id, 2.0)),
                Some(c) if c >= same_meaning => Some((*id, c)),
                _ => None,
            }
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _)| id);
    let recorded = match nearest {
        Some(id) => {
            sqlx::query(
                "UPDATE alphadome.training_candidates SET ask_count = ask_count + 1, last_asked_at = now(), \
                   examples = CASE WHEN $3 = ANY(examples) THEN examples \
                                   ELSE (examples || $3)[greatest(1, cardinality(examples) + 2 - $4):] END \
                 WHERE bot_tenant_id = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(&text)
            .bind(EXAMPLES_KEPT as i32)
            .execute(&mut *conn)
            .await?;
            Recorded::Joined(id)
        }
        None => Recorded::New(
            sqlx::query_scalar(
                "INSERT INTO alphadome.training_candidates (bot_tenant_id, question, examples, vector) \
                 VALUES ($1, $2, ARRAY[$2], $3) RETURNING id",
            )
            .bind(tenant)
            .bind(&text)
            .bind(vector.map(encode_vector))
            .fetch_one(&mut *conn)
            .await?,
        ),
    };
    sqlx::query(
        "INSERT INTO alphadome.training_candidate_asks (bot_tenant_id, wamid, candidate_id) VALUES ($1, $2, $3)",
    )
    .bind(tenant)
    .bind(wamid)
    .bind(recorded.id())
    .execute(&mut *conn)
    .await?;
    Ok(recorded)
}

/// The tenant's candidates with `status` (every status when `None`), most
/// asked first, at most `limit`.
pub async fn candidates(
    conn: &mut PgConnection,
    tenant: Uuid,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CANDIDATE_COLUMNS} FROM alphadome.training_candidates \
         WHERE bot_tenant_id = $1 AND ($2::text IS NULL OR status = $2) \
         ORDER BY ask_count DESC, last_asked_at DESC, id LIMIT $3"
    ))
    .bind(tenant)
    .bind(status)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One of the tenant's candidates.
pub async fn candidate(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<Candidate>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CANDIDATE_COLUMNS} FROM alphadome.training_candidates WHERE bot_tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Why a candidate could not be taught.
#[derive(Debug, thiserror::Error)]
pub enum TeachError {
    #[error("no such training candidate")]
    NotFound,
    #[error("the candidate was already {0}")]
    NotOpen(String),
    #[error("the answer is empty")]
    EmptyAnswer,
    #[error("the answer is longer than 4096 characters")]
    AnswerTooLong,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Teaches candidate `id` the answer `answer`: the candidate's question
/// becomes an active FAQ entry with that answer (the tenant's entry with
/// the same question is given the answer and switched on), and the
/// candidate is marked taught by `by`. Returns the entry's id.
pub async fn teach(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    answer: &str,
    by: &str,
) -> Result<Uuid, TeachError> {
    let answer = answer.trim();
    if answer.is_empty() {
        return Err(TeachError::EmptyAnswer);
    }
    if answer.chars().count() > 4096 {
        return Err(TeachError::AnswerTooLong);
    }
    let (question, status): (String, String) = sqlx::query_as(
        "SELECT question, status FROM alphadome.training_candidates \
         WHERE bot_tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(TeachError::NotFound)?;
    if status != "open" {
        return Err(TeachError::NotOpen(status));
    }
    let entry: Uuid = sqlx::query_scalar(
        "INSERT INTO alphadome.bot_training_data AS d (bot_tenant_id, data_type, question, answer, is_active) \
         VALUES ($1, 'faq', $2, $3, true) \
         ON CONFLICT (bot_tenant_id, data_type, question) DO UPDATE SET answer = EXCLUDED.answer, is_active = true \
         RETURNING d.id",
    )
    .bind(tenant)
    .bind(&question)
    .bind(answer)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE alphadome.training_candidates SET status = 'taught', training_data_id = $3, \
           taught_by = $4, taught_at = now(), proposed_answer = NULL \
         WHERE bot_tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(entry)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    Ok(entry)
}

/// Dismisses open candidate `id` (nothing to teach); whether it was open.
pub async fn dismiss(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE alphadome.training_candidates SET status = 'dismissed', proposed_answer = NULL \
         WHERE bot_tenant_id = $1 AND id = $2 AND status = 'open'",
    )
    .bind(tenant)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Marks candidate `id` as offered to the point of contact on WhatsApp;
/// whether this call did it (it had not been offered).
pub async fn mark_offered(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE alphadome.training_candidates SET offered_at = now() \
         WHERE bot_tenant_id = $1 AND id = $2 AND offered_at IS NULL AND status = 'open'",
    )
    .bind(tenant)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// The open candidate most recently offered to the point of contact: the
/// one their next message answers.
pub async fn offered(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Option<Candidate>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CANDIDATE_COLUMNS} FROM alphadome.training_candidates \
         WHERE bot_tenant_id = $1 AND status = 'open' AND offered_at IS NOT NULL \
         ORDER BY offered_at DESC LIMIT 1"
    ))
    .bind(tenant)
    .fetch_optional(conn)
    .await
}

/// Keeps `answer` as the contact's proposed answer to candidate `id`,
/// awaiting their confirmation (an empty one clears it).
pub async fn propose(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    answer: &str,
) -> Result<(), sqlx::Error> {
    let answer: String = answer.trim().chars().take(4096).collect();
    sqlx::query(
        "UPDATE alphadome.training_candidates SET proposed_answer = NULLIF($3, '') \
         WHERE bot_tenant_id = $1 AND id = $2 AND status = 'open'",
    )
    .bind(tenant)
    .bind(id)
    .bind(answer)
    .execute(conn)
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_bad_lengths_are_refused() {
        let v = vec![0.25f32, -1.0, 3.5];
        assert_eq!(decode_vector(&encode_vector(&v)), Some(v));
        assert_eq!(decode_vector(&[1, 2, 3]), None);
    }

    #[test]
    fn folding_ignores_case_and_punctuation() {
        assert_eq!(fold("Do you sell  DRUMS?!"), "do you sell drums");
        assert_eq!(cosine(&[1.0, 0.0], &[1.0]), 0.0);
    }
}
