-- Operators' corrections to the ledger. A copy row is never changed: voiding
-- an unverified copy (the card did not work) adds a row here and gives its
-- unit back, in one transaction, with an audit entry.
CREATE TABLE copy_voids (
    copy_id   BIGINT PRIMARY KEY REFERENCES copies (id),
    voided_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor     TEXT NOT NULL,
    reason    TEXT NOT NULL CHECK (length(btrim(reason)) > 0)
);

-- Every change an operator or admin makes, append-only: who, when, what,
-- on what, and the details (a reason among them).
CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);
