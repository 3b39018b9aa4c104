ALTER TABLE quotas DROP COLUMN version;
