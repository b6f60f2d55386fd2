-- Every table of the multi-tenant bot platform, in schema `alphadome`, and
-- the functions and triggers the tables themselves need. Nothing in `public`
-- is altered.
--
-- The first five tables are the schema report's "PROPOSED NEW SCHEMA";
-- columns the report lacks but the product needs are marked "additive" and
-- listed in docs/schema.md. The others hold the pipeline's durable state
-- (replies, limits, handoffs), the credential audit trail, token alerts and
-- the logger's phone map.
--
-- Column order is part of the schema: `SELECT *` and `to_jsonb(row)` depend
-- on it, so a column is only ever added at the end of its table.
--
-- Keys the platform only ever tests for equality (log dedup keys, wamids,
-- rate-limit scopes, reply ids, phones in the phone map) are COLLATE "C":
-- under the database's default collation every comparison in their unique
-- and lookup indexes goes through the locale machinery, "C" compares bytes.
-- Equality means the same thing under both, so no lookup changes meaning.
--
-- Row-level security, roles and grants: 20261129000003. The per-message
-- functions of the services: 20261129000004.

-- Keeps updated_at on the configuration tables, which no hot path updates.
CREATE FUNCTION alphadome.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------------------
-- Tenants and their configuration
-- ---------------------------------------------------------------------------

