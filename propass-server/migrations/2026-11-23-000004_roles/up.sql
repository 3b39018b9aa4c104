-- Roles and standing: kiosk accounts may only do what a kiosk does; a
-- disabled user, or one whose password changed, loses every token at once
-- (tokens carry the epoch they were issued under).
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'operator', 'kiosk'));
ALTER TABLE users ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN token_epoch BIGINT NOT NULL DEFAULT 0;
