-- Changes to a tenant's WhatsApp Business Account that are not messages:
-- a template approved, rejected or paused, a template's or the number's
-- quality, the number's messaging tier, the account's review. Meta sends
-- them to the same webhook, signed with the same app secret, naming only
-- the account (entry[].id); the ingress publishes one event per tenant of
-- the account and the logger keeps it here, for the dashboard.

CREATE TABLE alphadome.account_events (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bot_tenant_id       uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    business_account_id text NOT NULL,
    field               text NOT NULL,   -- message_template_status_update, phone_number_quality_update, ...
    event               text,            -- value.event: APPROVED, FLAGGED, ... (NULL when the change has none)
    value               jsonb NOT NULL,  -- the change's value, as Meta sent it
    dedup_key           text COLLATE "C" NOT NULL,
    received_at         timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- A webhook Meta delivers again is kept once per tenant.
    CONSTRAINT account_events_tenant_dedup_key UNIQUE (bot_tenant_id, dedup_key)
);
COMMENT ON TABLE alphadome.account_events IS
    'Webhook changes about a tenant''s WhatsApp Business Account (templates, quality, tier, reviews), one row per tenant and change.';
CREATE INDEX account_events_tenant_time_idx
    ON alphadome.account_events (bot_tenant_id, received_at DESC);

-- Row-level security as on every tenant table: a service role sees only the
-- tenant its transaction set.
ALTER TABLE alphadome.account_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE alphadome.account_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alphadome.account_events
    USING (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))
    WITH CHECK (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()));

-- The logger writes them (its table); nobody else may.
GRANT SELECT, INSERT ON alphadome.account_events TO alphadome_logger;

-- The logger writes a batch of events of any tenants in one call, each
-- under its own tenant (row-level security applies per event); returns how
-- many were new.
CREATE FUNCTION alphadome.write_account_events(p_tenant uuid[], p_account text[], p_field text[], p_event text[],
                                               p_value jsonb[], p_key text[], p_at timestamptz[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    i integer;
    v_new integer := 0;
BEGIN
    FOR i IN SELECT x.o FROM unnest(p_key) WITH ORDINALITY AS x(k, o) ORDER BY x.k, x.o LOOP
        PERFORM set_config('alphadome.tenant_id', p_tenant[i]::text, true);
        INSERT INTO alphadome.account_events (bot_tenant_id, business_account_id, field, event, value, dedup_key, received_at)
        VALUES (p_tenant[i], p_account[i], p_field[i], p_event[i], p_value[i], p_key[i], p_at[i])
        ON CONFLICT (bot_tenant_id, dedup_key) DO NOTHING;
        IF FOUND THEN
            v_new := v_new + 1;
        END IF;
    END LOOP;
    RETURN v_new;
END
$$;
REVOKE ALL ON FUNCTION alphadome.write_account_events(uuid[], text[], text[], text[], jsonb[], text[], timestamptz[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.write_account_events(uuid[], text[], text[], text[], jsonb[], text[], timestamptz[])
    TO alphadome_logger;

-- Ingress: the tenants of a WhatsApp Business Account (several numbers, so
-- several tenants, may share one), for routing and for finding the app
-- secrets that may have signed a webhook naming only the account.
CREATE FUNCTION alphadome.tenants_by_business_account_id(p text) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = alphadome, pg_temp AS $$
    SELECT id FROM alphadome.bot_tenants WHERE whatsapp_business_account_id = p ORDER BY id
$$;
REVOKE ALL ON FUNCTION alphadome.tenants_by_business_account_id(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.tenants_by_business_account_id(text) TO alphadome_ingress;

-- Finding an account's tenants is an index probe.
CREATE INDEX bot_tenants_business_account_id_idx
    ON alphadome.bot_tenants (whatsapp_business_account_id) WHERE whatsapp_business_account_id IS NOT NULL;
