-- The per-message hot paths in one round trip each. A tenant-scoped
-- transaction from the services costs BEGIN, set_config, the statements
-- and COMMIT: four or more round trips and, for writes, a commit each.
-- These functions run as their caller (SECURITY INVOKER, so row-level
-- security and the role's grants apply exactly as before), set the tenant
-- for the statement's own transaction, and do the same work in one call.

-- Claims the reply `p_outbound_id` for sending (see the sender): a new
-- row, or a row still 'sending' whose lease ran out. r_claimed says
-- whether this caller holds it now; otherwise r_state tells why not.
CREATE FUNCTION alphadome.claim_outbound(p_tenant uuid, p_outbound_id text, p_in_reply_to text, p_lease_secs double precision)
RETURNS TABLE (r_claimed boolean, r_state text, r_parts_sent integer, r_wamid text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    RETURN QUERY
        INSERT INTO alphadome.outbound_messages AS o (outbound_id, bot_tenant_id, in_reply_to, state, attempts, claimed_until)
        VALUES (p_outbound_id, p_tenant, p_in_reply_to, 'sending', 1, now() + make_interval(secs => p_lease_secs))
        ON CONFLICT (outbound_id) DO UPDATE SET attempts = o.attempts + 1,
            claimed_until = now() + make_interval(secs => p_lease_secs)
        WHERE o.state = 'sending' AND (o.claimed_until IS NULL OR o.claimed_until < now())
        RETURNING true, o.state, o.parts_sent, o.whatsapp_message_id;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT false, o.state, o.parts_sent, o.whatsapp_message_id
            FROM alphadome.outbound_messages o WHERE o.outbound_id = p_outbound_id;
    END IF;
END
$$;

-- Records that `p_parts` parts of a reply were accepted by Meta; the reply
-- is 'sent' (and its claim released) once all `p_total` are.
CREATE FUNCTION alphadome.record_outbound_progress(p_tenant uuid, p_outbound_id text, p_parts integer, p_wamid text, p_total integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    UPDATE alphadome.outbound_messages SET parts_sent = p_parts, whatsapp_message_id = p_wamid,
        state = CASE WHEN p_parts >= p_total THEN 'sent' ELSE state END,
        claimed_until = CASE WHEN p_parts >= p_total THEN NULL ELSE claimed_until END,
        last_error = NULL
    WHERE outbound_id = p_outbound_id;
END
$$;

-- The trigger wamid of the customer's active handoff ('' when it has
-- none), or NULL when the bot may answer.
CREATE FUNCTION alphadome.active_handoff(p_tenant uuid, p_user text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    v_trigger text;
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    SELECT coalesce(h.trigger_wamid, '') INTO v_trigger
    FROM alphadome.conversation_handoffs h
    WHERE h.bot_tenant_id = p_tenant AND h.user_phone = p_user
      AND h.resumed_at IS NULL AND h.paused_until > now()
    LIMIT 1;
    RETURN v_trigger;
END
$$;

-- Counts message `p_wamid` from `p_user` against the tenant's limits
-- (NULL: no limit) exactly once however often it is redelivered, and
-- returns the decision: 'allow', 'notice' (the one notice of the window)
-- or 'silent'. Each counter is raised only while below its limit, in one
-- atomic upsert; the per-user count is given back when the tenant's hourly
-- cap refuses the message.
CREATE FUNCTION alphadome.count_message(p_tenant uuid, p_user text, p_wamid text, p_per_hour integer, p_per_day integer)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    v_over text;
    v_counted_user boolean := false;
    v_decision text;
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    INSERT INTO alphadome.rate_limit_events (bot_tenant_id, whatsapp_message_id, decision)
    VALUES (p_tenant, p_wamid, 'allow') ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT e.decision INTO v_decision FROM alphadome.rate_limit_events e
        WHERE e.bot_tenant_id = p_tenant AND e.whatsapp_message_id = p_wamid;
        RETURN v_decision;
    END IF;
    IF p_per_day IS NOT NULL THEN
        IF p_per_day > 0 THEN
            INSERT INTO alphadome.rate_limit_counters AS c (bot_tenant_id, scope, window_start, count)
            VALUES (p_tenant, 'user:' || p_user, date_trunc('day', now()), 1)
            ON CONFLICT (bot_tenant_id, scope, window_start) DO UPDATE SET count = c.count + 1
            WHERE c.count < p_per_day;
            v_counted_user := FOUND;
        END IF;
        IF NOT v_counted_user THEN
            v_over := 'day';
        END IF;
    END IF;
    IF v_over IS NULL AND p_per_hour IS NOT NULL THEN
        IF p_per_hour > 0 THEN
            INSERT INTO alphadome.rate_limit_counters AS c (bot_tenant_id, scope, window_start, count)
            VALUES (p_tenant, 'tenant', date_trunc('hour', now()), 1)
            ON CONFLICT (bot_tenant_id, scope, window_start) DO UPDATE SET count = c.count + 1
            WHERE c.count < p_per_hour;
        END IF;
        IF p_per_hour <= 0 OR NOT FOUND THEN
            v_over := 'hour';
            IF v_counted_user THEN
                UPDATE alphadome.rate_limit_counters SET count = count - 1
                WHERE bot_tenant_id = p_tenant AND scope = 'user:' || p_user
                  AND window_start = date_trunc('day', now());
            END IF;
        END IF;
    END IF;
    IF v_over IS NULL THEN
        RETURN 'allow';
    END IF;
    INSERT INTO alphadome.rate_limit_notices (bot_tenant_id, user_phone, window_kind, window_start)
    VALUES (p_tenant, p_user, v_over, date_trunc(v_over, now())) ON CONFLICT DO NOTHING;
    v_decision := CASE WHEN FOUND THEN 'notice' ELSE 'silent' END;
    UPDATE alphadome.rate_limit_events SET decision = v_decision
    WHERE bot_tenant_id = p_tenant AND whatsapp_message_id = p_wamid;
    RETURN v_decision;
END
$$;

REVOKE ALL ON FUNCTION alphadome.claim_outbound(uuid, text, text, double precision),
    alphadome.record_outbound_progress(uuid, text, integer, text, integer),
    alphadome.active_handoff(uuid, text),
    alphadome.count_message(uuid, text, text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.claim_outbound(uuid, text, text, double precision),
    alphadome.record_outbound_progress(uuid, text, integer, text, integer) TO alphadome_sender;
GRANT EXECUTE ON FUNCTION alphadome.active_handoff(uuid, text),
    alphadome.count_message(uuid, text, text, integer, integer) TO alphadome_responder;
