-- A tenant's people edit its profile and credentials from the dashboard
-- (PATCH /api/v1/tenants/{tenant}). The credentials are write-only to the
-- dashboard role: it may UPDATE the secret columns (with ciphertext the
-- admin service made) but, as every service role, never SELECT them. A new
-- WhatsApp token clears the "rejected by Meta" mark.
GRANT UPDATE (client_name, client_email, point_of_contact_name, point_of_contact_phone,
              whatsapp_phone_number_id, whatsapp_business_account_id, whatsapp_token_expires_at,
              whatsapp_token_invalid_at, whatsapp_access_token, whatsapp_app_secret,
              ai_provider, ai_api_key, ai_model, ai_base_url, webhook_url, metadata)
    ON alphadome.bot_tenants TO alphadome_dashboard;
