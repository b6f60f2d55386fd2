//! Meta's webhook parser on arbitrary bytes, and what reads a body before
//! its signature is checked: they must never panic, what the parser accepts
//! must be well-formed (every message and status names its phone number id
//! and wamid), the candidate ids are bounded, and a repaired body is JSON
//! the parser can read when the original was JSON it refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ids = alphadome_core::meta::candidate_ids(data, 16);
    assert!(ids.len() <= 16, "more candidate ids than asked for");
    let parsed = alphadome_core::meta::parse_webhook(data).or_else(|e| {
        match alphadome_core::meta::repair_json(data) {
            Some(repaired) => alphadome_core::meta::parse_webhook(&repaired),
            None => Err(e),
        }
    });
    if let Ok(p) = parsed {
        for m in &p.messages {
            assert!(!m.wamid.is_empty(), "accepted a message without a wamid");
            assert!(!m.phone_number_id.is_empty(), "accepted a message without a phone number id");
        }
        for s in &p.statuses {
            assert!(!s.wamid.is_empty(), "accepted a status without a wamid");
        }
    }
});
