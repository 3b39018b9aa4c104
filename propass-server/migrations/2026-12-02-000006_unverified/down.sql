ALTER TABLE copies DROP COLUMN unverified;
