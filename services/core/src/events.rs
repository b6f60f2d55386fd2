//! Protobuf event types generated from `proto/alphadome/v1/events.proto`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/alphadome.v1.rs"));
}

pub use prost::Message;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
