//! What the responder keeps in memory per tenant: its configuration, the
//! FAQ index of its answerable training rows, and the example
//! conversations given to its LLM. Built from a [`TenantSnapshot`] by a
//! plain function, so the index is tested without a database.

use alphadome_core::tenant::messaging::{
    template_for, templates_of, BusinessHours, WhatsAppTemplate,
};
use alphadome_core::tenant::{
    self, ControlSettings, Template, Tenant, TenantSnapshot, TrainingRow,
};
use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use crate::matcher::{self, FaqEntry, FaqIndex, Match};
use crate::semantic::{self, Backfill, SemanticIndex, CALIBRATION};

/// Example conversations given to the LLM with each prompt.
pub const PROMPT_EXAMPLES: usize = 3;

/// Everything the responder needs to answer for one tenant.
#[derive(Debug)]
pub struct TenantContext {
    pub tenant: Tenant,
    pub settings: ControlSettings,
    pub templates: Vec<Template>,
    /// The first [`PROMPT_EXAMPLES`] active `example` rows, by priority
    /// (FAQ and canned replies live in `index` only: at 1,000 tenants a
    /// second copy of every row would be a quarter of the process's memory).
    pub examples: Vec<TrainingRow>,
    pub index: FaqIndex,
    /// The entries' vectors, in the index's order, when the model runs.
    pub semantic: Option<SemanticIndex>,
    /// Opening hours (none: always open).
    pub hours: Option<BusinessHours>,
    /// Approved WhatsApp templates, for proactive messages outside the
    /// customer's window.
    pub whatsapp_templates: Vec<WhatsAppTemplate>,
}

/// How a message was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// By its words (the model was not needed, or is not loaded).
    Lexical,
    /// By its words and meaning combined.
    Semantic,
}

impl Tier {
    /// Its name in the log's metadata (`match_tier`).
    pub fn name(self) -> &'static str {
        match self {
            Tier::Lexical => "lexical",
            Tier::Semantic => "semantic",
        }
    }
}

impl TenantContext {
    /// The context of a tenant's configuration: FAQ and canned replies
    /// with a non-empty answer go into the index, the first examples are
    /// kept for prompts.
    pub fn from_snapshot(s: TenantSnapshot) -> Self {
        let mut examples = Vec::new();
        let mut answerable = Vec::new();
        for r in s.training {
            let faq_like = r.data_type == "faq" || r.data_type == "canned_reply";
            if r.data_type == "example" && examples.len() < PROMPT_EXAMPLES {
                examples.push(r);
            } else if faq_like {
                if let (Some(question), Some(answer)) = (r.question, r.answer) {
                    if !answer.trim().is_empty() {
                        answerable.push(FaqEntry {
                            id: r.id,
                            question,
                            answer,
                            category: r.category,
                            priority: r.priority,
                            confidence: r.confidence_score,
                        });
                    }
                }
            }
        }
        Self {
            hours: BusinessHours::of(s.settings.business_hours.as_ref()),
            whatsapp_templates: templates_of(&s.tenant.whatsapp_templates),
            tenant: s.tenant,
            settings: s.settings,
            templates: s.templates,
            examples,
            index: FaqIndex::build(answerable),
            semantic: None,
        }
    }

    /// Whether the business is open at `at` (always, without hours).
    pub fn is_open(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        self.hours.as_ref().is_none_or(|h| h.is_open(at))
    }

    /// The tenant's template for proactive messages of `purpose`, filled
    /// from `values`.
    pub fn template_for(
        &self,
        purpose: &str,
        values: &[(&str, &str)],
    ) -> Option<alphadome_core::events::v1::TemplateMessage> {
        let business = [("business_name", self.tenant.client_name.as_str())];
        let all: Vec<(&str, &str)> = values.iter().chain(business.iter()).copied().collect();
        template_for(&self.whatsapp_templates, purpose, &all)
    }

