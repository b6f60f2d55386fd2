-- The additive multi-tenant bot schema of the schema report
-- ("PROPOSED NEW SCHEMA"), in the alphadome schema. Nothing in public is
-- altered. Columns the report lacks but the product needs are marked
-- "additive" and listed in docs/schema.md.

CREATE OR REPLACE FUNCTION alphadome.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;

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

    -- Status and control.
    is_active                    boolean NOT NULL DEFAULT false,
    is_verified                  boolean NOT NULL DEFAULT false,
    webhook_verify_token         text,
    webhook_url                  text,

    metadata                     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at                   timestamptz NOT NULL DEFAULT now(),
    updated_at                   timestamptz NOT NULL DEFAULT now(),

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
    CONSTRAINT bot_control_settings_bot_tenant_id_key UNIQUE (bot_tenant_id),
    CONSTRAINT bot_control_settings_limits_check CHECK (
        (max_messages_per_hour IS NULL OR max_messages_per_hour >= 0)
        AND (max_messages_per_user_per_day IS NULL OR max_messages_per_user_per_day >= 0))
);
CREATE TRIGGER bot_control_settings_updated_at BEFORE UPDATE ON alphadome.bot_control_settings
    FOR EACH ROW EXECUTE FUNCTION alphadome.set_updated_at();

CREATE TABLE alphadome.bot_message_logs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    user_phone          text,
    user_id             uuid REFERENCES public.users (id),
    direction           text NOT NULL,
    message_text        text,
    whatsapp_message_id text,
    ai_processed        boolean NOT NULL DEFAULT false,
    ai_response         text,
    error_message       text,
    template_used       text,
    training_data_id    uuid REFERENCES alphadome.bot_training_data (id) ON DELETE SET NULL,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    dedup_key           text NOT NULL,   -- additive: "in:<wamid>" / "out:<inbound wamid>"; makes logging idempotent
    delivery_status     text,            -- additive: sent | delivered | read | played | failed (outgoing rows)
    delivery_status_at  timestamptz,     -- additive: Meta's timestamp of delivery_status
    CONSTRAINT bot_message_logs_direction_check CHECK (direction IN ('incoming', 'outgoing')),
    CONSTRAINT bot_message_logs_delivery_status_check
        CHECK (delivery_status IN ('sent', 'delivered', 'read', 'played', 'failed')),
    CONSTRAINT bot_message_logs_dedup_key_key UNIQUE (dedup_key)
);
CREATE INDEX bot_message_logs_tenant_time_idx
    ON alphadome.bot_message_logs (bot_tenant_id, created_at DESC);
CREATE INDEX bot_message_logs_wamid_idx ON alphadome.bot_message_logs (whatsapp_message_id);
CREATE INDEX bot_message_logs_training_data_idx
    ON alphadome.bot_message_logs (training_data_id) WHERE training_data_id IS NOT NULL;

-- Any change to a tenant's configuration touches the tenant row, so services
-- caching tenant context only need to watch bot_tenants.updated_at.
CREATE OR REPLACE FUNCTION alphadome.touch_tenant() RETURNS trigger
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
