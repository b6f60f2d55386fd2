-- AI answers, message limits and human handoff.

-- How long the bot stays quiet in a conversation handed to a human.
ALTER TABLE alphadome.bot_control_settings
    ADD COLUMN handoff_pause_minutes integer NOT NULL DEFAULT 60
        CONSTRAINT bot_control_settings_handoff_pause_check CHECK (handoff_pause_minutes >= 0);

-- Message limits, shared by every responder instance. One row per counted
-- inbound message makes counting idempotent (a redelivery is not counted
-- twice, and gets the decision its first delivery got).
CREATE TABLE alphadome.rate_limit_events (
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    whatsapp_message_id text NOT NULL,
    decision            text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_tenant_id, whatsapp_message_id),
    CONSTRAINT rate_limit_events_decision_check CHECK (decision IN ('allow', 'notice', 'silent'))
);
CREATE INDEX rate_limit_events_created_idx ON alphadome.rate_limit_events (created_at);

CREATE TABLE alphadome.rate_limit_counters (
    bot_tenant_id uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    scope         text NOT NULL,          -- 'tenant' (per hour) or 'user:<phone>' (per day)
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
