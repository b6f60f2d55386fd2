//! The ingress's decisions as plain functions (no database, no broker):
//! whether a signature header can be a signature at all, which secret
//! signed a webhook, whether a tenant the webhook names is one that secret
//! speaks for, whether a verify token matches, and the events a parsed
//! webhook becomes.

use std::sync::Arc;

use alphadome_core::events::v1::{AccountEvent, InboundMessage, StatusUpdate, TraceContext};
use alphadome_core::meta::{self, AccountChange, ParsedMessage, ParsedStatus};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::store::Route;

/// Whether `header` has the form of Meta's signature (`sha256=` and 64 hex
/// digits): anything else fails without a look at the body or a secret.
pub fn is_signature(header: &str) -> bool {
    header
        .trim()
        .strip_prefix("sha256=")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Which secret signed a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedBy {
    /// A tenant's own Meta app secret.
    Tenant(Uuid),
    /// The platform's Meta app secret (`META_APP_SECRET`).
    Platform,
}

/// The secret `signature` verifies `body` with: a candidate tenant's own,
/// else the platform's; `None` when no secret does.
pub fn signed_by(
    routes: &[Arc<Route>],
    platform_secret: Option<&SecretString>,
    body: &[u8],
    signature: Option<&str>,
) -> Option<SignedBy> {
    for r in routes {
        if let Some(secret) = &r.app_secret {
            if meta::verify_signature(secret.expose_secret().as_bytes(), body, signature) {
                return Some(SignedBy::Tenant(r.tenant_id));
            }
        }
    }
    let platform = platform_secret?;
    meta::verify_signature(platform.expose_secret().as_bytes(), body, signature)
        .then_some(SignedBy::Platform)
}

/// Whether the secret that verified the body is the one that applies to
/// `r` (its own, or the platform's when it has none): one body comes from
/// one Meta app.
pub fn speaks_for(r: &Route, by: SignedBy) -> bool {
    match (by, &r.app_secret) {
        (SignedBy::Tenant(id), Some(_)) => id == r.tenant_id,
        (SignedBy::Platform, None) => true,
        _ => false,
    }
}

/// The tenant whose verify token (or, in its grace period, its previous
/// token) has digest `digest`. Every stored digest is compared, in
/// constant time.
pub fn match_verify_token(
    digest: &str,
    rows: &[(Uuid, Option<String>, Option<String>)],
) -> Option<Uuid> {
    let mut found = None;
    for (id, current, previous) in rows {
        for stored in [current, previous].into_iter().flatten() {
            if bool::from(stored.as_bytes().ct_eq(digest.as_bytes())) {
                found = Some(*id);
            }
        }
    }
    found
}

/// The event a customer's message becomes.
pub fn inbound_event(
    tenant: Uuid,
    m: ParsedMessage,
    received_at_ms: i64,
    trace: TraceContext,
) -> InboundMessage {
    InboundMessage {
        tenant_id: tenant.to_string(),
        wamid: m.wamid,
        phone_number_id: m.phone_number_id,
        from: m.from,
        from_user_id: m.from_user_id,
        profile_name: m.profile_name,
        kind: m.kind as i32,
        type_name: m.type_name,
        text: m.text,
        reply_id: m.reply_id,
        context_wamid: m.context_wamid,
        sent_at: m.sent_at,
        received_at_ms,
        raw_json: m.raw_json,
        trace: Some(trace),
    }
}

/// The event an account change becomes for one tenant of the account. Its
/// key is a digest of the account, field and value, so a webhook Meta
/// delivers again is kept once.
pub fn account_event(
    tenant: Uuid,
    change: &AccountChange,
    received_at_ms: i64,
    trace: TraceContext,
) -> AccountEvent {
    let mut digest = Sha256::new();
    for part in [
        change.business_account_id.as_bytes(),
        change.field.as_bytes(),
        change.value_json.as_bytes(),
    ] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    AccountEvent {
        tenant_id: tenant.to_string(),
        business_account_id: change.business_account_id.clone(),
        field: change.field.clone(),
        event: change.event.clone(),
        value_json: change.value_json.clone(),
        dedup_key: format!("acct:{}", hex::encode(&digest.finalize()[..16])),
        received_at_ms,
        trace: Some(trace),
    }
}

/// The JetStream message id of a status (one per message and status).
pub fn status_id(st: &ParsedStatus) -> String {
    format!("{}:{}", st.wamid, st.status)
}

/// The event a delivery status becomes.
pub fn status_event(
    tenant: Uuid,
    st: ParsedStatus,
    received_at_ms: i64,
    trace: TraceContext,
) -> StatusUpdate {
    StatusUpdate {
        tenant_id: tenant.to_string(),
        wamid: st.wamid,
        status: st.status,
        recipient_id: st.recipient_id,
        timestamp: st.timestamp,
        error_code: st.error_code,
        error_title: st.error_title,
        error_details: st.error_details,
        callback_data: st.callback_data,
        raw_json: st.raw_json,
        received_at_ms,
        trace: Some(trace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(tenant: Uuid, secret: Option<&str>) -> Arc<Route> {
        Arc::new(Route {
            tenant_id: tenant,
            phone_number_id: Some("100".into()),
            business_account_id: Some("900".into()),
            is_active: true,
            app_secret: secret.map(|s| SecretString::from(s.to_owned())),
        })
    }

    #[test]
    fn only_a_well_formed_header_is_tried() {
        assert!(is_signature(&format!("sha256={}", "a".repeat(64))));
        assert!(!is_signature("sha256=zz"));
        assert!(!is_signature(&format!("sha1={}", "a".repeat(64))));
        assert!(!is_signature(&format!("sha256={}", "a".repeat(65))));
    }

    #[test]
    fn a_redelivered_account_change_has_the_same_key() {
        let change = AccountChange {
            business_account_id: "900".into(),
            field: "message_template_status_update".into(),
            event: "APPROVED".into(),
            value_json: r#"{"event":"APPROVED"}"#.into(),
        };
        let t = Uuid::new_v4();
        let a = account_event(t, &change, 1, TraceContext::default());
        let b = account_event(t, &change, 2, TraceContext::default());
        assert_eq!(a.dedup_key, b.dedup_key);
        let other = AccountChange {
            event: "REJECTED".into(),
            value_json: r#"{"event":"REJECTED"}"#.into(),
            ..change
        };
        assert_ne!(
            account_event(t, &other, 1, TraceContext::default()).dedup_key,
            a.dedup_key
        );
    }

    #[test]
    fn the_signing_secret_is_found_and_must_speak_for_every_tenant() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let platform = SecretString::from("platform".to_owned());
        let routes = vec![route(a, Some("secret-a")), route(b, None)];
        let by_a = meta::sign(b"secret-a", body);
        assert_eq!(
            signed_by(&routes, Some(&platform), body, Some(&by_a)),
            Some(SignedBy::Tenant(a))
        );
        let by_platform = meta::sign(b"platform", body);
        assert_eq!(
            signed_by(&routes, Some(&platform), body, Some(&by_platform)),
            Some(SignedBy::Platform)
        );
        assert_eq!(signed_by(&routes, None, body, Some(&by_platform)), None);
        assert_eq!(
            signed_by(&routes, Some(&platform), b"other", Some(&by_a)),
            None
        );
        // A's secret speaks for A only; the platform's for B, which has none.
        assert!(speaks_for(&route(a, Some("x")), SignedBy::Tenant(a)));
        assert!(!speaks_for(&route(b, None), SignedBy::Tenant(a)));
        assert!(speaks_for(&route(b, None), SignedBy::Platform));
        assert!(!speaks_for(&route(a, Some("x")), SignedBy::Platform));
    }

    #[test]
    fn verify_tokens_match_current_or_previous_digest() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let rows = vec![
            (a, Some("sha256:aa".to_owned()), None),
            (
                b,
                Some("sha256:bb".to_owned()),
                Some("sha256:old".to_owned()),
            ),
        ];
        assert_eq!(match_verify_token("sha256:aa", &rows), Some(a));
        assert_eq!(match_verify_token("sha256:old", &rows), Some(b));
        assert_eq!(match_verify_token("sha256:zz", &rows), None);
    }
}
