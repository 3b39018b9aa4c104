-- Which transaction last changed what a kiosk's pull answers, so that a pull
-- with `since_version` lists only what changed. A pull's version is its
-- snapshot's xmin: every transaction below it had ended when the pull read,
-- so a row it did not list then carries an id at or above it if it changed
-- since (see db::clients::served_changed).
ALTER TABLE quotas ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE clients ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE devices ADD COLUMN clients_changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE FUNCTION propass_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END $$;
CREATE TRIGGER quotas_changed BEFORE UPDATE ON quotas
    FOR EACH ROW EXECUTE FUNCTION propass_row_changed();
CREATE TRIGGER clients_changed BEFORE UPDATE ON clients
    FOR EACH ROW EXECUTE FUNCTION propass_row_changed();

-- An assignment added or removed: that kiosk's next pull is a full one.
CREATE FUNCTION propass_assignment_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE devices SET clients_changed_xid = pg_current_xact_id() WHERE device_id = OLD.device_id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        UPDATE devices SET clients_changed_xid = pg_current_xact_id() WHERE device_id = NEW.device_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER device_clients_changed AFTER INSERT OR UPDATE OR DELETE ON device_clients
    FOR EACH ROW EXECUTE FUNCTION propass_assignment_changed();