    /// Whether `text` needs the model: it runs for this tenant and the
    /// lexical matcher is not sure of an answer.
    pub fn wants_meaning(&self, text: &str) -> bool {
        self.semantic.as_ref().is_some_and(|s| !s.is_empty())
            && !text.trim().is_empty()
            && self
                .index
                .best(text)
                .is_none_or(|m| (m.score as f32) < semantic::LEXICAL_SURE)
    }

    /// The entry that answers `text` (`query`: its vector, when the model
    /// was asked), and how it was found. A sure lexical match answers
    /// alone; otherwise the combined score decides ([`semantic::choose`]),
    /// `priority` then `confidence_score` ordering entries within
    /// [`matcher::TIE_BAND`] of the best.
    pub fn answer(&self, text: &str, query: Option<&[f32]>) -> Option<(Match<'_>, Tier)> {
        let lexical = self.index.best(text);
        let (Some(sem), Some(q)) = (&self.semantic, query) else {
            return lexical.map(|m| (m, Tier::Lexical));
        };
        if lexical.is_some_and(|m| m.score as f32 >= semantic::LEXICAL_SURE) {
            return lexical.map(|m| (m, Tier::Lexical));
        }
        let combined = self.combined(text, sem, q);
        let (_, best) = semantic::choose(&combined, &CALIBRATION)?;
        let mut band: Vec<Match<'_>> = combined
            .iter()
            .enumerate()
            .filter(|&(_, &s)| best - s <= matcher::TIE_BAND as f32)
            .map(|(i, &s)| Match {
                entry: &self.index.entries()[i],
                score: s as f64,
            })
            .collect();
        matcher::rank(&mut band);
        band.first().map(|m| (*m, Tier::Semantic))
    }

    /// The entries most related to `text`, for the AI's prompt: at most
    /// `k`, by combined score (lexical alone without the model) times the
    /// entry's `confidence_score`, above a floor.
    pub fn retrieve(&self, text: &str, query: Option<&[f32]>, k: usize) -> Vec<Match<'_>> {
        let (scores, floor) = match (&self.semantic, query) {
            (Some(sem), Some(q)) => (self.combined(text, sem, q), RETRIEVAL_FLOOR_SEMANTIC),
            _ => (self.index.scores(text), RETRIEVAL_FLOOR_LEXICAL),
        };
        let mut found: Vec<Match<'_>> = scores
            .iter()
            .zip(self.index.entries())
            .filter(|&(&s, _)| s >= floor)
            .map(|(&s, entry)| Match {
                entry,
                score: s as f64 * entry.confidence.clamp(0.0, 1.0),
            })
            .collect();
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        found.truncate(k);
        found
    }

    fn combined(&self, text: &str, sem: &SemanticIndex, q: &[f32]) -> Vec<f32> {
        semantic::combine(
            &self.index.scores(text),
            &sem.scores(q, &CALIBRATION),
            &CALIBRATION,
        )
    }

    /// The active default template, if any.
    pub fn default_template(&self) -> Option<&Template> {
        self.templates.iter().find(|t| t.is_active && t.is_default)
    }

    /// The fallback reply: the tenant's own, else the platform's default.
    pub fn fallback_text(&self, default_fallback: &str) -> String {
        self.settings
            .fallback_reply
            .clone()
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| default_fallback.to_owned())
    }

    /// Whether the tenant has anyone to hand a conversation to.
    pub fn has_escalation_contacts(&self) -> bool {
        self.settings.escalation_phone.is_some() || self.settings.escalation_email.is_some()
    }
}

/// Lowest lexical score of an entry given to the AI.
const RETRIEVAL_FLOOR_LEXICAL: f32 = 0.2;
/// Lowest combined score of an entry given to the AI.
const RETRIEVAL_FLOOR_SEMANTIC: f32 = 0.3;

