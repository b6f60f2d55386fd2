-- The people who run tenants' bots, and the API tokens of programs that do.
--
-- Roles: platform-admin (every tenant), tenant-admin (one tenant: its
-- settings, templates, training data, conversations, usage; never another
-- tenant's, never a secret's value) and agent (one tenant's conversations
-- and messages; reads its settings). A platform-admin belongs to no tenant;
-- the others to exactly one.
--
-- Passwords are stored as argon2id PHC strings, API tokens as the SHA-256 of
-- the token (shown once, when created). The admin service owns both tables
-- (admin::store) and reads them as the owner to authenticate a request; no
-- service role is granted anything on them.

CREATE TABLE alphadome.dashboard_users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL,
    role          text NOT NULL,
    bot_tenant_id uuid REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    password_hash text NOT NULL,          -- argon2id, PHC string format
    disabled_at   timestamptz,            -- a disabled person can no longer log in
    last_login_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dashboard_users_email_key UNIQUE (email),
    -- Stored as typed, lower-cased: one person, one row, however they type it.
    CONSTRAINT dashboard_users_email_lower CHECK (email = lower(email) AND email LIKE '%_@_%'),
    CONSTRAINT dashboard_users_role_check CHECK (role IN ('platform-admin', 'tenant-admin', 'agent')),
    CONSTRAINT dashboard_users_role_tenant CHECK ((role = 'platform-admin') = (bot_tenant_id IS NULL)),
    CONSTRAINT dashboard_users_password_argon2id CHECK (password_hash LIKE '$argon2id$%')
);
CREATE INDEX dashboard_users_tenant_idx ON alphadome.dashboard_users (bot_tenant_id);
CREATE TRIGGER dashboard_users_updated_at BEFORE UPDATE ON alphadome.dashboard_users
    FOR EACH ROW EXECUTE FUNCTION alphadome.set_updated_at();

CREATE TABLE alphadome.api_tokens (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    token_digest  text NOT NULL,          -- hex SHA-256 of the token
    role          text NOT NULL,
    bot_tenant_id uuid REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,            -- a revoked token is refused; the row stays as a record
    CONSTRAINT api_tokens_token_digest_key UNIQUE (token_digest),
    CONSTRAINT api_tokens_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    CONSTRAINT api_tokens_role_check CHECK (role IN ('platform-admin', 'tenant-admin', 'agent')),
    CONSTRAINT api_tokens_role_tenant CHECK ((role = 'platform-admin') = (bot_tenant_id IS NULL)),
    CONSTRAINT api_tokens_digest_hex CHECK (token_digest ~ '^[0-9a-f]{64}$')
);
-- A name names one live token (revoke by name); revoked ones keep theirs.
CREATE UNIQUE INDEX api_tokens_live_name_key ON alphadome.api_tokens (name) WHERE revoked_at IS NULL;

-- Row-level security as on every table with a bot_tenant_id, so a service
-- role acting for one tenant could never see another's people or tokens
-- (no service role is granted these tables at all).
ALTER TABLE alphadome.dashboard_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE alphadome.dashboard_users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alphadome.dashboard_users
    USING (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))
    WITH CHECK (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()));
ALTER TABLE alphadome.api_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE alphadome.api_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alphadome.api_tokens
    USING (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))
    WITH CHECK (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()));
