-- Webhook verify tokens are stored as SHA-256 digests ("sha256:<hex>"),
-- never in plaintext, and can be rotated with a grace period: the previous
-- token is still accepted until webhook_verify_token_previous_expires_at, so
-- the Meta dashboard can be updated without downtime.
ALTER TABLE alphadome.bot_tenants
    ADD COLUMN webhook_verify_token_previous text,
    ADD COLUMN webhook_verify_token_previous_expires_at timestamptz,
    ADD COLUMN webhook_verify_token_rotated_at timestamptz;

UPDATE alphadome.bot_tenants
   SET webhook_verify_token = 'sha256:' || encode(sha256(convert_to(webhook_verify_token, 'UTF8')), 'hex')
 WHERE webhook_verify_token IS NOT NULL AND webhook_verify_token NOT LIKE 'sha256:%';

UPDATE alphadome.bot_tenants SET webhook_verify_token_rotated_at = created_at
 WHERE webhook_verify_token IS NOT NULL AND webhook_verify_token_rotated_at IS NULL;
