DROP TABLE audit_log;
DROP TABLE copy_voids;
