-- Conversations as customers live them: a session per (tenant, customer)
-- with its state and the customer's last message (Meta's 24-hour window),
-- the customer's opt-out of proactive messages, the tenant's approved
-- WhatsApp message templates, and the settings for opening hours,
-- greetings and read receipts. The live system's public.user_sessions
-- (keyed by phone alone, without a tenant) is left to the live system.

-- The tenant's approved WhatsApp message templates: a JSON array of
-- {"name", "language", "parameters": [value names], "use_for": [purposes]},
-- validated by the manifest and the API (core::tenant::WhatsAppTemplate).
ALTER TABLE alphadome.bot_tenants
    ADD COLUMN whatsapp_templates jsonb NOT NULL DEFAULT '[]'::jsonb
        CONSTRAINT bot_tenants_whatsapp_templates_check CHECK (jsonb_typeof(whatsapp_templates) = 'array');
GRANT SELECT (whatsapp_templates) ON alphadome.bot_tenants TO alphadome_service;
GRANT UPDATE (whatsapp_templates) ON alphadome.bot_tenants TO alphadome_dashboard;

-- Opening hours ({"timezone", "weekly": {"mon": [["08:00", "18:00"]], ...},
-- "closed_dates": [...]}; NULL: always open), what the bot says out of
-- hours and whether it still answers then, the greeting of a new
-- conversation, whether messages are marked read (with the typing
-- indicator while the AI writes), and the tenant's own opt-out and opt-in
-- words beside STOP and START.
ALTER TABLE alphadome.bot_control_settings
    ADD COLUMN business_hours jsonb
        CONSTRAINT bot_control_settings_business_hours_check
        CHECK (business_hours IS NULL OR jsonb_typeof(business_hours) = 'object'),
    ADD COLUMN out_of_hours_reply text,
    ADD COLUMN answer_out_of_hours boolean NOT NULL DEFAULT true,
    ADD COLUMN greeting_message text,
    ADD COLUMN send_read_receipts boolean NOT NULL DEFAULT true,
    ADD COLUMN opt_out_keywords text[] NOT NULL DEFAULT '{}',
    ADD COLUMN opt_in_keywords text[] NOT NULL DEFAULT '{}',
    -- messages a customer sends within this long of each other are
    -- answered once, as one question (0: each on its own)
    ADD COLUMN debounce_ms integer NOT NULL DEFAULT 1500
        CONSTRAINT bot_control_settings_debounce_check CHECK (debounce_ms BETWEEN 0 AND 10000);

-- One row per customer of a tenant (their phone, or their business-scoped
-- user id when WhatsApp gives no phone).
CREATE TABLE alphadome.conversation_sessions (
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    customer            text NOT NULL CHECK (length(customer) BETWEEN 1 AND 128),
    -- where the conversation stands ('idle', or a flow's step such as
    -- 'payment:choose_plan'), its small context, and when the step lapses
    -- back to idle
    state               text NOT NULL DEFAULT 'idle' CHECK (length(state) BETWEEN 1 AND 64),
    context             jsonb NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(context) = 'object' AND octet_length(context::text) <= 8192),
    state_expires_at    timestamptz,
    -- the customer's latest message (which opens Meta's 24-hour window),
    -- and the one before it (a gap of 24 hours makes a new conversation)
    last_inbound_at     timestamptz NOT NULL,
    last_inbound_wamid  text NOT NULL,
    previous_inbound_at timestamptz,
    -- set by STOP (or the tenant's words), cleared by START: no proactive
    -- message goes to the customer meanwhile
    opted_out_at        timestamptz,
    -- when the customer's last STOP or START was written (a late
    -- redelivery of an older one changes nothing)
    opt_changed_at      timestamptz,
    -- the customer's latest messages written within the tenant's
    -- debounce_ms of each other ([{"w": wamid, "t": text, "a": written at,
    -- epoch ms}], oldest first, at most 10):
    -- the last of them answers for all
    burst               jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(burst) = 'array'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_tenant_id, customer)
);
CREATE INDEX conversation_sessions_opted_out ON alphadome.conversation_sessions (bot_tenant_id)
    WHERE opted_out_at IS NOT NULL;

ALTER TABLE alphadome.conversation_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE alphadome.conversation_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alphadome.conversation_sessions
    USING (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))
    WITH CHECK (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()));

-- The window of conversations that started before this table: from the log.
INSERT INTO alphadome.conversation_sessions (bot_tenant_id, customer, last_inbound_at, last_inbound_wamid)
SELECT bot_tenant_id, user_phone, max(created_at), ''
FROM alphadome.bot_message_logs
WHERE direction = 'incoming' AND user_phone IS NOT NULL AND length(user_phone) BETWEEN 1 AND 128
GROUP BY bot_tenant_id, user_phone
ON CONFLICT DO NOTHING;

-- The responder records each message (touch_sessions), opt-outs and flow
-- states; the sender reads the window and the opt-out before a proactive
-- send; the dashboard shows them and checks the window of an agent's reply.
GRANT SELECT, INSERT, UPDATE ON alphadome.conversation_sessions TO alphadome_responder;
GRANT SELECT ON alphadome.conversation_sessions TO alphadome_sender, alphadome_dashboard;

-- The last ten entries of a burst.
CREATE FUNCTION alphadome.last_ten(p_burst jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_agg(e ORDER BY o), '[]'::jsonb)
    FROM jsonb_array_elements(p_burst) WITH ORDINALITY AS x(e, o)
    WHERE o > jsonb_array_length(p_burst) - 10
$$;

