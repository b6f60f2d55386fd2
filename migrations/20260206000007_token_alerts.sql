-- Alerts about a tenant's WhatsApp token (7 days and 1 day before expiry,
-- on expiry, when Meta rejects it), each sent once per token: the key holds
-- a fingerprint of the stored ciphertext, so a new token starts afresh.
CREATE TABLE alphadome.token_alerts (
    bot_tenant_id     uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    threshold         text NOT NULL,
    token_fingerprint text NOT NULL,
    sent_at           timestamptz NOT NULL DEFAULT now(),
    email_error       text,
    PRIMARY KEY (bot_tenant_id, threshold, token_fingerprint),
    CONSTRAINT token_alerts_threshold_check CHECK (threshold IN ('7d', '1d', 'expired', 'invalid'))
);
