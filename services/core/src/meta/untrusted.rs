//! Reading a webhook body before its signature is checked, and after: the
//! ids that say which app secrets may have signed it ([`candidate_ids`]),
//! bounded and tolerant of bodies that do not parse, and the repair of a
//! signed body that JSON parsers refuse ([`repair_json`]: a lone UTF-16
//! surrogate escape, a raw control character in a string, invalid UTF-8),
//! so that nothing Meta signed is refused.

use serde::Deserialize;

/// The ids a body names that lead to its possible signers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CandidateIds {
    /// `value.metadata.phone_number_id` of every change.
    pub phone_number_ids: Vec<String>,
    /// `entry[].id`: WhatsApp Business Account ids.
    pub business_account_ids: Vec<String>,
}

impl CandidateIds {
    /// How many ids in all.
    pub fn len(&self) -> usize {
        self.phone_number_ids.len() + self.business_account_ids.len()
    }

    /// Whether the body names none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(list: &mut Vec<String>, id: &str, room: &mut usize) {
        let id = id.trim();
        if *room > 0 && !id.is_empty() && id.len() <= 64 && !list.iter().any(|x| x == id) {
            list.push(id.to_owned());
            *room -= 1;
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
struct Value {
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    phone_number_id: Option<String>,
}

/// At most `max` distinct ids the body names (phone number ids first, then
/// business account ids), from the JSON structure when the body parses,
/// else from a scan of its bytes for `"phone_number_id"` keys and
/// digit-only `"id"` keys. Never fails: a body naming nothing yields none.
pub fn candidate_ids(body: &[u8], max: usize) -> CandidateIds {
    let mut out = CandidateIds::default();
    let mut room = max;
    match serde_json::from_slice::<Envelope>(body) {
        Ok(env) => {
            for change in env.entry.iter().flat_map(|e| &e.changes) {
                if let Some(p) = change
                    .value
                    .as_ref()
                    .and_then(|v| v.metadata.as_ref())
                    .and_then(|m| m.phone_number_id.as_deref())
                {
                    CandidateIds::push(&mut out.phone_number_ids, p, &mut room);
                }
            }
            for id in env.entry.iter().filter_map(|e| e.id.as_ref()) {
                let id = match id {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => continue,
                };
                CandidateIds::push(&mut out.business_account_ids, &id, &mut room);
            }
        }
        Err(_) => {
            for p in string_values_of(body, b"phone_number_id") {
                CandidateIds::push(&mut out.phone_number_ids, &p, &mut room);
            }
            for id in string_values_of(body, b"id") {
                if id.bytes().all(|b| b.is_ascii_digit()) {
                    CandidateIds::push(&mut out.business_account_ids, &id, &mut room);
                }
            }
        }
    }
    out
}

/// The values of every `"key": "value"` pair in `body`, found by scanning
/// bytes (no JSON parse): what a body that does not parse still says.
/// Values with escapes are skipped (ids have none).
fn string_values_of<'a>(body: &'a [u8], key: &'a [u8]) -> impl Iterator<Item = String> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < body.len() {
            let rest = &body[at..];
            let hit = find(rest, b"\"")?;
            let start = at + hit + 1;
            at = start;
            if !body[start..].starts_with(key) || body.get(start + key.len()) != Some(&b'"') {
                continue;
            }
            let mut i = start + key.len() + 1;
            while body.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
                i += 1;
            }
            if body.get(i) != Some(&b':') {
                continue;
            }
            i += 1;
            while body.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
                i += 1;
            }
            if body.get(i) != Some(&b'"') {
                continue;
            }
            let value_start = i + 1;
            let len = find(&body[value_start..], b"\"")?;
            let value = &body[value_start..value_start + len];
            at = value_start + len + 1;
            if value.contains(&b'\\') {
                continue;
            }
            if let Ok(v) = std::str::from_utf8(value) {
                return Some(v.to_owned());
            }
        }
        None
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A version of `body` that JSON parsers take, when it has what they
/// refuse but Meta may still send: invalid UTF-8 (replaced by U+FFFD), raw
/// control characters inside strings (escaped), and `\u` escapes of lone
/// UTF-16 surrogates (replaced by `\uFFFD`). `None` when there was nothing
/// to repair.
pub fn repair_json(body: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(body);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = matches!(text, std::borrow::Cow::Owned(_));
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !in_string {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = false;
                out.push(b);
                i += 1;
            }
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = hex4(bytes.get(i + 2..i + 6));
                match unit {
                    Some(0xD800..=0xDBFF) => {
                        let lo = (bytes.get(i + 6) == Some(&b'\\')
                            && bytes.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(bytes.get(i + 8..i + 12)))
                        .flatten();
                        if matches!(lo, Some(0xDC00..=0xDFFF)) {
                            out.extend_from_slice(&bytes[i..i + 12]);
                            i += 12;
                        } else {
                            out.extend_from_slice(b"\\uFFFD");
                            changed = true;
                            i += 6;
                        }
                    }
                    Some(0xDC00..=0xDFFF) => {
                        out.extend_from_slice(b"\\uFFFD");
                        changed = true;
                        i += 6;
                    }
                    Some(_) => {
                        out.extend_from_slice(&bytes[i..i + 6]);
                        i += 6;
                    }
                    None => {
                        // A malformed escape: left for the parser to name.
                        out.extend_from_slice(&bytes[i..i + 2]);
                        i += 2;
                    }
                }
            }
            b'\\' => {
                out.push(b);
                if let Some(&next) = bytes.get(i + 1) {
                    out.push(next);
                }
                i += 2;
            }
            c if c < 0x20 => {
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
                changed = true;
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

fn hex4(digits: Option<&[u8]>) -> Option<u16> {
    let digits = std::str::from_utf8(digits?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","time":1751247548,
      "changes":[{"field":"message_template_status_update","value":{"event":"APPROVED","message_template_id":1234,
      "message_template_name":"order_update","message_template_language":"en_US","reason":"NONE"}}]}]}"#;

    #[test]
    fn ids_come_from_entries_and_metadata() {
        let ids = candidate_ids(TEMPLATE.as_bytes(), 16);
        assert_eq!(ids.business_account_ids, ["102290129340398"]);
        assert!(ids.phone_number_ids.is_empty());
        let errors_only = r#"{"object":"whatsapp_business_account","entry":[{"id":"77","changes":[{"field":"messages",
          "value":{"metadata":{"phone_number_id":"106540352242922"},"errors":[{"code":130429}]}}]}]}"#;
        let ids = candidate_ids(errors_only.as_bytes(), 16);
        assert_eq!(ids.phone_number_ids, ["106540352242922"]);
        assert_eq!(ids.business_account_ids, ["77"]);
    }

    #[test]
    fn a_body_that_does_not_parse_is_scanned_and_the_count_is_bounded() {
        let body = "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"555\",\"changes\":[{\"field\":\"messages\",\"value\":{\"metadata\":{\"phone_number_id\":\"106\"},\"messages\":[{\"id\":\"wamid.x\",\"text\":{\"body\":\"\\ud800 bad\"}}]}}]}]}";
        assert!(serde_json::from_str::<serde_json::Value>(body).is_err());
        let ids = candidate_ids(body.as_bytes(), 16);
        assert_eq!(ids.phone_number_ids, ["106"]);
        assert_eq!(
            ids.business_account_ids,
            ["555"],
            "wamid.x is no account id"
        );
        let many: String = (0..10_000)
            .map(|i| format!(r#"{{"metadata":{{"phone_number_id":"{i}"}}}},"#))
            .collect();
        let ids = candidate_ids(format!("[{many}").as_bytes(), 8);
        assert_eq!(ids.len(), 8);
    }

    #[test]
    fn repairs_what_parsers_refuse_and_leaves_good_json_alone() {
        assert_eq!(repair_json(TEMPLATE.as_bytes()), None);
        let lone = "{\"a\":\"x\\ud800y\",\"b\":\"\\ud83d\\ude00\",\"c\":\"\\udc00\"}";
        let fixed = repair_json(lone.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(v["a"], "x\u{fffd}y");
        assert_eq!(v["b"], "\u{1f600}", "a real pair is kept");
        assert_eq!(v["c"], "\u{fffd}");
        let raw_nul = b"{\"a\":\"x\x00y\tz\"}";
        let v: serde_json::Value = serde_json::from_slice(&repair_json(raw_nul).unwrap()).unwrap();
        assert_eq!(v["a"], "x\u{0}y\tz");
        let bad_utf8 = b"{\"a\":\"\xff\"}";
        let v: serde_json::Value = serde_json::from_slice(&repair_json(bad_utf8).unwrap()).unwrap();
        assert_eq!(v["a"], "\u{fffd}");
    }
}
