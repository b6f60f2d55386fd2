//! Meta-shaped webhook bodies (text messages, delivery statuses), signed
//! as Meta signs them (`X-Hub-Signature-256` over the raw body).

use alphadome_core::meta;

/// A text webhook body from "Test User".
pub fn text_webhook(phone_number_id: &str, from: &str, wamid: &str, text: &str) -> String {
    named_text_webhook(phone_number_id, from, "Test User", wamid, text)
}

/// A Meta-shaped text webhook from `from` (profile name `name`) to
/// `phone_number_id`, sent now.
pub fn named_text_webhook(
    phone_number_id: &str,
    from: &str,
    name: &str,
    wamid: &str,
    text: &str,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "0", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "0", "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": name}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid,
                "timestamp": now.to_string(), "type": "text", "text": {"body": text}}]
        }}]}]
    })
    .to_string()
}

/// A status webhook body.
pub fn status_webhook(
    phone_number_id: &str,
    wamid: &str,
    status: &str,
    ts: i64,
    error_code: Option<i64>,
) -> String {
    let mut st = serde_json::json!({"id": wamid, "status": status, "timestamp": ts.to_string(), "recipient_id": "254711111111"});
    if let Some(code) = error_code {
        st["errors"] = serde_json::json!([{"code": code, "title": "Message failed", "message": "Message failed",
            "error_data": {"details": "stand-in failure"}}]);
    }
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "0", "phone_number_id": phone_number_id},
        "statuses": [st]}}]}]})
    .to_string()
}

/// `body` (a [`status_webhook`]) with its status echoing `callback` as
/// `biz_opaque_callback_data`, as Meta does for what the sender set.
pub fn with_callback(body: &str, callback: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if !callback.is_empty() {
        v["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] =
            serde_json::Value::String(callback.to_owned());
    }
    v.to_string()
}

/// POSTs `body` to `url` signed with `secret`.
pub async fn post_signed(url: &str, secret: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            meta::sign(secret.as_bytes(), body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .expect("POST webhook")
}
