DROP TRIGGER device_clients_changed ON device_clients;
DROP FUNCTION propass_assignment_changed();
DROP TRIGGER clients_changed ON clients;
DROP TRIGGER quotas_changed ON quotas;
DROP FUNCTION propass_row_changed();
ALTER TABLE devices DROP COLUMN clients_changed_xid;
ALTER TABLE clients DROP COLUMN changed_xid;
ALTER TABLE quotas DROP COLUMN changed_xid;
