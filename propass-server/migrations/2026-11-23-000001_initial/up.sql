-- PROPASS initial schema.
-- The ledger (`copies`) is the truth: one row per physical card a kiosk made,
-- unique on its idempotency key, never updated but for the overdraft flag set
-- in the same transaction that inserted it.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    device_id  TEXT PRIMARY KEY,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked    BOOLEAN NOT NULL DEFAULT FALSE,
    revoked_at TIMESTAMPTZ
);

CREATE TABLE clients (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- remaining = total - used; negative after an overdraft.
CREATE TABLE quotas (
    client_id  BIGINT PRIMARY KEY REFERENCES clients (id),
    total      BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    used       BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE copies (
    id              BIGSERIAL PRIMARY KEY,
    -- 'op:<uuid>' when the kiosk sent an op_id, else 'dev:<device_id>:<local id>'
    idempotency_key TEXT NOT NULL UNIQUE,
    op_id           UUID,
    device_id       TEXT NOT NULL REFERENCES devices (device_id),
    local_id        BIGINT NOT NULL,
    client_id       BIGINT NOT NULL REFERENCES clients (id),
    uid             TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('copy', 'write')),
    occurred_at     TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    overdraft       BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX copies_client_received ON copies (client_id, received_at);
CREATE INDEX copies_device_local ON copies (device_id, local_id);
