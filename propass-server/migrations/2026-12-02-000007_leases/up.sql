-- Leases (escrow): units of a client's quota set aside for one kiosk, which
-- may spend them with no server in reach; no one else can.
--
-- quotas.leased is the sum of the client's leases, kept in the same
-- statements that change them, under the quota row's lock. A grant never
-- takes more than total - used - leased (the free units), so
-- used + leased <= total holds except for copies that had to be recorded
-- without a unit (a seed kiosk's overdraft, flagged in the ledger).
ALTER TABLE quotas ADD COLUMN leased BIGINT NOT NULL DEFAULT 0 CHECK (leased >= 0);

CREATE TABLE leases (
    device_id  TEXT NOT NULL REFERENCES devices (device_id),
    client_id  BIGINT NOT NULL REFERENCES clients (id),
    units      BIGINT NOT NULL CHECK (units >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, client_id)
);
CREATE INDEX leases_client ON leases (client_id);

-- Per-client lease sizes; NULL: the server's defaults (lease_target,
-- lease_low_water).
ALTER TABLE clients ADD COLUMN lease_target BIGINT NULL CHECK (lease_target >= 0);
ALTER TABLE clients ADD COLUMN lease_low_water BIGINT NULL CHECK (lease_low_water >= 0);
