-- A copy the kiosk wrote but could not verify (card lifted, reader failure,
-- crash mid-write): it may work, so it is charged like any copy, and it is
-- flagged here for an operator. Existing rows were all verified.
ALTER TABLE copies ADD COLUMN unverified BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX copies_unverified ON copies (occurred_at) WHERE unverified;
