ALTER TABLE devices
    DROP CONSTRAINT devices_lease_sizes,
    DROP COLUMN lease_low_water,
    DROP COLUMN lease_target;
