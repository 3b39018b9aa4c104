-- MIFARE keys an operator gave for a client's badges (12 upper-case hex
-- digits each), sent by pull to the kiosks serving the client. Secrets: the
-- admin API and the audit log show how many, never which.
ALTER TABLE clients ADD COLUMN reader_keys TEXT[] NOT NULL DEFAULT '{}';

-- A device id is what DeviceId::parse accepts: 1 to 128 printable ASCII
-- characters, no spaces. Every writer parses it; rows are read back as
-- DeviceId, so the database refuses what no reader could parse.
ALTER TABLE devices ADD CONSTRAINT devices_device_id_form CHECK (device_id ~ '^[!-~]{1,128}$');
