-- Per-row costs of the logger and the other hot paths, measured with
-- alphadome-bench (docs/benchmarks.md, session 4).

-- 1. Customers' phones to their public.users ids. public.users belongs to
-- the live system and has no index on phone (and stays untouched), so
-- resolving a batch's customers scanned the whole table for every batch,
-- comparing each row against every phone of the batch: O(users x batch).
-- The logger now looks phones up here (an index probe each) and scans
-- public.users only for phones it has never seen, recording what it found
-- or registered. A user deleted by the live system takes its entry with it.
-- Not tenant data: public.users is shared by design (docs/security.md).
CREATE TABLE alphadome.customer_users (
    phone      text COLLATE "C" PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_users_user_id_idx ON alphadome.customer_users (user_id);
GRANT SELECT, INSERT ON alphadome.customer_users TO alphadome_logger;

-- 2. Byte order for the keys the platform only ever tests for equality.
-- Under the database's default collation every comparison in these unique
-- and lookup indexes went through the locale machinery; "C" compares bytes.
-- Equality means the same thing under both, so no lookup changes meaning.
-- The same for the per-message keys of the other hot paths: the rate-limit
-- decision per message and the counters' scopes (every admission), the
-- reply ids (every claim and record).
ALTER TABLE alphadome.bot_message_logs
    ALTER COLUMN dedup_key TYPE text COLLATE "C",
    ALTER COLUMN whatsapp_message_id TYPE text COLLATE "C";
ALTER TABLE alphadome.rate_limit_events ALTER COLUMN whatsapp_message_id TYPE text COLLATE "C";
ALTER TABLE alphadome.rate_limit_counters ALTER COLUMN scope TYPE text COLLATE "C";
ALTER TABLE alphadome.outbound_messages ALTER COLUMN outbound_id TYPE text COLLATE "C";

-- 3. The log batch without speculative insertion. ON CONFLICT DO NOTHING
-- costs every row a speculative insert (1.6x a plain insert, measured); a
-- batch holding an already-written row is rare (a redelivery after a lost
-- ack), so the batch is tried as a plain insert first and only a batch that
-- hits the unique key is written again, in the same call, with ON CONFLICT.
-- Same contract as before: insert only, rows of unknown tenants dropped,
-- citations of another tenant's training rows dropped, a count returned,
-- and only rows new to bot_message_logs mirrored to public.conversations.
CREATE OR REPLACE FUNCTION alphadome.write_message_logs(
    p_tenant uuid[], p_phone text[], p_user uuid[], p_direction text[], p_text text[], p_wamid text[],
    p_ai boolean[], p_ai_response text[], p_error text[], p_template text[], p_training uuid[],
    p_metadata jsonb[], p_at timestamptz[], p_key text[], p_raw jsonb[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = alphadome, pg_temp AS $$
DECLARE
    v_new integer;
BEGIN
    BEGIN
        WITH u AS (
            SELECT * FROM unnest(p_tenant, p_phone, p_user, p_direction, p_text, p_wamid, p_ai, p_ai_response,
                                 p_error, p_template, p_training, p_metadata, p_at, p_key, p_raw)
                AS u(tenant, phone, usr, direction, text, wamid, ai, ai_response, error, template, training,
                     metadata, at, key, raw)
            WHERE EXISTS (SELECT 1 FROM alphadome.bot_tenants t WHERE t.id = u.tenant)),
        ins AS (
            INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, user_id, direction, message_text,
                whatsapp_message_id, ai_processed, ai_response, error_message, template_used, training_data_id,
                metadata, created_at, dedup_key)
            SELECT u.tenant, u.phone, u.usr, u.direction, u.text, u.wamid, u.ai, u.ai_response, u.error, u.template,
                (SELECT d.id FROM alphadome.bot_training_data d WHERE d.id = u.training AND d.bot_tenant_id = u.tenant),
                u.metadata, u.at, u.key
            FROM u
            RETURNING 1),
        mirror AS (
            INSERT INTO public.conversations (brand_id, user_id, whatsapp_message_id, direction, raw_payload,
                message_text, created_at, updated_at)
            SELECT t.brand_id, u.usr, u.wamid, u.direction, COALESCE(u.raw, u.metadata), u.text, u.at, u.at
            FROM u JOIN alphadome.bot_tenants t ON t.id = u.tenant
            RETURNING 1)
        SELECT count(*) INTO v_new FROM ins;
        RETURN v_new;
    EXCEPTION WHEN unique_violation THEN
        -- Some row was written before: everything above was rolled back;
        -- write only the new rows (the first of any key repeated in the
        -- batch) and mirror only those.
        NULL;
    END;
    WITH u AS (
        SELECT DISTINCT ON (key) * FROM unnest(p_tenant, p_phone, p_user, p_direction, p_text, p_wamid, p_ai,
                             p_ai_response, p_error, p_template, p_training, p_metadata, p_at, p_key, p_raw)
            WITH ORDINALITY AS u(tenant, phone, usr, direction, text, wamid, ai, ai_response, error, template,
                 training, metadata, at, key, raw, o)
        WHERE EXISTS (SELECT 1 FROM alphadome.bot_tenants t WHERE t.id = u.tenant)
        ORDER BY key, o),
    ins AS (
        INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, user_id, direction, message_text,
            whatsapp_message_id, ai_processed, ai_response, error_message, template_used, training_data_id,
            metadata, created_at, dedup_key)
        SELECT u.tenant, u.phone, u.usr, u.direction, u.text, u.wamid, u.ai, u.ai_response, u.error, u.template,
            (SELECT d.id FROM alphadome.bot_training_data d WHERE d.id = u.training AND d.bot_tenant_id = u.tenant),
            u.metadata, u.at, u.key
        FROM u
        ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key),
    mirror AS (
        INSERT INTO public.conversations (brand_id, user_id, whatsapp_message_id, direction, raw_payload,
            message_text, created_at, updated_at)
        SELECT t.brand_id, u.usr, u.wamid, u.direction, COALESCE(u.raw, u.metadata), u.text, u.at, u.at
        FROM u JOIN ins ON ins.dedup_key = u.key JOIN alphadome.bot_tenants t ON t.id = u.tenant
        RETURNING 1)
    SELECT count(*) INTO v_new FROM ins;
    RETURN v_new;
END
$$;
