-- Row-level security: the second wall between tenants.
--
-- The services run as non-owner, least-privilege roles (the connection user
-- switches to them with SET ROLE; see services/core/src/db.rs), and every
-- tenant-scoped transaction names its tenant with
--   SELECT set_config('alphadome.tenant_id', '<uuid>', true)
-- (transaction-local, so a pooled connection never carries a stale tenant).
-- Every table holding a bot_tenant_id, and bot_tenants itself, has RLS
-- enabled and forced, with a policy that shows a service role only the rows
-- of the tenant it set. The admin path (the CLI, the admin service) runs as
-- the owner and sees all. Cross-tenant work the services need goes through
-- the few SECURITY DEFINER functions at the end, each returning no more than
-- its job needs. The public tables get no RLS: they are shared by design.

-- ---------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------

-- alphadome_service is the group; each service has its own role in it.
-- Roles are shared by every database of the cluster, so several databases
-- migrating at once may race to create them: a role that appeared
-- meanwhile is fine.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['alphadome_service', 'alphadome_ingress', 'alphadome_responder',
                             'alphadome_sender', 'alphadome_logger'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    -- Each service role is a direct member of alphadome_service, and the
    -- connection user may act as each (SET ROLE).
    FOREACH r IN ARRAY ARRAY['alphadome_ingress', 'alphadome_responder', 'alphadome_sender', 'alphadome_logger'] LOOP
        BEGIN
            IF NOT pg_has_role(r, 'alphadome_service', 'MEMBER') THEN
                EXECUTE format('GRANT alphadome_service TO %I', r);
            END IF;
            IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
                EXECUTE format('GRANT %I TO %I', r, current_user);
            END IF;
        EXCEPTION WHEN unique_violation OR duplicate_object OR internal_error THEN
            -- granted concurrently by another migration
            NULL;
        END;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------
-- Who sees what
-- ---------------------------------------------------------------------------

-- The tenant the current transaction acts for (NULL when none is set).
CREATE FUNCTION alphadome.current_tenant() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT NULLIF(current_setting('alphadome.tenant_id', true), '')::uuid
$$;

-- Whether the current role is one of the service roles (a direct member
-- of alphadome_service), not the owner that may merely act as them.
CREATE FUNCTION alphadome.is_service_role() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_auth_members m
        JOIN pg_roles g ON g.oid = m.roleid
        JOIN pg_roles u ON u.oid = m.member
        WHERE g.rolname = 'alphadome_service' AND u.rolname = current_user)
$$;

-- The policies' rule as one function, for checks outside the policies: a
-- service role sees only the tenant it set; the owner and admins see all.
CREATE FUNCTION alphadome.tenant_visible(t uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT t = alphadome.current_tenant() OR NOT alphadome.is_service_role()
$$;

-- One policy, tenant_isolation, per tenant table, for reads and writes
-- alike (WITH CHECK: no row can be written into, or moved to, another
-- tenant). The policies spell out tenant_visible's rule with each function
-- wrapped in a scalar sub-select: is_service_role() is a catalog join that
-- PostgreSQL cannot inline, so called per row it would run for every row a
-- statement touches whose tenant is not the one set (every row, for the
-- owner and the functions that run as it). A sub-select is evaluated once
-- per statement (an InitPlan); who sees what is the same.
--
-- The tables are found in the catalog: every base table of the schema with
-- a bot_tenant_id column (credential_audit_log included, where the column
-- is nullable), so none can be left out.
DO $$
DECLARE
    tbl text;
BEGIN
    FOR tbl IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_schema, table_name)
        WHERE c.table_schema = 'alphadome' AND c.column_name = 'bot_tenant_id' AND t.table_type = 'BASE TABLE'
    LOOP
        EXECUTE format('ALTER TABLE alphadome.%I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE alphadome.%I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY tenant_isolation ON alphadome.%I '
                       'USING (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role())) '
                       'WITH CHECK (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))',
                       tbl);
    END LOOP;
END
$$;

-- The tenant row itself, keyed by id.
ALTER TABLE alphadome.bot_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE alphadome.bot_tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alphadome.bot_tenants
    USING (id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))
    WITH CHECK (id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()));

-- ---------------------------------------------------------------------------
-- Least privilege
-- ---------------------------------------------------------------------------
--
-- Every service reads the tenant configuration (its own rows only, by the
-- policies); beyond that each gets what its job needs. The per-message
-- functions of 20261129000004 carry their own grants.

