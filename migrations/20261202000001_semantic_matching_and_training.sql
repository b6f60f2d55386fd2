-- Understanding customers: the embeddings of each tenant's FAQ texts, kept
-- so a restart does not run the model over every entry again, and training
-- mode's candidates (questions the bot could not answer, grouped by
-- meaning) with the answers the tenant teaches.

-- One vector per distinct text of a tenant's answerable rows (a question,
-- or a question with its answer), keyed by the text's SHA-256 and the
-- model that made it. Written and read by the responder; rows whose text
-- is gone are removed when the tenant's context is rebuilt.
CREATE TABLE alphadome.training_embeddings (
    bot_tenant_id uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    model text NOT NULL,
    text_sha256 bytea NOT NULL CHECK (octet_length(text_sha256) = 32),
    -- little-endian f32s, L2-normalised
    vector bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_tenant_id, model, text_sha256)
);

-- A question customers asked that the bot could not answer with
-- confidence, with the later ones of the same meaning folded into it.
CREATE TABLE alphadome.training_candidates (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bot_tenant_id uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    -- the first phrasing, shown as the question
    question text NOT NULL CHECK (length(question) BETWEEN 1 AND 1000),
    -- a few phrasings (at most five), newest last
    examples text[] NOT NULL DEFAULT '{}',
    -- the group's meaning (the first phrasing's embedding); NULL when the
    -- responder had no model, and then only the same words group
    vector bytea,
    ask_count integer NOT NULL DEFAULT 1 CHECK (ask_count >= 1),
    first_asked_at timestamptz NOT NULL DEFAULT now(),
    last_asked_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'taught', 'dismissed')),
    -- the FAQ entry its answer became
    training_data_id uuid REFERENCES alphadome.bot_training_data (id) ON DELETE SET NULL,
    taught_by text,
    taught_at timestamptz,
    -- the WhatsApp teach flow: when it went to the point of contact, and
    -- the answer they gave that waits for their confirmation
    offered_at timestamptz,
    proposed_answer text CHECK (proposed_answer IS NULL OR length(proposed_answer) BETWEEN 1 AND 4096),
    CHECK (status <> 'taught' OR taught_at IS NOT NULL)
);
CREATE INDEX training_candidates_open ON alphadome.training_candidates (bot_tenant_id, last_asked_at DESC)
    WHERE status = 'open';

-- Each customer message counts once in a candidate, however often it is
-- redelivered.
CREATE TABLE alphadome.training_candidate_asks (
    bot_tenant_id uuid NOT NULL REFERENCES alphadome.bot_tenants (id) ON DELETE CASCADE,
    wamid text NOT NULL,
    candidate_id uuid NOT NULL REFERENCES alphadome.training_candidates (id) ON DELETE CASCADE,
    asked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_tenant_id, wamid)
);
CREATE INDEX training_candidate_asks_candidate ON alphadome.training_candidate_asks (candidate_id);

-- Row-level security as on every tenant table.
DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['training_embeddings', 'training_candidates', 'training_candidate_asks'] LOOP
        EXECUTE format('ALTER TABLE alphadome.%I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE alphadome.%I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY tenant_isolation ON alphadome.%I '
                       'USING (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role())) '
                       'WITH CHECK (bot_tenant_id = (SELECT alphadome.current_tenant()) OR NOT (SELECT alphadome.is_service_role()))',
                       tbl);
    END LOOP;
END
$$;

-- The responder keeps the embeddings, records candidates and runs the
-- WhatsApp teach flow (which adds the taught FAQ entry).
GRANT SELECT, INSERT, DELETE ON alphadome.training_embeddings TO alphadome_responder;
GRANT SELECT, INSERT, UPDATE ON alphadome.training_candidates, alphadome.training_candidate_asks
    TO alphadome_responder;
GRANT INSERT, UPDATE (answer, is_active) ON alphadome.bot_training_data TO alphadome_responder;
-- (the new entry touches the tenant row, which the services' caches watch)
GRANT UPDATE (updated_at) ON alphadome.bot_tenants TO alphadome_responder;
-- The dashboard lists candidates and teaches or dismisses them.
GRANT SELECT, UPDATE (status, training_data_id, taught_by, taught_at, proposed_answer)
    ON alphadome.training_candidates TO alphadome_dashboard;
