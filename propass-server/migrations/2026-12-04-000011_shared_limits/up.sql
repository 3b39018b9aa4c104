-- The login throttle, shared by every instance: one row per counted attempt
-- and key ("user:NAME", "ip:ADDR"). Unlogged: throttle state is worth less
-- than the WAL it would cost, and a crash that empties it only forgives.
CREATE UNLOGGED TABLE login_attempts (
    id  BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL,
    at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_attempts_key ON login_attempts (key, at);
CREATE INDEX login_attempts_at ON login_attempts (at);