-- All services.
GRANT USAGE ON SCHEMA alphadome, public TO alphadome_service;
GRANT SELECT ON alphadome.bot_templates, alphadome.bot_training_data, alphadome.bot_control_settings TO alphadome_service;
-- Tenant rows without their credentials (nor the verify token digests,
-- which only verify_token_digests() below reads); each credential only to
-- the one service that uses it (the admin path, as owner, reads them all).
GRANT SELECT (id, client_name, client_phone, client_email, brand_id, point_of_contact_name, point_of_contact_phone,
    whatsapp_phone_number_id, whatsapp_business_account_id, whatsapp_token_expires_at, whatsapp_token_invalid_at,
    ai_provider, ai_model, ai_base_url, is_active, is_verified, webhook_url, metadata, created_at, updated_at)
    ON alphadome.bot_tenants TO alphadome_service;
GRANT EXECUTE ON FUNCTION alphadome.current_tenant(), alphadome.tenant_visible(uuid), alphadome.is_service_role(),
    alphadome.append_credential_audit(uuid, text, text, text), alphadome.status_rank(text) TO alphadome_service;

-- Ingress: verifies webhook signatures with the tenant's app secret.
GRANT SELECT (whatsapp_app_secret) ON alphadome.bot_tenants TO alphadome_ingress;

-- Responder: the AI key, reads logs (conversation history), keeps the
-- limits and handoffs.
GRANT SELECT (ai_api_key) ON alphadome.bot_tenants TO alphadome_responder;
GRANT SELECT ON alphadome.bot_message_logs TO alphadome_responder;
GRANT SELECT, INSERT, UPDATE ON alphadome.rate_limit_events, alphadome.rate_limit_counters TO alphadome_responder;
GRANT SELECT, INSERT ON alphadome.rate_limit_notices TO alphadome_responder;
GRANT SELECT, INSERT, UPDATE ON alphadome.conversation_handoffs TO alphadome_responder;

-- Sender: the WhatsApp token, the replies, and marking a token Meta
-- rejected (code 190).
GRANT SELECT (whatsapp_access_token) ON alphadome.bot_tenants TO alphadome_sender;
GRANT SELECT, INSERT, UPDATE ON alphadome.outbound_messages TO alphadome_sender;
GRANT UPDATE (whatsapp_token_invalid_at) ON alphadome.bot_tenants TO alphadome_sender;

-- Logger: inserts and updates logs, registers customers in public.users and
-- the phone map, mirrors messages to public.conversations. It reconciles
-- the platform's own sends from their statuses (apply_status_batch): it may
-- read replies and raise their progress only.
GRANT SELECT, INSERT, UPDATE ON alphadome.bot_message_logs TO alphadome_logger;
GRANT SELECT, INSERT ON public.users TO alphadome_logger;
GRANT INSERT ON public.conversations TO alphadome_logger;
GRANT SELECT, INSERT ON alphadome.customer_users TO alphadome_logger;
GRANT SELECT, UPDATE (parts_sent, whatsapp_message_id, updated_at) ON alphadome.outbound_messages TO alphadome_logger;

-- ---------------------------------------------------------------------------
-- Narrow cross-tenant paths (SECURITY DEFINER: they run as the owner)
-- ---------------------------------------------------------------------------

-- The audit trail is written only through append_credential_audit: it must
-- read the last hash of every tenant's rows, which a service role's policy
-- hides.
ALTER FUNCTION alphadome.append_credential_audit(uuid, text, text, text) SECURITY DEFINER;
ALTER FUNCTION alphadome.append_credential_audit(uuid, text, text, text) SET search_path = alphadome, pg_temp;

-- Caches: which tenants exist and when each last changed.
CREATE FUNCTION alphadome.tenant_versions() RETURNS TABLE (id uuid, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = alphadome, pg_temp AS $$
    SELECT id, updated_at FROM alphadome.bot_tenants
$$;

-- Ingress: which tenant a webhook's phone number id belongs to.
CREATE FUNCTION alphadome.tenant_by_phone_number_id(p text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = alphadome, pg_temp AS $$
    SELECT id FROM alphadome.bot_tenants WHERE whatsapp_phone_number_id = p
$$;

-- Ingress: the verify token digests (current, and previous in its grace
-- period), for the constant-time comparison of Meta's handshake.
CREATE FUNCTION alphadome.verify_token_digests() RETURNS TABLE (id uuid, current_digest text, previous_digest text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = alphadome, pg_temp AS $$
    SELECT id, webhook_verify_token,
           CASE WHEN webhook_verify_token_previous_expires_at > now() THEN webhook_verify_token_previous END
    FROM alphadome.bot_tenants WHERE webhook_verify_token IS NOT NULL
$$;

REVOKE ALL ON FUNCTION alphadome.tenant_versions(), alphadome.tenant_by_phone_number_id(text),
    alphadome.verify_token_digests() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alphadome.tenant_versions() TO alphadome_service;
GRANT EXECUTE ON FUNCTION alphadome.tenant_by_phone_number_id(text), alphadome.verify_token_digests() TO alphadome_ingress;