-- A customer's burst after message p_wamid (text p_text, written at p_at)
-- is recorded, given the burst before it and when the latest message was
-- written (NULL: the customer's first): the burst goes on when the message
-- follows the latest within the debounce time and starts again otherwise;
-- one recorded after a later message takes its place by time when it
-- falls within the burst; one already there changes nothing. Without a
-- debounce time no burst is kept.
CREATE FUNCTION alphadome.next_burst(p_burst jsonb, p_last_at timestamptz, p_wamid text, p_text text,
                                     p_at timestamptz, p_debounce_ms integer)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_entry jsonb;
BEGIN
    IF p_debounce_ms IS NULL OR p_debounce_ms <= 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    IF p_burst @> jsonb_build_array(jsonb_build_object('w', p_wamid)) THEN
        RETURN p_burst;
    END IF;
    v_entry := jsonb_build_object('w', p_wamid, 't', left(coalesce(p_text, ''), 1000),
                                  'a', floor(extract(epoch FROM p_at) * 1000));
    IF p_last_at IS NULL OR p_at >= p_last_at THEN
        IF p_last_at IS NOT NULL AND p_at <= p_last_at + make_interval(secs => p_debounce_ms / 1000.0) THEN
            RETURN alphadome.last_ten(p_burst || jsonb_build_array(v_entry));
        END IF;
        RETURN jsonb_build_array(v_entry);
    END IF;
    IF jsonb_array_length(p_burst) > 0
       AND (v_entry ->> 'a')::numeric >= (p_burst -> 0 ->> 'a')::numeric - p_debounce_ms THEN
        RETURN alphadome.last_ten((SELECT jsonb_agg(e ORDER BY (e ->> 'a')::numeric)
                                   FROM jsonb_array_elements(p_burst || jsonb_build_array(v_entry)) AS e));
    END IF;
    RETURN p_burst;
END
$$;

-- Records each customer message in its session, in (tenant, customer,
-- message) order, and answers what the conversation was before it: the
-- customer's previous message (NULL: their first), the state (idle when
-- it lapsed), its context, and whether they opted out. A redelivered
-- message answers as it did the first time; a message older than the
-- latest one recorded moves nothing.
CREATE FUNCTION alphadome.touch_sessions(p_tenant uuid[], p_customer text[], p_wamid text[],
                                         p_at timestamptz[], p_text text[], p_debounce_ms integer[])
RETURNS TABLE (r_index integer, r_previous timestamptz, r_state text, r_context jsonb,
               r_opted_out boolean)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT x.o FROM unnest(p_tenant, p_customer, p_wamid) WITH ORDINALITY AS x(t, c, w, o)
             ORDER BY x.t, x.c, x.w, x.o LOOP
        PERFORM set_config('alphadome.tenant_id', p_tenant[i]::text, true);
        r_index := i;
        -- One statement per message: a new customer's row, or the latest
        -- message moved on (a redelivered or older one leaves it, but for
        -- its place in the burst).
        INSERT INTO alphadome.conversation_sessions AS cs
            (bot_tenant_id, customer, last_inbound_at, last_inbound_wamid, burst)
        VALUES (p_tenant[i], p_customer[i], p_at[i], p_wamid[i],
                alphadome.next_burst('[]'::jsonb, NULL, p_wamid[i], p_text[i], p_at[i], p_debounce_ms[i]))
        ON CONFLICT (bot_tenant_id, customer) DO UPDATE SET
            previous_inbound_at = CASE WHEN EXCLUDED.last_inbound_at >= cs.last_inbound_at
                                        AND EXCLUDED.last_inbound_wamid <> cs.last_inbound_wamid
                                       THEN cs.last_inbound_at ELSE cs.previous_inbound_at END,
            last_inbound_at = greatest(cs.last_inbound_at, EXCLUDED.last_inbound_at),
            last_inbound_wamid = CASE WHEN EXCLUDED.last_inbound_at >= cs.last_inbound_at
                                      THEN EXCLUDED.last_inbound_wamid ELSE cs.last_inbound_wamid END,
            burst = alphadome.next_burst(cs.burst, cs.last_inbound_at, p_wamid[i], p_text[i], p_at[i],
                                         p_debounce_ms[i]),
            updated_at = now()
        RETURNING CASE WHEN cs.last_inbound_wamid = p_wamid[i] THEN cs.previous_inbound_at
                       ELSE cs.last_inbound_at END,
                  CASE WHEN cs.state_expires_at <= now() THEN 'idle' ELSE cs.state END,
                  CASE WHEN cs.state_expires_at <= now() THEN '{}'::jsonb ELSE cs.context END,
                  cs.opted_out_at IS NOT NULL
        INTO r_previous, r_state, r_context, r_opted_out;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION alphadome.touch_sessions(uuid[], text[], text[], timestamptz[], text[], integer[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.touch_sessions(uuid[], text[], text[], timestamptz[], text[], integer[])
    TO alphadome_responder;

-- The customer's current burst of messages (see touch_sessions), read when
-- a message's debounce time is over: whether a later message answers for
-- it, and the texts it answers for.
CREATE FUNCTION alphadome.session_burst(p_tenant uuid, p_customer text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    v_burst jsonb;
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    SELECT cs.burst INTO v_burst FROM alphadome.conversation_sessions cs
    WHERE cs.bot_tenant_id = p_tenant AND cs.customer = p_customer;
    RETURN coalesce(v_burst, '[]'::jsonb);
END
$$;
REVOKE ALL ON FUNCTION alphadome.session_burst(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.session_burst(uuid, text) TO alphadome_responder;
