-- The latest heartbeat of each kiosk: what operators see of the fleet
-- (online is derived from it and from last contact, so it survives server
-- restarts and holds across instances).
CREATE TABLE device_heartbeats (
    device_id         TEXT PRIMARY KEY REFERENCES devices (device_id),
    received_at       TIMESTAMPTZ NOT NULL,
    clock_skew_ms     BIGINT NOT NULL,
    agent_version     TEXT NOT NULL,
    pending           BIGINT NOT NULL,
    failed            BIGINT NOT NULL,
    oldest_pending_at TIMESTAMPTZ NULL,
    last_sync_at      TIMESTAMPTZ NULL,
    last_error        TEXT NULL,
    reader            TEXT NOT NULL,
    blanks_written    BIGINT NOT NULL,
    blanks_failed     BIGINT NOT NULL
);
CREATE INDEX copies_device_overdraft ON copies (device_id, received_at) WHERE overdraft;
