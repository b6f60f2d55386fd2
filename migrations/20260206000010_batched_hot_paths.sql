-- Batches: one round trip and one commit for many messages.
--
-- Under load the services coalesce concurrent calls of the per-message hot
-- paths (claim, record, admission: handoff and limit check, delivery status) into
-- one call of the batch functions below (see services/core/src/batch.rs).
-- Each batch function loops over its items in a fixed order and does for
-- every item exactly what the single-item function does, as its caller
-- (SECURITY INVOKER: every item sets its own tenant, so row-level security
-- and the role's grants apply per item exactly as before). The fixed order
-- (by the item's key) keeps concurrent batches from locking the same rows
-- in opposite orders.
--
-- The log batch is the exception: one statement writes the rows of every
-- tenant in the batch (one statement per tenant was 45 % of the database's
-- time under load), so it runs as the owner (SECURITY DEFINER), may only
-- insert, checks what row-level security cannot (a training row cited by a
-- log row must belong to that row's tenant; the tenant must exist) and
-- returns only how many rows were new.

-- Row-level security once per statement, not once per row. The policies
-- called alphadome.tenant_visible(), which calls is_service_role(), a
-- catalog join that PostgreSQL cannot inline: it ran for every row a
-- statement touched whenever the row's tenant was not the one set (every
-- row, for the owner and the functions that run as it). The same test, with
-- each function wrapped in a scalar sub-select, is evaluated once per
-- statement (an InitPlan). Who sees what is unchanged.
DO $$
DECLARE
    tbl text;
    visible text := '(%1$s = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))';
BEGIN
    FOR tbl IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_schema, table_name)
        WHERE c.table_schema = 'alphadome' AND c.column_name = 'bot_tenant_id' AND t.table_type = 'BASE TABLE'
    LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON alphadome.%I', tbl);
        EXECUTE format('CREATE POLICY tenant_isolation ON alphadome.%I USING %s WITH CHECK %s',
                       tbl, format(visible, 'bot_tenant_id'), format(visible, 'bot_tenant_id'));
    END LOOP;
    DROP POLICY IF EXISTS tenant_isolation ON alphadome.bot_tenants;
    EXECUTE format('CREATE POLICY tenant_isolation ON alphadome.bot_tenants USING %s WITH CHECK %s',
                   format(visible, 'id'), format(visible, 'id'));
END
$$;

-- Sender: claims each reply (alphadome.claim_outbound) in outbound id order.
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

-- Sender: records the progress of each reply (alphadome.record_outbound_progress).
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

-- Responder: admits each message: the customer's active handoff
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

-- Logger: applies delivery statuses to outgoing log rows, never moving a
-- row back to a lower state, in (message, arrival) order. r_found says
-- whether the outgoing row exists (a status can overtake its row).
--
-- A status whose callback data names one of the platform's sends
-- ("<outbound_id>#<part>", set by the sender as biz_opaque_callback_data)
-- also proves that part went out: a send whose answer never came (a
-- time-out, a 5xx) is marked as sent here, so the sender, trying again
-- later, sends only what Meta does not have (protocols.md: reconcile from
-- status webhooks, do not resend blindly).
CREATE FUNCTION alphadome.apply_status_batch(p_tenant uuid[], p_wamid text[], p_status text[],
                                             p_at timestamptz[], p_error text[], p_callback text[])
RETURNS TABLE (r_index integer, r_found boolean)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
DECLARE
    i integer;
    v_id uuid;
    v_status text;
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
                whatsapp_message_id = CASE WHEN v_part = 0 THEN p_wamid[i] ELSE o.whatsapp_message_id END
            WHERE o.outbound_id = v_outbound AND o.bot_tenant_id = p_tenant[i]
              AND o.state = 'sending' AND o.parts_sent = v_part;
        END IF;
        SELECT l.id, l.delivery_status INTO v_id, v_status FROM alphadome.bot_message_logs l
        WHERE l.whatsapp_message_id = p_wamid[i] AND l.bot_tenant_id = p_tenant[i] AND l.direction = 'outgoing'
        ORDER BY l.created_at LIMIT 1 FOR UPDATE;
        r_index := i;
        r_found := FOUND;
        IF r_found AND alphadome.status_rank(v_status) < alphadome.status_rank(p_status[i]) THEN
            UPDATE alphadome.bot_message_logs l SET delivery_status = p_status[i], delivery_status_at = p_at[i],
                error_message = COALESCE(p_error[i], l.error_message),
                metadata = l.metadata || jsonb_build_object('status_' || p_status[i] || '_at', p_at[i])
            WHERE l.id = v_id;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Logger: inserts a batch of log rows of any tenants (idempotent by
-- dedup_key) and mirrors the new ones to public.conversations with their
-- tenant's brand. Returns how many rows were new.
CREATE FUNCTION alphadome.write_message_logs(
    p_tenant uuid[], p_phone text[], p_user uuid[], p_direction text[], p_text text[], p_wamid text[],
    p_ai boolean[], p_ai_response text[], p_error text[], p_template text[], p_training uuid[],
    p_metadata jsonb[], p_at timestamptz[], p_key text[], p_raw jsonb[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = alphadome, pg_temp AS $$
DECLARE
    v_new integer;
BEGIN
    WITH u AS (
        SELECT * FROM unnest(p_tenant, p_phone, p_user, p_direction, p_text, p_wamid, p_ai, p_ai_response,
                             p_error, p_template, p_training, p_metadata, p_at, p_key, p_raw)
            AS u(tenant, phone, usr, direction, text, wamid, ai, ai_response, error, template, training,
                 metadata, at, key, raw)),
    ins AS (
        INSERT INTO alphadome.bot_message_logs (bot_tenant_id, user_phone, user_id, direction, message_text,
            whatsapp_message_id, ai_processed, ai_response, error_message, template_used, training_data_id,
            metadata, created_at, dedup_key)
        SELECT u.tenant, u.phone, u.usr, u.direction, u.text, u.wamid, u.ai, u.ai_response, u.error, u.template,
            (SELECT d.id FROM alphadome.bot_training_data d WHERE d.id = u.training AND d.bot_tenant_id = u.tenant),
            u.metadata, u.at, u.key
        FROM u WHERE EXISTS (SELECT 1 FROM alphadome.bot_tenants t WHERE t.id = u.tenant)
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

REVOKE ALL ON FUNCTION
    alphadome.claim_outbound_batch(uuid[], text[], text[], double precision),
    alphadome.record_outbound_progress_batch(uuid[], text[], integer[], text[], integer[]),
    alphadome.admit_message_batch(uuid[], text[], text[], integer[], integer[]),
    alphadome.apply_status_batch(uuid[], text[], text[], timestamptz[], text[], text[]),
    alphadome.write_message_logs(uuid[], text[], uuid[], text[], text[], text[], boolean[], text[], text[], text[],
        uuid[], jsonb[], timestamptz[], text[], jsonb[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    alphadome.claim_outbound_batch(uuid[], text[], text[], double precision),
    alphadome.record_outbound_progress_batch(uuid[], text[], integer[], text[], integer[]) TO alphadome_sender;
GRANT EXECUTE ON FUNCTION
    alphadome.admit_message_batch(uuid[], text[], text[], integer[], integer[]) TO alphadome_responder;
GRANT EXECUTE ON FUNCTION
    alphadome.apply_status_batch(uuid[], text[], text[], timestamptz[], text[], text[]),
    alphadome.write_message_logs(uuid[], text[], uuid[], text[], text[], text[], boolean[], text[], text[], text[],
        uuid[], jsonb[], timestamptz[], text[], jsonb[]) TO alphadome_logger;

-- The logger reconciles the platform's own sends from their statuses (see
-- apply_status_batch): it may read replies and raise their progress only.
GRANT SELECT, UPDATE (parts_sent, whatsapp_message_id) ON alphadome.outbound_messages TO alphadome_logger;
