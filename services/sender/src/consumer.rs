//! The sender's transport: each message of the outbound stream is decoded,
//! traced as the continuation of its webhook's trace, and delivered
//! ([`crate::deliver`]); the outcome settles it.

use alphadome_core::bus::{MessageMeta, Outcome, REPLAY_HEADER};
use alphadome_core::events::v1::OutboundMessage;
use alphadome_core::events::Message as _;
use alphadome_core::{telemetry, Report};
use bytes::Bytes;
use tracing::Instrument;

use crate::Sender;

impl Sender {
    pub(crate) async fn handle(&self, payload: Bytes, meta: MessageMeta) -> Outcome {
        let msg = match OutboundMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Poison {
                    reason: format!("undecodable OutboundMessage: {}", Report(&e)),
                }
            }
        };
        // A dead letter re-driven by an operator (`alphadome dlq replay`):
        // a reply that failed for good gets one more attempt.
        let replayed = meta
            .headers
            .as_ref()
            .is_some_and(|h| h.get(REPLAY_HEADER).is_some());
        let span = tracing::info_span!("sender.message", tenant_id = %msg.tenant_id, wamid = %msg.in_reply_to);
        telemetry::set_parent_from_headers(&span, meta.headers.as_ref());
        self.deliver(msg, meta.delivered, replayed)
            .instrument(span)
            .await
    }
}
