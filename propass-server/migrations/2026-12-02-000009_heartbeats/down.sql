DROP INDEX copies_device_overdraft;
DROP TABLE device_heartbeats;
