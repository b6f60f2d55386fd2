//! Meta's webhook parser on arbitrary bytes: it must never panic, and what
//! it accepts must be well-formed (every message and status names its
//! phone number id and wamid).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = alphadome_core::meta::parse_webhook(data) {
        for m in &p.messages {
            assert!(!m.wamid.is_empty(), "accepted a message without a wamid");
            assert!(!m.phone_number_id.is_empty(), "accepted a message without a phone number id");
        }
        for s in &p.statuses {
            assert!(!s.wamid.is_empty(), "accepted a status without a wamid");
        }
    }
});