CREATE TABLE alphadome.bot_tenants (
    id                           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client_name                  text NOT NULL,
    client_phone                 text NOT NULL,
    client_email                 text,
    brand_id                     uuid REFERENCES public.brands (id),
    point_of_contact_name        text,
    point_of_contact_phone       text,

    -- WhatsApp credentials. Secrets hold application-encrypted ciphertext
    -- (see services/core/src/crypto.rs), never plaintext.
    whatsapp_phone_number_id     text,
    whatsapp_business_account_id text,
    whatsapp_access_token        text,
    whatsapp_token_expires_at    timestamptz,
    whatsapp_app_secret          text,          -- additive: tenant's Meta app secret (encrypted)
    whatsapp_token_invalid_at    timestamptz,   -- additive: set when Meta answered 190; sends held

    -- LLM configuration.
    ai_provider                  text,
    ai_api_key                   text,
    ai_model                     text,
    ai_base_url                  text,          -- additive: base URL for openai_compatible providers

    -- Status and control. webhook_verify_token holds a SHA-256 digest
    -- ("sha256:<hex>"), never the token itself.
    is_active                    boolean NOT NULL DEFAULT false,
    is_verified                  boolean NOT NULL DEFAULT false,
    webhook_verify_token         text,
    webhook_url                  text,

    metadata                     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at                   timestamptz NOT NULL DEFAULT now(),
    updated_at                   timestamptz NOT NULL DEFAULT now(),

    -- Verify token rotation with a grace period: the previous token (its
    -- digest) is still accepted until webhook_verify_token_previous_expires_at,
    -- so the Meta dashboard can be updated without downtime; rotated_at gives
    -- the current token's age.
    webhook_verify_token_previous            text,
    webhook_verify_token_previous_expires_at timestamptz,
    webhook_verify_token_rotated_at          timestamptz,

    CONSTRAINT bot_tenants_client_phone_key UNIQUE (client_phone),
    CONSTRAINT bot_tenants_webhook_verify_token_key UNIQUE (webhook_verify_token),
    CONSTRAINT bot_tenants_whatsapp_phone_number_id_key UNIQUE (whatsapp_phone_number_id),
    CONSTRAINT bot_tenants_ai_provider_check
        CHECK (ai_provider IN ('openai', 'openrouter', 'huggingface', 'openai_compatible')),
    CONSTRAINT bot_tenants_client_phone_digits CHECK (client_phone ~ '^[0-9]{7,15}$'),
    CONSTRAINT bot_tenants_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE alphadome.bot_tenants IS 'One row per business (tenant) using the bot platform.';

CREATE TRIGGER bot_tenants_updated_at BEFORE UPDATE ON alphadome.bot_tenants
    FOR EACH ROW EXECUTE FUNCTION alphadome.set_updated_at();
CREATE INDEX bot_tenants_brand_id_idx ON alphadome.bot_tenants (brand_id);

CREATE TABLE alphadome.bot_templates (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bot_tenant_id        uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    template_name        text NOT NULL,
    description          text,
    system_prompt        text,
    conversation_context jsonb NOT NULL DEFAULT '{}'::jsonb,
    tone                 text NOT NULL DEFAULT 'friendly',
    max_response_length  integer,
    is_active            boolean NOT NULL DEFAULT true,
    is_default           boolean NOT NULL DEFAULT false,
    metadata             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bot_templates_tenant_name_key UNIQUE (bot_tenant_id, template_name),
    CONSTRAINT bot_templates_tone_check CHECK (tone IN ('professional', 'friendly')),
    CONSTRAINT bot_templates_max_response_length_check
        CHECK (max_response_length IS NULL OR max_response_length BETWEEN 1 AND 4096)
);
-- At most one default template per tenant.
CREATE UNIQUE INDEX bot_templates_one_default_idx
    ON alphadome.bot_templates (bot_tenant_id) WHERE is_default;
CREATE TRIGGER bot_templates_updated_at BEFORE UPDATE ON alphadome.bot_templates
    FOR EACH ROW EXECUTE FUNCTION alphadome.set_updated_at();

CREATE TABLE alphadome.bot_training_data (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bot_tenant_id    uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    data_type        text NOT NULL,
    question         text,
    answer           text,
    category         text,
    priority         integer NOT NULL DEFAULT 0,
    confidence_score numeric(4, 3) NOT NULL DEFAULT 1.0,
    is_active        boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bot_training_data_data_type_check
        CHECK (data_type IN ('faq', 'canned_reply', 'example')),
    CONSTRAINT bot_training_data_confidence_score_check
        CHECK (confidence_score >= 0 AND confidence_score <= 1)
);
-- Manifest upserts key training rows by (tenant, type, question).
CREATE UNIQUE INDEX bot_training_data_tenant_type_question_key
    ON alphadome.bot_training_data (bot_tenant_id, data_type, question) NULLS NOT DISTINCT;
-- The responder loads a tenant's active training data by priority.
CREATE INDEX bot_training_data_active_priority_idx
    ON alphadome.bot_training_data (bot_tenant_id, priority DESC) WHERE is_active;
CREATE TRIGGER bot_training_data_updated_at BEFORE UPDATE ON alphadome.bot_training_data
    FOR EACH ROW EXECUTE FUNCTION alphadome.set_updated_at();

CREATE TABLE alphadome.bot_control_settings (
    id                            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bot_tenant_id                 uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    is_bot_enabled                boolean NOT NULL DEFAULT true,
    max_messages_per_hour         integer,
    max_messages_per_user_per_day integer,
    enable_ai_responses           boolean NOT NULL DEFAULT false,
    enable_payment_flow           boolean NOT NULL DEFAULT false,
    enable_training_mode          boolean NOT NULL DEFAULT false,
    enable_auto_reply             boolean NOT NULL DEFAULT true,
    log_conversations             boolean NOT NULL DEFAULT true,
    log_errors                    boolean NOT NULL DEFAULT true,
    escalation_phone              text,
    escalation_email              text,
    fallback_reply                text,   -- additive: reply when nothing matches and AI is off
    metadata                      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at                    timestamptz NOT NULL DEFAULT now(),
    updated_at                    timestamptz NOT NULL DEFAULT now(),
    -- additive: how long the bot stays quiet in a conversation handed to a human.
    handoff_pause_minutes         integer NOT NULL DEFAULT 60
        CONSTRAINT bot_control_settings_handoff_pause_check CHECK (handoff_pause_minutes >= 0),
    CONSTRAINT bot_control_settings_bot_tenant_id_key UNIQUE (bot_tenant_id),
    CONSTRAINT bot_control_settings_limits_check CHECK (
        (max_messages_per_hour IS NULL OR max_messages_per_hour >= 0)
        AND (max_messages_per_user_per_day IS NULL OR max_messages_per_user_per_day >= 0))
);
CREATE TRIGGER bot_control_settings_updated_at BEFORE UPDATE ON alphadome.bot_control_settings
    FOR EACH ROW EXECUTE FUNCTION alphadome.set_updated_at();

-- Any change to a tenant's configuration touches the tenant row, so services
-- caching tenant context only need to watch bot_tenants.updated_at.
CREATE FUNCTION alphadome.touch_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE alphadome.bot_tenants SET updated_at = clock_timestamp()
     WHERE id = COALESCE(NEW.bot_tenant_id, OLD.bot_tenant_id);
    RETURN NULL;
END;
$$;
CREATE TRIGGER bot_templates_touch_tenant
    AFTER INSERT OR UPDATE OR DELETE ON alphadome.bot_templates
    FOR EACH ROW EXECUTE FUNCTION alphadome.touch_tenant();
CREATE TRIGGER bot_training_data_touch_tenant
    AFTER INSERT OR UPDATE OR DELETE ON alphadome.bot_training_data
    FOR EACH ROW EXECUTE FUNCTION alphadome.touch_tenant();
CREATE TRIGGER bot_control_settings_touch_tenant
    AFTER INSERT OR UPDATE OR DELETE ON alphadome.bot_control_settings
    FOR EACH ROW EXECUTE FUNCTION alphadome.touch_tenant();

-- ---------------------------------------------------------------------------
-- Message logs
-- ---------------------------------------------------------------------------

-- Every message in and out, one row each. Rows are written in batches by the
-- logger (alphadome.write_message_logs) and mirrored to public.conversations;
-- an outgoing row's delivery status only ever rises (alphadome.status_rank).
-- The table keeps the default fillfactor: most status updates are HOT
-- already, and keeping room on its pages (fillfactor 85) makes few more of
-- them HOT for 15 % more space in the largest table.
CREATE TABLE alphadome.bot_message_logs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    user_phone          text,
    user_id             uuid REFERENCES public.users (id),
    direction           text NOT NULL,
    message_text        text,
    whatsapp_message_id text COLLATE "C",
    ai_processed        boolean NOT NULL DEFAULT false,
    ai_response         text,
    error_message       text,
    template_used       text,
    training_data_id    uuid REFERENCES alphadome.bot_training_data (id) ON DELETE SET NULL,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    dedup_key           text COLLATE "C" NOT NULL,   -- additive: "in:<wamid>" / "out:<inbound wamid>"; makes logging idempotent
    delivery_status     text,            -- additive: sent | delivered | read | played | failed (outgoing rows)
    delivery_status_at  timestamptz,     -- additive: Meta's timestamp of delivery_status
    CONSTRAINT bot_message_logs_direction_check CHECK (direction IN ('incoming', 'outgoing')),
    CONSTRAINT bot_message_logs_delivery_status_check
        CHECK (delivery_status IN ('sent', 'delivered', 'read', 'played', 'failed')),
    CONSTRAINT bot_message_logs_dedup_key_key UNIQUE (dedup_key)
);
CREATE INDEX bot_message_logs_tenant_time_idx
    ON alphadome.bot_message_logs (bot_tenant_id, created_at DESC);
