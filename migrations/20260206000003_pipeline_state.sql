-- Durable pipeline state that JetStream alone cannot give: Meta retries a
-- webhook for up to 7 days, JetStream deduplicates only within minutes.

-- One row per reply the platform intends to send, keyed by an id derived
-- from the inbound wamid. The sender claims the row before calling Meta and
-- marks it sent after; a row already sent is never sent again.
CREATE TABLE alphadome.outbound_messages (
    outbound_id         text PRIMARY KEY,
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    in_reply_to         text,
    state               text NOT NULL DEFAULT 'sending',
    attempts            integer NOT NULL DEFAULT 0,
    claimed_until       timestamptz,
    whatsapp_message_id text,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbound_messages_state_check CHECK (state IN ('sending', 'sent', 'failed'))
);
CREATE INDEX outbound_messages_tenant_time_idx
    ON alphadome.outbound_messages (bot_tenant_id, created_at DESC);
CREATE TRIGGER outbound_messages_updated_at BEFORE UPDATE ON alphadome.outbound_messages
    FOR EACH ROW EXECUTE FUNCTION alphadome.set_updated_at();

-- Parts of a long reply already accepted by Meta (texts over 4096
-- characters go out in several messages); a retry resumes after them.
ALTER TABLE alphadome.outbound_messages ADD COLUMN parts_sent integer NOT NULL DEFAULT 0;

-- Order of delivery states: a status never replaces one of higher rank
-- (Meta's status webhooks arrive out of order; failed is terminal).
CREATE OR REPLACE FUNCTION alphadome.status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3
        WHEN 'played' THEN 4 WHEN 'failed' THEN 5 ELSE 0 END
$$;
