-- Every change to the platform's configuration: who made it, when, what,
-- and the thing before and after, secrets masked. Written by the admin
-- (admin::changes) in the same transaction as the change it records, so a
-- change and its record commit together or not at all. Append-only, like
-- the credential audit trail.

CREATE TABLE alphadome.change_audit (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor         text NOT NULL,   -- 'user:<email>', 'token:<name>', 'admin-token' or 'cli:<os user>'
    bot_tenant_id uuid,            -- the tenant it concerns (NULL: the platform's); no foreign key: the record outlives its tenant
    action        text NOT NULL,   -- 'tenant.apply', 'tenant.activate', 'user.add', 'token.revoke', ...
    subject       text NOT NULL,   -- what was changed: a tenant id, an e-mail, a token name
    before        jsonb,           -- NULL when it was created
    after         jsonb,           -- NULL when it was removed
    CONSTRAINT change_audit_action_check CHECK (action ~ '^[a-z_]+\.[a-z_-]+$'),
    CONSTRAINT change_audit_shapes CHECK ((before IS NULL OR jsonb_typeof(before) = 'object')
                                          AND (after IS NULL OR jsonb_typeof(after) = 'object'))
);
CREATE INDEX change_audit_tenant_time_idx ON alphadome.change_audit (bot_tenant_id, at DESC);
CREATE INDEX change_audit_time_idx ON alphadome.change_audit (at DESC);

CREATE FUNCTION alphadome.refuse_change_audit_edit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'alphadome.change_audit is append-only';
END;
$$;
CREATE TRIGGER change_audit_append_only BEFORE UPDATE OR DELETE ON alphadome.change_audit
    FOR EACH ROW EXECUTE FUNCTION alphadome.refuse_change_audit_edit();
CREATE TRIGGER change_audit_no_truncate BEFORE TRUNCATE ON alphadome.change_audit
    FOR EACH STATEMENT EXECUTE FUNCTION alphadome.refuse_change_audit_edit();

ALTER TABLE alphadome.change_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE alphadome.change_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alphadome.change_audit
    USING (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))
    WITH CHECK (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()));

-- How a stored secret appears in the record: whether it is set, and a
-- fingerprint of its ciphertext, so a record shows that it changed without
-- anything of its value.
CREATE FUNCTION alphadome.masked_secret(ciphertext text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN ciphertext IS NULL THEN NULL
                ELSE '******** (set, ' || left(encode(sha256(convert_to(ciphertext, 'UTF8')), 'hex'), 8) || ')' END
$$;

-- A tenant's whole configuration as the audit records it: the tenant row
-- (secrets masked, verify tokens as set or not), its settings, its
-- templates and a summary of its training data (how many rows, how many
-- active, and a digest of their content, so any edit shows).
CREATE FUNCTION alphadome.tenant_audit_snapshot(p_tenant uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'tenant', (to_jsonb(t) - 'whatsapp_access_token' - 'whatsapp_app_secret' - 'ai_api_key'
                   - 'webhook_verify_token' - 'webhook_verify_token_previous'
                   - 'webhook_verify_token_previous_expires_at' - 'created_at' - 'updated_at')
                  || jsonb_build_object(
                       'whatsapp_access_token', alphadome.masked_secret(t.whatsapp_access_token),
                       'whatsapp_app_secret', alphadome.masked_secret(t.whatsapp_app_secret),
                       'ai_api_key', alphadome.masked_secret(t.ai_api_key),
                       'webhook_verify_token', alphadome.masked_secret(t.webhook_verify_token)),
        'control_settings', (SELECT to_jsonb(c) - 'id' - 'bot_tenant_id' - 'created_at' - 'updated_at'
                             FROM alphadome.bot_control_settings c WHERE c.bot_tenant_id = t.id),
        'templates', COALESCE((SELECT jsonb_object_agg(p.template_name,
                                 to_jsonb(p) - 'id' - 'bot_tenant_id' - 'template_name' - 'created_at' - 'updated_at')
                               FROM alphadome.bot_templates p WHERE p.bot_tenant_id = t.id), '{}'::jsonb),
        'training_data', (SELECT jsonb_build_object(
                              'rows', count(*),
                              'active', count(*) FILTER (WHERE d.is_active),
                              'digest', left(encode(sha256(convert_to(COALESCE(string_agg(
                                  concat_ws(E'\x1f', d.data_type, d.question, d.answer, d.category, d.priority::text,
                                            d.confidence_score::text, d.is_active::text),
                                  E'\x1e' ORDER BY d.data_type, d.question), ''), 'UTF8')), 'hex'), 16))
                          FROM alphadome.bot_training_data d WHERE d.bot_tenant_id = t.id))
    FROM alphadome.bot_tenants t WHERE t.id = p_tenant
$$;
