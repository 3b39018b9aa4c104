ALTER TABLE copies DROP COLUMN sectors;
ALTER TABLE clients DROP COLUMN partial_copy;
