//! The tenant manifest parser (YAML and JSON) on arbitrary text: it must
//! never panic, and an error always says what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = alphadome_admin::manifest::Manifest::parse(text, "254") {
            assert!(!e.to_string().is_empty(), "an error without a message");
        }
    }
});
