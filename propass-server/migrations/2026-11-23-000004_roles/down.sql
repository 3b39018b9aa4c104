ALTER TABLE users DROP COLUMN token_epoch;
ALTER TABLE users DROP COLUMN disabled;
UPDATE users SET role = 'operator' WHERE role = 'kiosk';
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'operator'));
