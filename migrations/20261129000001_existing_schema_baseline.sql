-- The live system's tables in `public`, exactly as the schema report
-- (seed-schema-report.md, "EXISTING SCHEMA") lists them, and the schema
-- Alphadome's own objects live in.
--
-- On the live database these objects already exist: every statement here is
-- guarded with IF NOT EXISTS, so applying this file there changes nothing
-- (no column altered, no row touched). On an empty database it creates the
-- tables the existing system and Alphadome both rely on. Alphadome writes to
-- them only to keep the existing system working (the logger mirrors messages
-- to public.conversations and registers unknown phones in public.users;
-- `tenant apply` may create a public.brands row).
--
-- Migrations are append-only: never edit this file once committed; add a new
-- migration instead (scripts/check-migrations.sh enforces it).

CREATE SCHEMA IF NOT EXISTS alphadome;

CREATE TABLE IF NOT EXISTS public.users (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone              text,
    full_name          text,
    subscribed         boolean DEFAULT false,
    subscription_type  text,
    subscription_level integer,
    created_at         timestamptz DEFAULT now(),
    updated_at         timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.brands (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    is_platform_owner boolean DEFAULT false
);

CREATE TABLE IF NOT EXISTS public.conversations (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id            uuid REFERENCES public.brands (id),
    user_id             uuid REFERENCES public.users (id),
    whatsapp_message_id text,
    direction           text,
    raw_payload         jsonb,
    message_text        text,
    created_at          timestamptz DEFAULT now(),
    updated_at          timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.subscriptions (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                   uuid REFERENCES public.users (id),
    phone                     text,
    amount                    integer,
    plan_type                 text,
    level                     integer,
    status                    text,
    mpesa_checkout_request_id text,
    account_ref               text,
    metadata                  jsonb,
    created_at                timestamptz DEFAULT now(),
    updated_at                timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.user_sessions (
    phone      text PRIMARY KEY,
    context    jsonb,
    updated_at timestamptz DEFAULT now()
);
