//! Tenants for tests and benchmarks, made through the manifest path (the
//! same validation and writes as `alphadome tenant apply`).

use alphadome_admin::manifest::{self, Manifest};
use alphadome_core::crypto::Keyring;
use sqlx::PgPool;
use uuid::Uuid;

/// A tenant created for a test.
#[derive(Debug, Clone)]
pub struct TestTenant {
    pub id: Uuid,
    pub phone: String,
    pub phone_number_id: String,
    pub token: String,
    pub app_secret: Option<String>,
}

/// Options for [`tenant`].
pub struct TenantSpec<'a> {
    pub name: &'a str,
    pub phone: &'a str,
    pub phone_number_id: &'a str,
    pub token: &'a str,
    pub app_secret: Option<&'a str>,
    pub active: bool,
    /// (question, answer) FAQ pairs.
    pub faq: &'a [(&'a str, &'a str)],
    /// Extra YAML under control_settings.
    pub control: &'a str,
    /// Extra YAML under tenant (e.g. the AI provider).
    pub tenant_extra: &'a str,
    /// Extra YAML under the default template.
    pub template_extra: &'a str,
    /// Extra items of training_data (YAML list items, indented two spaces).
    pub training_extra: &'a str,
    /// Items of whatsapp_templates (YAML list items, indented two spaces).
    pub whatsapp_templates: &'a str,
}

impl Default for TenantSpec<'_> {
    fn default() -> Self {
        Self {
            name: "Test Shop",
            phone: "254700000001",
            phone_number_id: "100000000000001",
            token: "EAAG-test-token-1",
            app_secret: None,
            active: true,
            faq: &[("What are your opening hours?", "We are open 9 to 5.")],
            control: "",
            tenant_extra: "",
            template_extra: "",
            training_extra: "",
            whatsapp_templates: "",
        }
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The manifest text for `spec`.
pub fn manifest_yaml(spec: &TenantSpec<'_>) -> String {
    let mut y = format!(
        "tenant:\n  client_name: {}\n  client_phone: {}\n  whatsapp_phone_number_id: {}\n  whatsapp_access_token: {}\n  is_active: {}\n  webhook_verify_token: {}\n",
        yaml_str(spec.name),
        yaml_str(spec.phone),
        yaml_str(spec.phone_number_id),
        yaml_str(spec.token),
        spec.active,
        yaml_str(&format!("verify-{}", spec.phone_number_id)),
    );
    if let Some(s) = spec.app_secret {
        y.push_str(&format!("  whatsapp_app_secret: {}\n", yaml_str(s)));
    }
    for line in spec.tenant_extra.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("  {}\n", line.trim()));
    }
    y.push_str("control_settings:\n  log_conversations: true\n");
    // Tests ask one question after another: no waiting for more messages
    // unless the test asks for it.
    if !spec.control.contains("debounce_ms") {
        y.push_str("  debounce_ms: 0\n");
    }
    for line in spec.control.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("  {}\n", line.trim()));
    }
    y.push_str("templates:\n  - template_name: default\n    is_default: true\n    system_prompt: You are a helpful assistant.\n");
    for line in spec.template_extra.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("    {}\n", line.trim()));
    }
    if !spec.faq.is_empty() || !spec.training_extra.is_empty() {
        y.push_str("training_data:\n");
        for (q, a) in spec.faq {
            y.push_str(&format!(
                "  - data_type: faq\n    question: {}\n    answer: {}\n",
                yaml_str(q),
                yaml_str(a)
            ));
        }
        y.push_str(spec.training_extra);
    }
    if !spec.whatsapp_templates.is_empty() {
        y.push_str("whatsapp_templates:\n");
        y.push_str(spec.whatsapp_templates);
    }
    y
}

/// Records that `customer` wrote to the tenant `minutes_ago`, as the
/// responder does for each message: their 24-hour window is open (for
/// staff who get proactive messages without writing in the test).
pub async fn wrote(pool: &PgPool, tenant: Uuid, customer: &str, minutes_ago: i32) {
    sqlx::query(
        "INSERT INTO alphadome.conversation_sessions (bot_tenant_id, customer, last_inbound_at, last_inbound_wamid) \
         VALUES ($1, $2, now() - make_interval(mins => $3), 'wamid.test.wrote') \
         ON CONFLICT (bot_tenant_id, customer) DO UPDATE SET last_inbound_at = EXCLUDED.last_inbound_at",
    )
    .bind(tenant)
    .bind(customer)
    .bind(minutes_ago)
    .execute(pool)
    .await
    .expect("recording the customer's message");
}

/// Creates a tenant through the manifest path.
pub async fn tenant(pool: &PgPool, keyring: &Keyring, spec: TenantSpec<'_>) -> TestTenant {
    let m = Manifest::parse(
        &manifest_yaml(&spec),
        alphadome_core::config::DEFAULT_COUNTRY_CODE,
    )
    .expect("test manifest parses");
    let r = manifest::apply(pool, keyring, &m)
        .await
        .expect("test manifest applies");
    TestTenant {
        id: r.tenant_id,
        phone: spec.phone.to_owned(),
        phone_number_id: spec.phone_number_id.to_owned(),
        token: spec.token.to_owned(),
        app_secret: spec.app_secret.map(str::to_owned),
    }
}
