-- The dashboard and its JSON API (/api/v1): signed-in sessions, and the
-- role the API acts as for a tenant.
--
-- Every tenant-scoped API request runs in a transaction acting as
-- alphadome_dashboard for one tenant (SET ROLE by its pool, the tenant set
-- with alphadome.tenant_id as every service sets it): row-level security
-- then shows and accepts that tenant's rows only, so a request naming
-- another tenant's id finds nothing and answers 404 from the database
-- itself. A tenant-bound person's requests act for their own tenant
-- whatever the URL names.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'alphadome_dashboard') THEN
        BEGIN
            CREATE ROLE alphadome_dashboard NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    BEGIN
        IF NOT pg_has_role('alphadome_dashboard', 'alphadome_service', 'MEMBER') THEN
            GRANT alphadome_service TO alphadome_dashboard;
        END IF;
        IF NOT pg_has_role(current_user, 'alphadome_dashboard', 'MEMBER') THEN
            EXECUTE format('GRANT alphadome_dashboard TO %I', current_user);
        END IF;
    EXCEPTION WHEN unique_violation OR duplicate_object OR internal_error THEN
        NULL;
    END;
END
$$;

-- What a tenant's people change from the dashboard (never a credential's
-- value: the secret columns stay unreadable, as for every service role).
-- updated_at: a change to the settings, templates or training data touches
-- the tenant row (touch_tenant), which is what the services' caches watch.
GRANT UPDATE (is_active, updated_at) ON alphadome.bot_tenants TO alphadome_dashboard;
GRANT SELECT, INSERT, UPDATE ON alphadome.bot_control_settings TO alphadome_dashboard;
GRANT SELECT, INSERT, UPDATE, DELETE ON alphadome.bot_templates, alphadome.bot_training_data TO alphadome_dashboard;
-- What it reads: the tenant's log, handoffs, account events, its records.
GRANT SELECT ON alphadome.bot_message_logs, alphadome.account_events TO alphadome_dashboard;
GRANT SELECT, UPDATE (resumed_at) ON alphadome.conversation_handoffs TO alphadome_dashboard;
GRANT SELECT, INSERT ON alphadome.change_audit TO alphadome_dashboard;
GRANT USAGE ON SEQUENCE alphadome.change_audit_id_seq TO alphadome_dashboard;

-- A conversation is one customer's rows of one tenant, newest first: the
-- inbox's list and page, the 24-hour window check and the responder's
-- recent turns all read this way.
CREATE INDEX bot_message_logs_tenant_user_time_idx
    ON alphadome.bot_message_logs (bot_tenant_id, user_phone, created_at DESC);

-- Signed-in dashboard sessions. The cookie holds a random session id; the
-- table only its SHA-256, so a copy of the table signs nobody in. Each
-- session has its own CSRF token, sent back in every form and in the
-- X-CSRF-Token header of the pages' API calls.
CREATE TABLE alphadome.dashboard_sessions (
    id_digest    text PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES alphadome.dashboard_users (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CONSTRAINT dashboard_sessions_digest_hex CHECK (id_digest ~ '^[0-9a-f]{64}$')
);
CREATE INDEX dashboard_sessions_user_idx ON alphadome.dashboard_sessions (user_id);
CREATE INDEX dashboard_sessions_expiry_idx ON alphadome.dashboard_sessions (expires_at);
