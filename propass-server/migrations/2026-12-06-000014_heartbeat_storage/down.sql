ALTER TABLE device_heartbeats DROP COLUMN storage_error;
