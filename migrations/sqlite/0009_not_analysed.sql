-- "Not analysed" reports (sqlite): an image the selection rules chose that the node could not
-- analyse (an input check, a failure, quarantine) is reported as such, never left silent.
--
-- notices: the report of one instance version, with its reason. outputs: an object is made of a
-- result or of a notice (the SR that says "not evaluated"), so result_id becomes optional.
-- messages: priority NULL is the study's "not analysed" message, one per study and destination
-- at most (the index below), made only while the study has no result.

CREATE TABLE notices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   BIGINT NOT NULL UNIQUE REFERENCES instances (id),
    job_id        BIGINT NOT NULL REFERENCES jobs (id),
    reason        TEXT NOT NULL,
    node          TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

-- SQLite cannot drop a NOT NULL: the tables are made again, the rows copied, the references
-- to them checked at the commit (deferred) rather than at the drop.
PRAGMA defer_foreign_keys = ON;

CREATE TABLE outputs_new (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id         BIGINT REFERENCES results (id),
    notice_id         BIGINT REFERENCES notices (id),
    kind              TEXT NOT NULL CHECK (kind IN ('seg', 'sr', 'overlay')),
    sop_class_uid     TEXT NOT NULL,
    sop_instance_uid  TEXT NOT NULL UNIQUE,
    -- relative to <data_dir>/outputs
    path              TEXT NOT NULL,
    size_bytes        BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    node              TEXT,
    CHECK ((result_id IS NULL) <> (notice_id IS NULL))
);
INSERT INTO outputs_new (id, result_id, kind, sop_class_uid, sop_instance_uid, path, size_bytes, created_at, node)
    SELECT id, result_id, kind, sop_class_uid, sop_instance_uid, path, size_bytes, created_at, node FROM outputs;
DROP TABLE outputs;
ALTER TABLE outputs_new RENAME TO outputs;
CREATE INDEX outputs_result ON outputs (result_id);
CREATE INDEX outputs_notice ON outputs (notice_id);

CREATE TABLE messages_new (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id          BIGINT NOT NULL REFERENCES studies (id),
    destination       TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('hl7', 'fhir', 'webhook')),
    -- NULL: the study's "not analysed" message
    priority          TEXT CHECK (priority IN ('urgent', 'review', 'routine')),
    control_id        TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL,
    last_error        TEXT,
    claimed_by        TEXT,
    lease_expires_at  BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    delivered_at      BIGINT,
    UNIQUE (study_id, destination, priority)
);
INSERT INTO messages_new (id, study_id, destination, kind, priority, control_id, state, attempts, next_attempt_at, last_error, claimed_by, lease_expires_at, created_at, updated_at, delivered_at)
    SELECT id, study_id, destination, kind, priority, control_id, state, attempts, next_attempt_at, last_error, claimed_by, lease_expires_at, created_at, updated_at, delivered_at FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX messages_due ON messages (state, next_attempt_at);
CREATE UNIQUE INDEX messages_not_analysed ON messages (study_id, destination) WHERE priority IS NULL;