-- Delivery statuses find their outgoing row by wamid.
CREATE INDEX bot_message_logs_wamid_idx ON alphadome.bot_message_logs (whatsapp_message_id);
CREATE INDEX bot_message_logs_training_data_idx
    ON alphadome.bot_message_logs (training_data_id) WHERE training_data_id IS NOT NULL;

-- Order of delivery states: a status never replaces one of higher rank
-- (Meta's status webhooks arrive out of order; failed is terminal).
CREATE FUNCTION alphadome.status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3
        WHEN 'played' THEN 4 WHEN 'failed' THEN 5 ELSE 0 END
$$;

-- ---------------------------------------------------------------------------
-- Pipeline state
-- ---------------------------------------------------------------------------
--
-- Durable state that JetStream alone cannot give: Meta retries a webhook for
-- up to 7 days, JetStream deduplicates only within minutes.

-- One row per reply the platform intends to send, keyed by an id derived
-- from the inbound wamid. The sender claims the row before calling Meta and
-- records its progress after; a row already sent is never sent again.
-- parts_sent counts the parts of a long reply already accepted by Meta
-- (texts over 4096 characters go out in several messages); a retry resumes
-- after them.
--
-- No BEFORE UPDATE trigger keeps updated_at: such a row trigger makes
-- PostgreSQL lock the row (and write the lock to the WAL) before every
-- update, one extra record for every step of every send. Every statement
-- that updates a reply sets updated_at = now() itself (claim_outbound,
-- record_outbound_progress, apply_status_batch, the sender's failure and
-- release, the dead-letter replay). Fillfactor 70 leaves room on each page
-- for a reply's update, so it stays HOT instead of writing an entry in both
-- indexes on a page full of newer replies.
CREATE TABLE alphadome.outbound_messages (
    outbound_id         text COLLATE "C" PRIMARY KEY,
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    in_reply_to         text,
    state               text NOT NULL DEFAULT 'sending',
    attempts            integer NOT NULL DEFAULT 0,
    claimed_until       timestamptz,
    whatsapp_message_id text,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    parts_sent          integer NOT NULL DEFAULT 0,
    CONSTRAINT outbound_messages_state_check CHECK (state IN ('sending', 'sent', 'failed'))
) WITH (fillfactor = 70);
COMMENT ON COLUMN alphadome.outbound_messages.updated_at IS
    'Set by every statement that updates the row (no trigger: a BEFORE UPDATE trigger locks and logs the row before each update).';
CREATE INDEX outbound_messages_tenant_time_idx
    ON alphadome.outbound_messages (bot_tenant_id, created_at DESC);

-- Message limits, shared by every responder instance. One row per counted
-- inbound message makes counting idempotent (a redelivery is not counted
-- twice, and gets the decision its first delivery got).
CREATE TABLE alphadome.rate_limit_events (
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    whatsapp_message_id text COLLATE "C" NOT NULL,
    decision            text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_tenant_id, whatsapp_message_id),
    CONSTRAINT rate_limit_events_decision_check CHECK (decision IN ('allow', 'notice', 'silent'))
);
-- The admin service's hourly clean-up removes old events by age.
CREATE INDEX rate_limit_events_created_idx ON alphadome.rate_limit_events (created_at);

