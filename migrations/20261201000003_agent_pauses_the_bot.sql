-- An agent's reply from the inbox pauses the bot in that conversation (for
-- the tenant's handoff_pause_minutes), so the bot does not talk over a
-- person; "give back to the bot" ends the pause. The dashboard role starts
-- or extends such a pause; the responder owns the table and its SQL
-- (responder::store::pause_for_agent_in).
GRANT INSERT, UPDATE (reason, started_at, paused_until, resumed_at)
    ON alphadome.conversation_handoffs TO alphadome_dashboard;
