//! What the responder keeps in memory per tenant: its configuration, the
//! FAQ index of its answerable training rows, and the example
//! conversations given to its LLM. Built from a [`TenantSnapshot`] by a
//! plain function, so the index is tested without a database.

use alphadome_core::tenant::{
    self, ControlSettings, Template, Tenant, TenantSnapshot, TrainingRow,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::matcher::{FaqEntry, FaqIndex};

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
            tenant: s.tenant,
            settings: s.settings,
            templates: s.templates,
            examples,
            index: FaqIndex::build(answerable),
        }
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

/// Loads a tenant's context.
pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<TenantContext>, sqlx::Error> {
    Ok(tenant::store::load_snapshot(pool, id)
        .await?
        .map(TenantContext::from_snapshot))
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
