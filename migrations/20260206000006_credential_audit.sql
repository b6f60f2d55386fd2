-- Append-only, hash-chained audit trail of credential use: every
-- decryption cache fill, change and rotation of a tenant's credentials.
-- Each row's hash covers the previous row's hash, so an edited or deleted
-- row breaks the chain (`alphadome audit verify`). UPDATE, DELETE and
-- TRUNCATE are refused by trigger, whoever asks.
CREATE TABLE alphadome.credential_audit_log (
    id            bigserial PRIMARY KEY,
    bot_tenant_id uuid,          -- no foreign key: the trail outlives its tenant
    credential    text NOT NULL,
    actor         text NOT NULL, -- 'service:<name>' or 'admin:<who>'
    purpose       text NOT NULL,
    created_at    timestamptz NOT NULL,
    prev_hash     text,
    hash          text NOT NULL
);
CREATE INDEX credential_audit_log_tenant_idx ON alphadome.credential_audit_log (bot_tenant_id, created_at);

CREATE FUNCTION alphadome.credential_audit_digest(prev text, id bigint, tenant uuid, credential text,
                                                  actor text, purpose text, at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(concat_ws('|', coalesce(prev, ''), id::text, coalesce(tenant::text, ''),
        credential, actor, purpose, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')), 'UTF8')), 'hex')
$$;

CREATE FUNCTION alphadome.append_credential_audit(p_tenant uuid, p_credential text, p_actor text, p_purpose text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_prev text;
    v_id   bigint;
    v_at   timestamptz := clock_timestamp();
BEGIN
    -- One writer at a time, so each row links to the one committed before it.
    PERFORM pg_advisory_xact_lock(hashtext('alphadome.credential_audit_log'));
    SELECT hash INTO v_prev FROM alphadome.credential_audit_log ORDER BY id DESC LIMIT 1;
    v_id := nextval(pg_get_serial_sequence('alphadome.credential_audit_log', 'id'));
    INSERT INTO alphadome.credential_audit_log (id, bot_tenant_id, credential, actor, purpose, created_at, prev_hash, hash)
    VALUES (v_id, p_tenant, p_credential, p_actor, p_purpose, v_at, v_prev,
            alphadome.credential_audit_digest(v_prev, v_id, p_tenant, p_credential, p_actor, p_purpose, v_at));
END;
$$;

CREATE FUNCTION alphadome.refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'alphadome.credential_audit_log is append-only';
END;
$$;
CREATE TRIGGER credential_audit_log_append_only BEFORE UPDATE OR DELETE ON alphadome.credential_audit_log
    FOR EACH ROW EXECUTE FUNCTION alphadome.refuse_audit_change();
CREATE TRIGGER credential_audit_log_no_truncate BEFORE TRUNCATE ON alphadome.credential_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION alphadome.refuse_audit_change();
