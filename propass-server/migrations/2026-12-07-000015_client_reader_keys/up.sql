-- MIFARE keys an operator gave for a client's badges (12 upper-case hex
-- digits each), sent by pull to the kiosks serving the client. Secrets: the
-- admin API and the audit log show how many, never which.
ALTER TABLE clients ADD COLUMN reader_keys TEXT[] NOT NULL DEFAULT '{}';
