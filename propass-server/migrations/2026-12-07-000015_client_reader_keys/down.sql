ALTER TABLE clients DROP COLUMN reader_keys;
