-- The outbox: one row per object made and destination, created with the result (SQLite).

CREATE TABLE deliveries (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    output_id         BIGINT NOT NULL REFERENCES outputs (id),
    -- destinations[].name in the configuration
    destination       TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts          BIGINT NOT NULL DEFAULT 0,
    -- a pending delivery is not tried before this time (backoff after a transient failure)
    next_attempt_at   BIGINT NOT NULL,
    last_error        TEXT,
    claimed_by        TEXT,
    lease_expires_at  BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    delivered_at      BIGINT,
    UNIQUE (output_id, destination)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
