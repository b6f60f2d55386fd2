//! Building the tenant's prompt: its template (system prompt, tone,
//! conversation context), the most relevant entries of its own knowledge
//! base, its `example` rows as few-shot turns, and the recent turns of this
//! customer's conversation; and fitting the answer to
//! `max_response_length`.

use alphadome_core::meta::MAX_TEXT_CHARS;
use alphadome_core::tenant::{Template, TrainingRow};

use crate::context::TenantContext;
use crate::llm::ChatMessage;
use crate::matcher::Match;

/// Default answer length when the template sets none.
pub const DEFAULT_MAX_CHARS: usize = 1000;
/// Recent turns of the conversation included, at most.
pub const HISTORY_TURNS: usize = 10;
/// FAQ entries given to the LLM as knowledge, the most related first.
pub const RETRIEVED: usize = 3;
/// Characters of history included, at most.
pub const HISTORY_CHARS: usize = 4000;

/// One earlier turn of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub from_customer: bool,
    pub text: String,
}

/// The turns of the log's rows, given newest first as (whether the
/// customer wrote it, its text), oldest first; rows without text are left
/// out.
pub fn turns_from_newest(rows: Vec<(bool, Option<String>)>) -> Vec<Turn> {
    rows.into_iter()
        .rev()
        .filter_map(|(from_customer, text)| {
            text.map(|text| Turn {
                from_customer,
                text,
            })
        })
        .collect()
}

fn same_word(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim().to_lowercase(), b.trim().to_lowercase());
    !a.is_empty() && (a == b || a.trim_end_matches('s') == b.trim_end_matches('s'))
}

/// The template whose name fits the matched category, else the default,
/// else the first active one.
pub fn choose_template<'a>(ctx: &'a TenantContext, category: Option<&str>) -> Option<&'a Template> {
    let active = || ctx.templates.iter().filter(|t| t.is_active);
    category
        .and_then(|c| active().find(|t| same_word(&t.template_name, c)))
        .or_else(|| ctx.default_template())
        .or_else(|| active().next())
}

/// The answer length the template asks for (never beyond WhatsApp's limit).
pub fn max_chars(template: Option<&Template>) -> usize {
    template
        .and_then(|t| t.max_response_length)
        .map(|m| m.max(1) as usize)
        .unwrap_or(DEFAULT_MAX_CHARS)
        .min(MAX_TEXT_CHARS)
}

/// A completion-token budget for `chars` characters (about 3.5 per token,
/// with room to finish a sentence).
pub fn max_tokens(chars: usize) -> u32 {
    ((chars as f64 / 3.5).ceil() as u32 + 16).clamp(16, 1400)
}

/// Cuts `text` to at most `max` characters at a sentence boundary (else a
/// word boundary).
pub fn fit(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let byte_max = text
        .char_indices()
        .nth(max)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    let window = &text[..byte_max];
    let sentence = window
        .rmatch_indices(['.', '!', '?', '\n'])
        .map(|(i, s)| i + s.len())
        .find(|&i| i >= byte_max / 3);
    let cut = sentence
        .or_else(|| window.rfind(char::is_whitespace).filter(|&i| i > 0))
        .unwrap_or(byte_max);
    text[..cut].trim().to_owned()
}

/// The chat messages for one customer message.
pub fn build(
    ctx: &TenantContext,
    template: Option<&Template>,
    retrieved: &[Match<'_>],
    examples: &[&TrainingRow],
    history: &[Turn],
    customer_text: &str,
) -> Vec<ChatMessage> {
    let name = &ctx.tenant.client_name;
    let mut system = template
        .and_then(|t| t.system_prompt.clone())
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| {
            format!(
                "You are the WhatsApp assistant of {name}. Answer customers' questions helpfully."
            )
        });
    let tone = template.map(|t| t.tone.as_str()).unwrap_or("friendly");
    system.push_str(match tone {
        "professional" => "\n\nTone: concise, courteous and professional.",
        _ => "\n\nTone: warm and friendly.",
    });
    system.push_str(&format!(
        "\nAnswer in plain text suitable for WhatsApp, in at most {} characters.",
        max_chars(template)
    ));
    if let Some(c) = template
        .map(|t| &t.conversation_context)
        .filter(|c| c.as_object().is_some_and(|o| !o.is_empty()))
    {
        system.push_str(&format!("\n\nAbout the business: {c}"));
    }
    if !retrieved.is_empty() {
        system.push_str(&format!(
            "\n\nFacts from {name}'s knowledge base (rely on them; never invent prices, stock or policies):"
        ));
        for m in retrieved {
            system.push_str(&format!(
                "\n- Q: {}\n  A: {}",
                m.entry.question, m.entry.answer
            ));
        }
    }
    system.push_str("\n\nIf you do not know the answer, say so and offer to connect the customer with a member of staff.");
    let mut messages = vec![ChatMessage::system(system)];
    for ex in examples {
        if let (Some(q), Some(a)) = (&ex.question, &ex.answer) {
            messages.push(ChatMessage::user(q.clone()));
            messages.push(ChatMessage::assistant(a.clone()));
        }
    }
    // The most recent turns, within the bounds, in order.
    let mut kept: Vec<&Turn> = Vec::new();
    let mut chars = 0;
    for t in history.iter().rev().take(HISTORY_TURNS) {
        chars += t.text.len();
        if chars > HISTORY_CHARS {
            break;
        }
        kept.push(t);
    }
    for t in kept.into_iter().rev() {
        messages.push(if t.from_customer {
            ChatMessage::user(t.text.clone())
        } else {
            ChatMessage::assistant(t.text.clone())
        });
    }
    messages.push(ChatMessage::user(customer_text.to_owned()));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_at_sentence_boundaries() {
        let t = "First sentence is here. Second one is longer and goes on. Third.";
        assert_eq!(fit(t, 30), "First sentence is here.");
        assert_eq!(fit(t, 500), t);
        assert_eq!(fit("no boundary at all in this text", 12), "no boundary");
        assert!(fit(&"x".repeat(5000), 4096).chars().count() <= 4096);
    }

    #[test]
    fn history_comes_oldest_first_without_empty_rows() {
        let turns = turns_from_newest(vec![
            (false, Some("newest".into())),
            (true, None),
            (true, Some("oldest".into())),
        ]);
        assert_eq!(
            turns,
            vec![
                Turn {
                    from_customer: true,
                    text: "oldest".into()
                },
                Turn {
                    from_customer: false,
                    text: "newest".into()
                }
            ]
        );
    }

    #[test]
    fn token_budget_grows_with_length() {
        assert!(max_tokens(100) < max_tokens(1000));
        assert!(max_tokens(1) >= 16);
        assert!(max_tokens(100_000) <= 1400);
    }
}
