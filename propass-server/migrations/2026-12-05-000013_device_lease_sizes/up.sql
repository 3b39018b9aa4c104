-- A kiosk's own lease sizes (`device lease`): when set, they replace its
-- clients' sizes and the server's defaults for every client it serves.
-- Set together: a target without a low-water mark is refused by the CHECK.
ALTER TABLE devices
    ADD COLUMN lease_target BIGINT NULL CHECK (lease_target >= 0),
    ADD COLUMN lease_low_water BIGINT NULL CHECK (lease_low_water >= 0),
    ADD CONSTRAINT devices_lease_sizes CHECK (
        (lease_target IS NULL) = (lease_low_water IS NULL)
        AND (lease_low_water IS NULL OR lease_low_water <= lease_target)
    );
