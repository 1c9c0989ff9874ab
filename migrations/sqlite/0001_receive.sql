-- Received instances, their studies, the analysis queue and the audit trail (SQLite).
-- Times are milliseconds since the Unix epoch (UTC), the same in both backends.

CREATE TABLE studies (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid  TEXT NOT NULL UNIQUE,
    patient_id          TEXT,
    patient_name        TEXT,
    accession_number    TEXT,
    study_date          TEXT,
    study_description   TEXT,
    -- highest priority of its analysed images; set by results
    priority            TEXT,
    instance_count      BIGINT NOT NULL DEFAULT 0,
    first_received_at   BIGINT NOT NULL,
    last_received_at    BIGINT NOT NULL
);

CREATE TABLE instances (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid     TEXT NOT NULL,
    -- 1 for the first bytes received under this UID; a different data set under the same UID is version 2, ...
    version              BIGINT NOT NULL,
    study_id             BIGINT NOT NULL REFERENCES studies (id),
    series_instance_uid  TEXT,
    sop_class_uid        TEXT NOT NULL,
    transfer_syntax_uid  TEXT NOT NULL,
    modality             TEXT,
    body_part            TEXT,
    view_position        TEXT,
    calling_ae           TEXT NOT NULL,
    peer_address         TEXT NOT NULL,
    -- relative to the spool directory
    path                 TEXT NOT NULL UNIQUE,
    size_bytes           BIGINT NOT NULL,
    received_at          BIGINT NOT NULL,
    UNIQUE (sop_instance_uid, version)
);
CREATE INDEX instances_study ON instances (study_id);

CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id       BIGINT NOT NULL UNIQUE REFERENCES instances (id),
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'skipped', 'failed')),
    attempts          BIGINT NOT NULL DEFAULT 0,
    reason            TEXT,
    claimed_by        TEXT,
    lease_expires_at  BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state, id);

CREATE TABLE events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    at                BIGINT NOT NULL,
    node              TEXT NOT NULL,
    kind              TEXT NOT NULL,
    peer_ae           TEXT,
    peer_address      TEXT,
    sop_instance_uid  TEXT,
    detail            TEXT
);
CREATE INDEX events_at ON events (at);
