ALTER TABLE devices DROP CONSTRAINT devices_device_id_form;
ALTER TABLE clients DROP COLUMN reader_keys;
