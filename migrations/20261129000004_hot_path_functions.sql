-- The per-message hot paths, each one function call: one round trip and,
-- for writes, one commit. A tenant-scoped transaction from the services
-- costs BEGIN, set_config, the statements and COMMIT: four or more round
-- trips and a commit each.
--
-- These functions run as their caller (SECURITY INVOKER, so row-level
-- security and the role's grants apply exactly as to the statements they
-- hold), set the tenant for the statement's own transaction, and do the
-- same work in one call. Each is executable only by the one service role
-- that uses it.
--
-- Under load the services coalesce concurrent calls of the same step
-- (claim, record, admission: handoff and limit check, delivery status) into
-- one call of a batch function (see services/core/src/batch.rs). Each batch
-- function loops over its items in a fixed order and does for every item
-- exactly what the single-item function does, as its caller (every item
-- sets its own tenant, so row-level security and the role's grants apply
-- per item). The fixed order (by the item's key) keeps concurrent batches
-- from locking the same rows in opposite orders.
--
-- The log batch is the exception: one statement writes the rows of every
-- tenant in the batch (one statement per tenant costs nearly half
-- the database's time under load), so it runs as the owner (SECURITY DEFINER),
-- may only insert, checks what row-level security cannot (a training row
-- cited by a log row must belong to that row's tenant; the tenant must
-- exist) and returns only how many rows were new.
--
-- outbound_messages has no updated_at trigger (see 20261129000002): every
-- statement below that updates a reply sets updated_at = now() itself.

-- ---------------------------------------------------------------------------
-- Sender
-- ---------------------------------------------------------------------------

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
REVOKE ALL ON FUNCTION alphadome.claim_outbound(uuid, text, text, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.claim_outbound(uuid, text, text, double precision) TO alphadome_sender;

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
        last_error = NULL, updated_at = now()
    WHERE outbound_id = p_outbound_id;
END
$$;
REVOKE ALL ON FUNCTION alphadome.record_outbound_progress(uuid, text, integer, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.record_outbound_progress(uuid, text, integer, text, integer) TO alphadome_sender;

-- Claims each reply (alphadome.claim_outbound) in outbound id order.
-- A reply whose row is not visible under its tenant gets no result row.
CREATE FUNCTION alphadome.claim_outbound_batch(p_tenant uuid[], p_outbound_id text[], p_in_reply_to text[],
                                               p_lease_secs double precision)
RETURNS TABLE (r_index integer, r_claimed boolean, r_state text, r_parts_sent integer, r_wamid text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT x.o FROM unnest(p_outbound_id) WITH ORDINALITY AS x(id, o) ORDER BY x.id, x.o LOOP
        RETURN QUERY SELECT i, c.r_claimed, c.r_state, c.r_parts_sent, c.r_wamid
            FROM alphadome.claim_outbound(p_tenant[i], p_outbound_id[i], p_in_reply_to[i], p_lease_secs) c;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION alphadome.claim_outbound_batch(uuid[], text[], text[], double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.claim_outbound_batch(uuid[], text[], text[], double precision) TO alphadome_sender;

-- Records the progress of each reply (alphadome.record_outbound_progress),
-- in outbound id order.
CREATE FUNCTION alphadome.record_outbound_progress_batch(p_tenant uuid[], p_outbound_id text[], p_parts integer[],
                                                         p_wamid text[], p_total integer[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT x.o FROM unnest(p_outbound_id) WITH ORDINALITY AS x(id, o) ORDER BY x.id, x.o LOOP
        PERFORM alphadome.record_outbound_progress(p_tenant[i], p_outbound_id[i], p_parts[i], p_wamid[i], p_total[i]);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION alphadome.record_outbound_progress_batch(uuid[], text[], integer[], text[], integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.record_outbound_progress_batch(uuid[], text[], integer[], text[], integer[])
    TO alphadome_sender;

-- ---------------------------------------------------------------------------
-- Responder
-- ---------------------------------------------------------------------------

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
REVOKE ALL ON FUNCTION alphadome.active_handoff(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.active_handoff(uuid, text) TO alphadome_responder;

-- Counts message `p_wamid` from `p_user` against the tenant's limits
-- (NULL: no limit) exactly once however often it is redelivered, and
-- returns the decision: 'allow', 'notice' (the one notice of the window)
-- or 'silent'. Each counter is raised only while below its limit, in one
-- atomic statement; the per-user count is given back when the tenant's
-- hourly cap refuses the message.
--
-- The tenant's hourly counter is raised with a plain UPDATE, and the upsert
-- runs only when that found nothing (the hour's first message, or the cap
-- reached, which the upsert then refuses the same way): an upsert that
-- finds its row locks it first, and writes the lock to the WAL, and the
-- hour's row almost always exists.
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
REVOKE ALL ON FUNCTION alphadome.count_message(uuid, text, text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.count_message(uuid, text, text, integer, integer) TO alphadome_responder;

-- Admits each message: the customer's active handoff
-- (alphadome.active_handoff) and, unless a handoff that another message
-- started silences it, its count against the tenant's limits
-- (alphadome.count_message; 'allow' when the tenant has none), in
-- (tenant, customer, message) order. r_decision is NULL when not counted.
CREATE FUNCTION alphadome.admit_message_batch(p_tenant uuid[], p_user text[], p_wamid text[],
                                              p_per_hour integer[], p_per_day integer[])
RETURNS TABLE (r_index integer, r_trigger text, r_decision text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT x.o FROM unnest(p_tenant, p_user, p_wamid) WITH ORDINALITY AS x(t, u, w, o)
             ORDER BY x.t, x.u, x.w, x.o LOOP
        r_index := i;
        r_trigger := alphadome.active_handoff(p_tenant[i], p_user[i]);
        r_decision := NULL;
        IF r_trigger IS NULL OR r_trigger = p_wamid[i] THEN
            IF p_per_hour[i] IS NULL AND p_per_day[i] IS NULL THEN
                r_decision := 'allow';
            ELSE
                r_decision := alphadome.count_message(p_tenant[i], p_user[i], p_wamid[i], p_per_hour[i], p_per_day[i]);
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION alphadome.admit_message_batch(uuid[], text[], text[], integer[], integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.admit_message_batch(uuid[], text[], text[], integer[], integer[])
    TO alphadome_responder;

-- ---------------------------------------------------------------------------
-- Logger
-- ---------------------------------------------------------------------------

-- Applies delivery statuses to outgoing log rows, never moving a row back
-- to a lower state, in (message, arrival) order. r_found says whether the
-- outgoing row exists (a status can overtake its row).
--
-- A status whose callback data names one of the platform's sends
-- ("<outbound_id>#<part>", set by the sender as biz_opaque_callback_data)
-- also proves that part went out: a send whose answer never came (a
-- time-out, a 5xx) is marked as sent here, so the sender, trying again
-- later, sends only what Meta does not have (protocols.md: reconcile from
-- status webhooks, do not resend blindly).
--
-- Each status is one UPDATE of its log row, with the rank test in its WHERE
-- clause: PostgreSQL re-checks it on the row's newest version when another
-- batch updated the row first, so a status never regresses, and no separate
-- row lock is taken (and written to the WAL) as a SELECT ... FOR UPDATE
-- would.
CREATE FUNCTION alphadome.apply_status_batch(p_tenant uuid[], p_wamid text[], p_status text[],
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
REVOKE ALL ON FUNCTION alphadome.apply_status_batch(uuid[], text[], text[], timestamptz[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.apply_status_batch(uuid[], text[], text[], timestamptz[], text[], text[])
    TO alphadome_logger;

-- Inserts a batch of log rows of any tenants (idempotent by dedup_key) and
-- mirrors the new ones to public.conversations with their tenant's brand.
-- Insert only; rows of unknown tenants are dropped, and so are citations of
-- another tenant's training rows. Returns how many rows were new.
--
-- The batch is tried as a plain insert first. ON CONFLICT DO NOTHING would
-- cost every row a speculative insertion (about 1.6 times a plain insert),
-- and a batch holding an already-written row is rare (a redelivery after a
-- lost ack), so only a batch that hits the unique key is written again, in
-- the same call, with ON CONFLICT: the first row of each key is kept, and
-- only rows new to bot_message_logs are mirrored.
CREATE FUNCTION alphadome.write_message_logs(
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
REVOKE ALL ON FUNCTION alphadome.write_message_logs(uuid[], text[], uuid[], text[], text[], text[], boolean[], text[],
    text[], text[], uuid[], jsonb[], timestamptz[], text[], jsonb[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.write_message_logs(uuid[], text[], uuid[], text[], text[], text[], boolean[], text[],
    text[], text[], uuid[], jsonb[], timestamptz[], text[], jsonb[]) TO alphadome_logger;

-- ---------------------------------------------------------------------------
-- Responder: reads of the conversation log
-- ---------------------------------------------------------------------------

-- The log (bot_message_logs) is the logger's table; the responder reads it
-- only through these two functions, each one round trip under the tenant
-- it sets.

-- The customer's recent turns with the tenant (newest first, at most
-- p_limit, within 24 hours, the message being answered left out): the
-- conversation history an AI answer is given.
CREATE FUNCTION alphadome.recent_turns(p_tenant uuid, p_user text, p_exclude_wamid text, p_limit integer)
RETURNS TABLE (r_direction text, r_text text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    RETURN QUERY
        SELECT l.direction, l.message_text FROM alphadome.bot_message_logs l
        WHERE l.bot_tenant_id = p_tenant AND l.user_phone = p_user
          AND l.created_at > now() - interval '24 hours'
          AND l.whatsapp_message_id IS DISTINCT FROM p_exclude_wamid
        ORDER BY l.created_at DESC LIMIT p_limit;
END
$$;

-- Why the bot's last reply to the customer within the past hour was
-- chosen (its metadata's reason: 'fallback', 'faq_match', ...), leaving out
-- the reply to p_exclude_in_reply_to; NULL when there is none. Two
-- fallbacks in a row hand the conversation to a person.
CREATE FUNCTION alphadome.last_reply_reason(p_tenant uuid, p_user text, p_exclude_in_reply_to text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    v_reason text;
BEGIN
    PERFORM set_config('alphadome.tenant_id', p_tenant::text, true);
    SELECT l.metadata->>'reason' INTO v_reason FROM alphadome.bot_message_logs l
    WHERE l.bot_tenant_id = p_tenant AND l.user_phone = p_user AND l.direction = 'outgoing'
      AND l.created_at > now() - interval '1 hour'
      AND l.metadata->>'in_reply_to' IS DISTINCT FROM p_exclude_in_reply_to
    ORDER BY l.created_at DESC LIMIT 1;
    RETURN v_reason;
END
$$;

REVOKE ALL ON FUNCTION alphadome.recent_turns(uuid, text, text, integer),
    alphadome.last_reply_reason(uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.recent_turns(uuid, text, text, integer),
    alphadome.last_reply_reason(uuid, text, text) TO alphadome_responder;

-- ---------------------------------------------------------------------------
-- Responder: housekeeping of its limit records
-- ---------------------------------------------------------------------------

-- Removes per-message limit decisions, counters and notices older than
-- p_days (kept longer than Meta retries a webhook, so a late retry still
-- finds its first decision); returns the rows removed. Every tenant's
-- records at once, so it runs as the owner; it deletes nothing else.
CREATE FUNCTION alphadome.purge_limit_records(p_days integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = alphadome, pg_temp AS $$
DECLARE
    v_events bigint;
    v_counters bigint;
    v_notices bigint;
BEGIN
    DELETE FROM alphadome.rate_limit_events WHERE created_at < now() - make_interval(days => p_days);
    GET DIAGNOSTICS v_events = ROW_COUNT;
    DELETE FROM alphadome.rate_limit_counters WHERE window_start < now() - make_interval(days => p_days);
    GET DIAGNOSTICS v_counters = ROW_COUNT;
    DELETE FROM alphadome.rate_limit_notices WHERE window_start < now() - make_interval(days => p_days);
    GET DIAGNOSTICS v_notices = ROW_COUNT;
    RETURN v_events + v_counters + v_notices;
END
$$;
REVOKE ALL ON FUNCTION alphadome.purge_limit_records(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.purge_limit_records(integer) TO alphadome_responder;