CREATE TABLE alphadome.rate_limit_counters (
    bot_tenant_id uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    scope         text COLLATE "C" NOT NULL,  -- 'tenant' (per hour) or 'user:<phone>' (per day)
    window_start  timestamptz NOT NULL,
    count         integer NOT NULL DEFAULT 0,
    PRIMARY KEY (bot_tenant_id, scope, window_start)
);

-- At most one "limit reached" notice per user and window.
CREATE TABLE alphadome.rate_limit_notices (
    bot_tenant_id uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    user_phone    text NOT NULL,
    window_kind   text NOT NULL,
    window_start  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_tenant_id, user_phone, window_kind, window_start)
);

-- Conversations handed to a human: the bot stays quiet until paused_until,
-- or until resumed (alphadome conversation resume).
CREATE TABLE alphadome.conversation_handoffs (
    bot_tenant_id uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    user_phone    text NOT NULL,
    reason        text NOT NULL,
    trigger_wamid text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    paused_until  timestamptz NOT NULL,
    resumed_at    timestamptz,
    email_sent_at timestamptz,
    email_error   text,
    PRIMARY KEY (bot_tenant_id, user_phone)
);

-- ---------------------------------------------------------------------------
-- Credential audit trail
-- ---------------------------------------------------------------------------

-- Append-only, hash-chained audit trail of credential use: every
-- decryption cache fill, change and rotation of a tenant's credentials.
-- Each row's hash covers the previous row's hash, so an edited or deleted
-- row breaks the chain (`alphadome audit verify`). UPDATE, DELETE and
-- TRUNCATE are refused by trigger, whoever asks. Rows are written only
-- through append_credential_audit (SECURITY DEFINER, see 20261129000003).
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

-- The hash of one row: SHA-256 over the previous hash and the row's fields.
CREATE FUNCTION alphadome.credential_audit_digest(prev text, id bigint, tenant uuid, credential text,
                                                  actor text, purpose text, at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(concat_ws('|', coalesce(prev, ''), id::text, coalesce(tenant::text, ''),
        credential, actor, purpose, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')), 'UTF8')), 'hex')
$$;

-- Appends one row, chained to the last one.
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

-- ---------------------------------------------------------------------------
-- Token alerts
-- ---------------------------------------------------------------------------

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

-- ---------------------------------------------------------------------------
-- The logger's phone map
-- ---------------------------------------------------------------------------

-- Customers' phones to their public.users ids. public.users belongs to the
-- live system, has no index on phone and gets none (it stays untouched), so
-- resolving a batch's customers there would scan the whole table for every
-- batch, comparing each row against every phone of the batch. The logger
-- looks phones up here (an index probe each) and scans public.users only for
-- phones it has never seen, recording what it found or registered. A user
-- deleted by the live system takes its entry with it. Not tenant data:
-- public.users is shared by design (docs/security.md), so no bot_tenant_id
-- and no row-level security.
CREATE TABLE alphadome.customer_users (
    phone      text COLLATE "C" PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_users_user_id_idx ON alphadome.customer_users (user_id);
