ALTER TABLE clients DROP COLUMN lease_low_water;
ALTER TABLE clients DROP COLUMN lease_target;
DROP TABLE leases;
ALTER TABLE quotas DROP COLUMN leased;
