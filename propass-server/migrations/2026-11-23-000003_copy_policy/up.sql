-- Copy policy (whole-badge copies).
-- Whether a client accepts a copy that leaves out sectors the kiosk cannot
-- read; off unless an operator allows it, so existing clients keep getting
-- only complete copies.
ALTER TABLE clients ADD COLUMN partial_copy BOOLEAN NOT NULL DEFAULT FALSE;

-- Which sectors a whole-badge copy carries: one character per sector, A or B
-- for the key that opened it, '-' for a sector left out; 16 (1K) or 40 (4K).
-- Never keys or data. NULL for UID-only operations and the seed client.
ALTER TABLE copies ADD COLUMN sectors TEXT NULL
    CONSTRAINT copies_sectors_map CHECK (sectors ~ '^[AB-]{16}$|^[AB-]{40}$');
