-- A counter bumped by every change of a quota row: kiosks ignore older updates that arrive late.
ALTER TABLE quotas ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
