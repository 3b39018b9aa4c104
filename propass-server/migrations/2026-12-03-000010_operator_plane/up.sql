-- Operators' browser sessions. The cookie holds a random id; only its
-- SHA-256 is stored, so a database dump opens no session. A session lives
-- in PostgreSQL (not in one server's memory) so that it holds across
-- restarts and instances, and ends with its user (cascade, epoch).
CREATE TABLE admin_sessions (
    id_hash      TEXT PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The user's token epoch at login: a password, role or disable change
    -- bumps it and ends the session.
    user_epoch   BIGINT NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX admin_sessions_user ON admin_sessions (user_id);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);

-- An archived client is kept (its ledger stays) but no longer offered.
ALTER TABLE clients ADD COLUMN archived_at TIMESTAMPTZ NULL;

-- The ledger as operators page through it: newest first by (received_at,
-- id), alone or per client or per kiosk, so that a page deep in a ten-million
-- row ledger costs an index descent, not a scan of the rows before it.
CREATE INDEX copies_received_keyset ON copies (received_at, id);
CREATE INDEX copies_client_keyset ON copies (client_id, received_at, id);
CREATE INDEX copies_device_keyset ON copies (device_id, received_at, id);
CREATE INDEX copies_overdraft_keyset ON copies (received_at, id) WHERE overdraft;
CREATE INDEX copies_unverified_keyset ON copies (received_at, id) WHERE unverified;
DROP INDEX copies_client_received;

-- A client's quota history and a kiosk's audit trail are read by subject.
CREATE INDEX audit_log_subject ON audit_log (subject, id);

-- When a kiosk's last WebSocket closed: a kiosk not heard from since is
-- offline at once, not only once `device_offline_after_secs` have passed.
ALTER TABLE devices ADD COLUMN disconnected_at TIMESTAMPTZ NULL;
