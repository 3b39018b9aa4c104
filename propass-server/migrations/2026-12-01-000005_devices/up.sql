-- Devices as first-class records (trust boundaries).
--
-- A device is pending until an operator approves it, active, or revoked.
-- Devices that existed before this migration were in use: they stay active
-- (or revoked), and keep serving every client they could serve until an
-- operator narrows their assignment.
ALTER TABLE devices ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CONSTRAINT devices_status_check CHECK (status IN ('pending', 'active', 'revoked'));
UPDATE devices SET status = 'revoked' WHERE revoked;
ALTER TABLE devices DROP COLUMN revoked;
ALTER TABLE devices ALTER COLUMN status SET DEFAULT 'pending';
ALTER TABLE devices ADD COLUMN name TEXT NULL;
-- Holds a device credential (enrolled with a code): no password login may use its id.
ALTER TABLE devices ADD COLUMN enrolled BOOLEAN NOT NULL DEFAULT FALSE;
-- Bumped by a revocation or a detected credential reuse: the device's access tokens stop.
ALTER TABLE devices ADD COLUMN token_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN agent_version TEXT NULL;

-- The clients each device serves: pull shows only these, push charges only these.
CREATE TABLE device_clients (
    device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    client_id BIGINT NOT NULL REFERENCES clients (id),
    PRIMARY KEY (device_id, client_id)
);
CREATE INDEX device_clients_client ON device_clients (client_id);
INSERT INTO device_clients (device_id, client_id)
    SELECT d.device_id, c.id FROM devices d CROSS JOIN clients c;

-- One-time enrollment codes, stored as SHA-256 digests (the code itself is
-- shown once, to the operator who created it).
CREATE TABLE enrollment_codes (
    code_hash   TEXT PRIMARY KEY,
    device_name TEXT NULL,
    -- Set when the code re-enrolls a known device (after a revocation or a
    -- detected credential reuse): only that device may use it.
    device_id   TEXT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    client_ids  BIGINT[] NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ NULL,
    used_by     TEXT NULL
);

-- Rotating single-use refresh credentials of enrolled devices, as SHA-256
-- digests. Each use marks the row used and issues its successor; a used one
-- presented again (outside the short reuse grace) revokes the device's chain.
CREATE TABLE device_credentials (
    id               BIGSERIAL PRIMARY KEY,
    device_id        TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    secret_hash      TEXT NOT NULL UNIQUE,
    issued_at        TIMESTAMPTZ NOT NULL,
    -- The absolute end of the chain started by the enrollment.
    chain_expires_at TIMESTAMPTZ NOT NULL,
    used_at          TIMESTAMPTZ NULL,
    successor        BIGINT NULL REFERENCES device_credentials (id),
    revoked          BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX device_credentials_device ON device_credentials (device_id);

-- Per-device usage for the push limits (pushes per minute, new ledger rows
-- per UTC day), counted in the push's own transaction: a refused push
-- counts nothing, and the limits hold across server instances.
CREATE TABLE device_usage (
    device_id     TEXT PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    minute_start  TIMESTAMPTZ NOT NULL,
    minute_pushes INTEGER NOT NULL,
    day           DATE NOT NULL,
    day_items     BIGINT NOT NULL
);