/// Loads a tenant's context; with the model, its entries' vectors too:
/// stored ones read, a few missing ones computed at once (after start-up),
/// more in the background (the tenant is matched by words until they are stored and
/// it is reloaded). Without the vectors (the model failed) the tenant is
/// matched by words until its next change.
pub async fn load(
    pool: &PgPool,
    backfill: Option<&Arc<Backfill>>,
    id: Uuid,
) -> Result<Option<TenantContext>, sqlx::Error> {
    let Some(mut ctx) = tenant::store::load_snapshot(pool, id)
        .await?
        .map(TenantContext::from_snapshot)
    else {
        return Ok(None);
    };
    if let Some(backfill) = backfill {
        let texts: Vec<String> = ctx
            .index
            .entries()
            .iter()
            .flat_map(|e| semantic::entry_texts(&e.question, &e.answer))
            .collect();
        match semantic::vectors_of(pool, backfill.model(), id, &texts, backfill.inline_limit())
            .await
        {
            Ok(Err(missing)) => {
                tracing::info!(tenant_id = %id, missing, "computing the entry vectors in the background; matching by words meanwhile");
                backfill.start(id, texts);
            }
            Ok(Ok(v)) => {
                let (q, a): (Vec<Vec<f32>>, Vec<Vec<f32>>) = v
                    .chunks(2)
                    .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
                    .unzip();
                ctx.semantic = Some(SemanticIndex::new(&q, &a));
            }
            Err(semantic::VectorsError::Db(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(tenant_id = %id, error = %alphadome_core::Report(&e), "entry vectors unavailable; matching this tenant by words");
            }
        }
    }
    Ok(Some(ctx))
}

/// What the responder's unit tests build contexts from.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// An active tenant without credentials.
    pub fn tenant() -> Tenant {
        Tenant {
            id: Uuid::new_v4(),
            client_name: "Shop".into(),
            client_phone: "254700000001".into(),
            client_email: None,
            brand_id: None,
            point_of_contact_name: None,
            point_of_contact_phone: None,
            whatsapp_phone_number_id: Some("100".into()),
            whatsapp_business_account_id: None,
            whatsapp_access_token: None,
            whatsapp_token_expires_at: None,
            whatsapp_app_secret: None,
            whatsapp_token_invalid_at: None,
            ai_provider: None,
            ai_api_key: None,
            ai_model: None,
            ai_base_url: None,
            is_active: true,
            is_verified: false,
            webhook_verify_token: None,
            webhook_url: None,
            metadata: serde_json::json!({}),
            whatsapp_templates: serde_json::json!([]),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(data_type: &str, q: &str, a: &str, priority: i32) -> TrainingRow {
        TrainingRow {
            id: Uuid::new_v4(),
            data_type: data_type.into(),
            question: Some(q.into()),
            answer: Some(a.into()),
            category: None,
            priority,
            confidence_score: 1.0,
            is_active: true,
        }
    }

    #[test]
    fn faq_and_canned_replies_are_indexed_examples_kept_for_prompts() {
        let tenant = fixtures::tenant();
        let mut training = vec![
            row("faq", "opening hours", "9 to 5", 5),
            row("canned_reply", "thanks", "You're welcome!", 1),
            row("faq", "empty answer", "  ", 1),
        ];
        for i in 0..5 {
            training.push(row("example", &format!("q{i}"), &format!("a{i}"), 0));
        }
        let ctx = TenantContext::from_snapshot(TenantSnapshot {
            tenant,
            settings: ControlSettings::default(),
            templates: Vec::new(),
            training,
        });
        assert_eq!(ctx.index.len(), 2, "the row without an answer is left out");
        assert_eq!(ctx.examples.len(), PROMPT_EXAMPLES);
        assert_eq!(
            ctx.index.best("opening hours").unwrap().entry.answer,
            "9 to 5"
        );
        assert_eq!(ctx.fallback_text("default"), "default");
        assert!(!ctx.has_escalation_contacts());
    }
}
