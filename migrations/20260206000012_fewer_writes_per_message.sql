-- Fewer writes per message. The WAL of a 1,000 msg/s run, counted by
-- record type and relation (docs/benchmarks.md, session 6), showed 41
-- records per message, 9 of them row locks (12 of 51 with three status
-- webhooks per reply). Three kinds of lock came from nothing the rows
-- needed:
--
-- * Every update of outbound_messages (the sender's record after each
--   send) first locked its row and logged the lock, because a BEFORE
--   UPDATE trigger (set_updated_at) must see the row locked. The trigger
--   is gone; every statement that updates a reply sets updated_at = now()
--   itself (the functions below, the sender's failure and release, the
--   dead-letter replay).
-- * Counting a message against the tenant's hourly cap was an upsert; an
--   upsert that finds the row locks it (and logs the lock) before it
--   updates it. The hour's row almost always exists, so a plain update
--   comes first and the upsert only when that found nothing.
-- * A delivery status read its log row FOR UPDATE (a lock, logged) and
--   then updated it; it is now one UPDATE whose rank test PostgreSQL
--   re-checks on the newest version of the row.
--
-- A third of the records' updates were not HOT: the pages were full of
-- newer replies, so each update wrote an entry in both indexes of the
-- table. Replies' pages now keep room for their one update. (Log rows'
-- pages at fillfactor 85 turned only 30 % non-HOT status updates into
-- 22 %, for 15 % more space in the largest table: not done.)

DROP TRIGGER outbound_messages_updated_at ON alphadome.outbound_messages;
ALTER TABLE alphadome.outbound_messages SET (fillfactor = 70);
COMMENT ON COLUMN alphadome.outbound_messages.updated_at IS
    'Set by every statement that updates the row (no trigger: a BEFORE UPDATE trigger locks and logs the row before each update).';

-- The logger's reconcile (apply_status_batch) now sets updated_at too.
GRANT UPDATE (updated_at) ON alphadome.outbound_messages TO alphadome_logger;

CREATE OR REPLACE FUNCTION alphadome.claim_outbound(p_tenant uuid, p_outbound_id text, p_in_reply_to text, p_lease_secs double precision)
RETURNS TABLE (r_claimed boolean, r_state text, r_parts_sent integer, r_wamid text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    RETURN QUERY
        INSERT INTO alphadome.outbound_messages AS o (outbound_id, bot_tenant_id, in_reply_to, state, attempts, claimed_until)
        VALUES (p_outbound_id, p_tenant, p_in_reply_to, 'sending', 1, now() + make_interval(secs => p_lease_secs))
        ON CONFLICT (outbound_id) DO UPDATE SET attempts = o.attempts + 1,
            claimed_until = now() + make_interval(secs => p_lease_secs), updated_at = now()
        WHERE o.state = 'sending' AND (o.claimed_until IS NULL OR o.claimed_until < now())
        RETURNING true, o.state, o.parts_sent, o.whatsapp_message_id;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT false, o.state, o.parts_sent, o.whatsapp_message_id
            FROM alphadome.outbound_messages o WHERE o.outbound_id = p_outbound_id;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION alphadome.record_outbound_progress(p_tenant uuid, p_outbound_id text, p_parts integer, p_wamid text, p_total integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    UPDATE alphadome.outbound_messages SET parts_sent = p_parts, whatsapp_message_id = p_wamid,
        state = CASE WHEN p_parts >= p_total THEN 'sent' ELSE state END,
        claimed_until = CASE WHEN p_parts >= p_total THEN NULL ELSE claimed_until END,
        last_error = NULL, updated_at = now()
    WHERE outbound_id = p_outbound_id;
END
$$;

CREATE OR REPLACE FUNCTION alphadome.count_message(p_tenant uuid, p_user text, p_wamid text, p_per_hour integer, p_per_day integer)
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
            -- The hour's row exists for all but the tenant's first message
            -- of the hour: a plain update, and the upsert only when it
            -- found nothing (no row yet, or the cap reached: the upsert
            -- then refuses it the same way).
            UPDATE alphadome.rate_limit_counters AS c SET count = c.count + 1
            WHERE c.bot_tenant_id = p_tenant AND c.scope = 'tenant'
              AND c.window_start = date_trunc('hour', now()) AND c.count < p_per_hour;
            IF NOT FOUND THEN
                INSERT INTO alphadome.rate_limit_counters AS c (bot_tenant_id, scope, window_start, count)
                VALUES (p_tenant, 'tenant', date_trunc('hour', now()), 1)
                ON CONFLICT (bot_tenant_id, scope, window_start) DO UPDATE SET count = c.count + 1
                WHERE c.count < p_per_hour;
            END IF;
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

CREATE OR REPLACE FUNCTION alphadome.apply_status_batch(p_tenant uuid[], p_wamid text[], p_status text[],
                                             p_at timestamptz[], p_error text[], p_callback text[])
RETURNS TABLE (r_index integer, r_found boolean)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    i integer;
    v_outbound text;
    v_part integer;
BEGIN
    FOR i IN SELECT x.o FROM unnest(p_wamid) WITH ORDINALITY AS x(w, o) ORDER BY x.w, x.o LOOP
        PERFORM set_config('alphadome.tenant_id', p_tenant[i]::text, true);
        -- Any status, 'failed' included, means Meta accepted the send.
        IF p_callback[i] ~ '^reply:.+#[0-9]{1,4}$' THEN
            v_outbound := substring(p_callback[i] FROM '^(.*)#[0-9]+$');
            v_part := substring(p_callback[i] FROM '#([0-9]+)$')::integer;
            UPDATE alphadome.outbound_messages o SET parts_sent = v_part + 1,
                whatsapp_message_id = CASE WHEN v_part = 0 THEN p_wamid[i] ELSE o.whatsapp_message_id END,
                updated_at = now()
            WHERE o.outbound_id = v_outbound AND o.bot_tenant_id = p_tenant[i]
              AND o.state = 'sending' AND o.parts_sent = v_part;
        END IF;
        -- One statement: the rank test is re-checked on the row's newest
        -- version when another batch updated it first, so a status still
        -- never regresses, and no separate lock is taken (and logged).
        UPDATE alphadome.bot_message_logs l SET delivery_status = p_status[i], delivery_status_at = p_at[i],
            error_message = COALESCE(p_error[i], l.error_message),
            metadata = l.metadata || jsonb_build_object('status_' || p_status[i] || '_at', p_at[i])
        WHERE l.id = (SELECT f.id FROM alphadome.bot_message_logs f
                      WHERE f.whatsapp_message_id = p_wamid[i] AND f.bot_tenant_id = p_tenant[i]
                        AND f.direction = 'outgoing'
                      ORDER BY f.created_at LIMIT 1)
          AND alphadome.status_rank(l.delivery_status) < alphadome.status_rank(p_status[i]);
        r_index := i;
        r_found := FOUND;
        IF NOT r_found THEN
            -- Not raised: the row has this status or a later one, or is
            -- not written yet (the caller retries those).
            r_found := EXISTS (SELECT 1 FROM alphadome.bot_message_logs f
                               WHERE f.whatsapp_message_id = p_wamid[i] AND f.bot_tenant_id = p_tenant[i]
                                 AND f.direction = 'outgoing');
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
