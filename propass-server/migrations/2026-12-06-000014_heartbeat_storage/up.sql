-- Why a kiosk's database refuses writes (full or read-only disk), from its
-- latest heartbeat: such a kiosk makes no card, and operators must see it.
ALTER TABLE device_heartbeats ADD COLUMN storage_error TEXT NULL;
